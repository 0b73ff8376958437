"""ferkit's web application and REST API (``ferkit serve``).

    from ferkit.server import create_app, ServerSettings
    app = create_app(ServerSettings(data_dir="ferkit-data"))

Needs the ``serve`` extra: ``pip install 'ferkit[serve]'`` (FastAPI, uvicorn, python-multipart, httpx, Pillow).
Never imports torch.
"""
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name):  # lazy: importing the settings (CLI) must not import FastAPI
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'ferkit.server' has no attribute {name!r}")
