"""``ferkit compare MODEL MODEL [...] --data CSV --split PublicTest``: models side by side, image by image."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="several models on the same split, each against the first: accuracy difference and its paired SE",
        description="Score several models (runs, checkpoints, .onnx files or bundled names) on the same images and "
                    "compare each with the first, image by image: the accuracy difference, how many images only "
                    "one of the two gets right, and the paired standard error of the difference, "
                    "sqrt(discordant) / n. Choose models on PublicTest (the default split); score PrivateTest only "
                    "after deciding.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="two or more; MODEL@TTA sets one model's test-time "
                                                              "augmentation (none, flip, tencrop), e.g. default@flip")
    p.add_argument("--data", required=True, help="FER2013 CSV (plain or .gz), a pack, or a folder of labelled faces")
    p.add_argument("--split", default="PublicTest",
                   help="PublicTest (default: where models are chosen), PrivateTest (after deciding), Training, all")
    p.add_argument("--unseen", action="store_true", help="leave out the test images that also occur in Training")
    p.add_argument("--ferplus", default=None, help="FER+ fer2013new.csv (as for ferkit evaluate)")
    p.add_argument("--ferplus-protocol", choices=("plurality", "reference"), default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each split, counted after label filtering such as --ferplus (quick check)")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON object instead of the table")
    p.set_defaults(func=run)


def parse_entry(text: str) -> tuple[str, str | None]:
    """``MODEL`` or ``MODEL@TTA`` -> (model, tta or None). A path containing '@' keeps it unless the part
    after the last '@' is a TTA mode."""
    from ..tta import normalize_tta

    model, sep, tta = text.rpartition("@")
    if sep and tta in ("none", "flip", "tencrop"):
        return model, normalize_tta(tta)
    return text, None


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import sys

    from ..errors import FerkitError
    from ..evaluate import compare_models, format_comparison

    if len(args.models) < 2:
        raise FerkitError("compare needs two or more models (MODEL or MODEL@TTA)")
    entries = [parse_entry(m) for m in args.models]
    if len(set(entries)) != len(entries):
        raise FerkitError("the same model (and TTA) is given twice")
    extra = {}
    if args.ferplus:
        extra["ferplus"] = args.ferplus
    if args.ferplus_protocol:
        extra["ferplus_protocol"] = args.ferplus_protocol
    with contextlib.redirect_stdout(sys.stderr):
        rows = compare_models(entries, args.data, split=args.split, limit=args.limit, unseen=args.unseen, **extra)
    if args.json:
        sys.stdout.write(json.dumps({"split": rows[0]["split"], "unseen": args.unseen, "rows": rows}) + "\n")
    else:
        print(format_comparison(rows, f"{rows[0]['split']}{' (images not in Training)' if args.unseen else ''}"))
    return 0
