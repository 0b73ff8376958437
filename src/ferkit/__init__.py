"""ferkit: facial expression recognition toolkit.

Inference (``analyze``, ``EmotionClassifier``) runs on numpy, OpenCV and onnxruntime; it never imports
torch. Training lives in ``ferkit.train`` and needs the ``train`` extra.
"""
from .errors import FerkitError
from .labels import EMOTIONS, FERPLUS_EMOTIONS, LABEL_SETS
from .preprocess import PreprocessSpec, prepare_faces

__version__ = "0.1.0"

# imported on first use (see __getattr__), so `import ferkit` stays light: name -> the submodule that defines it
_LAZY = {"EmotionClassifier": "runtime", "FaceResult": "pipeline", "analyze": "pipeline"}

__all__ = [
    *_LAZY,
    "EMOTIONS",
    "FERPLUS_EMOTIONS",
    "LABEL_SETS",
    "FerkitError",
    "PreprocessSpec",
    "prepare_faces",
    "__version__",
]


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ferkit' has no attribute {name!r}")


def __dir__():  # help(), tab completion and dir() list the lazy names too
    return sorted(set(globals()) | set(_LAZY))
