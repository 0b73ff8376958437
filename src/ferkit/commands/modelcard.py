"""``ferkit model-card MODEL.onnx --data CSV --out DIR``: measure an exported model and write its card."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model-card", help="evaluate an exported model on every FER2013 split and write its model card",
                       description="Evaluate an exported .onnx on Training, PublicTest and PrivateTest and write "
                                   "MODEL_CARD.md, metrics.json and the PrivateTest confusion matrix.")
    p.add_argument("model", help="an .onnx exported by `ferkit export` (or a bundled model name)")
    p.add_argument("--data", required=True, help="fer2013.csv or fer2013.csv.gz")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--name", help="model name shown in the card")
    p.add_argument("--train-command", help="the command that trained the model (recorded in the card)")
    p.add_argument("--export-command", help="the command that exported it")
    p.add_argument("--notes", help="hardware of the training run and other notes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..modelcard import write_model_card
    from ..runtime import resolve_model_path

    card = write_model_card(str(resolve_model_path(args.model)), args.data, args.out, name=args.name,
                            train_command=args.train_command, export_command=args.export_command, notes=args.notes)
    print(card)
    return 0
