"""``ferkit evaluate RUN_OR_ONNX --data CSV --split PrivateTest [--json] [--tta [MODE]] [--out DIR]``."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy, macro-F1, per-class table and confusion matrix of a run, checkpoint or .onnx",
        description="Evaluate a training run / checkpoint (torch) or an exported .onnx (onnxruntime) on one split. "
                    "The label set (and, by default, the split method) comes from the model.",
    )
    p.add_argument("model", help="run directory, checkpoint .pt, exported .onnx, or a bundled model name (default)")
    p.add_argument("--data", required=True,
                   help="FER2013 CSV (plain or .gz), a ferkit data pack, or a folder of labelled face images "
                        "(<root>/<class>/*, or <root>/train|val|test/<class>/*)")
    p.add_argument("--split", default=None,
                   help="Training, PublicTest (validation), PrivateTest (final test; the default), or all: every "
                        "image (the default for a <root>/<class>/ folder the model was not trained on; refused for "
                        "the model's own training data)")
    p.add_argument("--split-method", choices=("usage", "random"), default=None,
                   help="how to split the CSV (default: what the model was trained with, else the Usage column)")
    p.add_argument("--seed", type=int, default=None, help="seed of a random split (default: the model's)")
    tta = p.add_mutually_exclusive_group()
    tta.add_argument("--tta", nargs="?", const="tencrop", default=None, choices=("none", "flip", "tencrop"),
                     help="test-time augmentation (bare --tta = tencrop; default: the model's own setting)")
    tta.add_argument("--no-tta", dest="tta", action="store_const", const="none", help="no test-time augmentation")
    p.add_argument("--ferplus", default=None,
                   help="FER+ fer2013new.csv: the labels of a FER+ (ferplus8) model (default: the path recorded at "
                        "training); given to a FER2013 model, it scores it against the FER+ majority vote instead "
                        "of FER2013's own labels (images without a clear FER+ majority are left out)")
    p.add_argument("--ferplus-protocol", choices=("plurality", "reference"), default=None,
                   help="which images FER+ labels: plurality of the votes, ties dropped (default), or reference: the "
                        "FER+ authors' rule (single votes removed, more than half of the rest for one class)")
    p.add_argument("--clean", default=None,
                   help="comma-separated cleaning rules applied before splitting (default: none, the full split)")
    p.add_argument("--temperature", type=float, default=None,
                   help="scale the probabilities by this temperature (default: the model's own, 1.0 when it has "
                        "none; 1 = the raw softmax). Changes loss and calibration, never the predicted class")
    p.add_argument("--unseen", action="store_true",
                   help="score only the test images that do not also occur, pixel for pixel, in Training (FER2013's "
                        "PrivateTest shares 288 images with Training; the full split is the standard protocol)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each split, counted after label filtering such as --ferplus (quick check)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all usable)")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout and nothing else")
    p.add_argument("--out", default=None, help="also write metrics.json, confusion_matrix.png and class_counts.png here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import sys

    from ..evaluate import evaluate, format_report, save_report

    extra = {}
    if args.ferplus:
        extra["ferplus"] = args.ferplus
    if args.ferplus_protocol:
        extra["ferplus_protocol"] = args.ferplus_protocol
    if args.clean:
        extra["clean"] = [r.strip() for r in args.clean.split(",") if r.strip()]
    # In --json mode stdout carries exactly one JSON object: anything a library prints goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        result = evaluate(
            args.model, args.data, split=args.split, tta=args.tta, batch_size=args.batch_size, threads=args.threads,
            split_method=args.split_method, seed=args.seed, limit=args.limit, progress=sys.stderr.isatty(),
            temperature=args.temperature, unseen=args.unseen, **extra,
        )
        written = save_report(result, args.out) if args.out else []
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print(format_report(result))
        for path in written:
            print(f"wrote {path}")
    return 0
