"""The ``ferkit`` command: a thin shell over library functions.

Each command group lives in ``ferkit.commands.<name>`` and exposes ``register(subparsers)``; those modules
import nothing heavy at import time (no torch), so ``ferkit predict`` stays light.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import FerkitError

COMMAND_MODULES = [
    "data",      # ferkit data stats|clean
    "models",    # ferkit models
    "train",     # ferkit train
    "evaluate",  # ferkit evaluate
    "compare",   # ferkit compare
    "export",    # ferkit export
    "modelcard", # ferkit model-card
    "predict",   # ferkit predict
    "live",      # ferkit live
    "serve",     # ferkit serve
    "anonymize", # ferkit anonymize
    "privacy",   # ferkit privacy-report
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferkit", description="Facial expression recognition toolkit.")
    parser.add_argument("--version", action="version", version=f"ferkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"ferkit.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ferkit.commands.{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


#: the optional dependencies and the extra that installs each (pip install 'ferkit[EXTRA]')
EXTRA_OF = {"torch": "train", "onnx": "train", "onnxscript": "train", "matplotlib": "train", "skimage": "train",
            "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
            "httpx": "serve", "PIL": "serve", "fastapi_offline": "serve"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except FerkitError as e:
        print(f"ferkit: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRA_OF:
            raise
        extra = EXTRA_OF[top]
        print(f"ferkit: error: `ferkit {args.command}` needs {top}, which is part of the {extra} extra: "
              f"pip install 'ferkit[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ferkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and friends
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
