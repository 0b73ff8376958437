"""Compare test-time augmentation modes of one model on one split, image by image.

    python benchmarks/compare_tta.py ferplus --data ../shared/data/fer2013/fer2013.csv.gz \
        --split PublicTest --modes flip,tencrop [--ferplus fer2013new.csv] [--ferplus-protocol reference] [--json FILE]

For each mode: accuracy, macro-F1 and the evaluation's faces/s; against the first mode: the difference in
accuracy, how many images only one of the two gets right, and the paired standard error of the difference,
``sqrt(discordant) / n``, the one ferkit's selection rules use
(``ferkit.metrics.paired_comparison``). Choices belong on PublicTest; score PrivateTest only after deciding.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

from ferkit.errors import FerkitError  # noqa: E402
from ferkit.evaluate import evaluate  # noqa: E402
from ferkit.metrics import paired_comparison  # noqa: E402
from ferkit.tta import normalize_tta  # noqa: E402


def compare(model: str, data: str, split: str, modes: list[str], *, ferplus: str | None = None,
            protocol: str | None = None, limit: int | None = None) -> list[dict]:
    """One row per mode; rows after the first carry the paired comparison with the first."""
    kwargs = {}
    if ferplus:
        kwargs["ferplus"] = ferplus
    if protocol:
        kwargs["ferplus_protocol"] = protocol
    rows, first = [], None
    for mode in modes:
        r = evaluate(model, data, split=split, tta=mode, limit=limit, return_probs=True, **kwargs)
        pred = r["probs"].argmax(axis=1)
        row = {"tta": r["tta"], "n": r["n"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
               "faces_per_s": r["faces_per_s"]}
        if first is None:
            first = (r["y_true"], pred)
        else:
            if not np.array_equal(first[0], r["y_true"]):
                raise FerkitError("the modes were scored on different images; cannot pair them")
            row["vs_first"] = paired_comparison(first[0], first[1], pred)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="bundled model name, .onnx file or run directory")
    ap.add_argument("--data", required=True, help="fer2013.csv(.gz)")
    ap.add_argument("--split", default="PublicTest", help="PublicTest (default) or PrivateTest, after a decision")
    ap.add_argument("--modes", default="flip,tencrop", help="comma-separated TTA modes; the first is the reference")
    ap.add_argument("--ferplus", help="FER+ fer2013new.csv (as `ferkit evaluate --ferplus`)")
    ap.add_argument("--ferplus-protocol", choices=("plurality", "reference"))
    ap.add_argument("--limit", type=int, help="first N images of the split (quick checks)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    try:
        modes = [normalize_tta(m.strip()) for m in args.modes.split(",") if m.strip()]
        if len(modes) < 2 or len(set(modes)) != len(modes):
            raise FerkitError(f"--modes needs two or more different modes, got {args.modes!r}")
        if args.ferplus_protocol and not args.ferplus:
            raise FerkitError("--ferplus-protocol needs --ferplus")
        rows = compare(args.model, args.data, args.split, modes, ferplus=args.ferplus,
                       protocol=args.ferplus_protocol, limit=args.limit)
    except FerkitError as e:
        print(f"compare_tta: error: {e}", file=sys.stderr)
        return 2
    table = []
    for r in rows:
        c = r.get("vs_first")
        table.append([r["tta"], r["n"], f"{100 * r['accuracy']:.2f}%", f"{100 * r['macro_f1']:.2f}%",
                      f"{r['faces_per_s']:.0f}",
                      "-" if c is None else f"{100 * c['difference']:+.2f}",
                      "-" if c is None else f"{c['a_only']} / {c['b_only']}",
                      "-" if c is None else f"{100 * c['paired_se']:.2f}",
                      "-" if c is None or c["paired_se"] == 0 else f"{c['difference'] / c['paired_se']:+.2f}"])
    print_table(f"{args.model} on {args.split}" + (f" (FER+ labels, {args.ferplus_protocol or 'plurality'})"
                                                   if args.ferplus else ""),
                ["tta", "images", "accuracy", "macro-F1", "faces/s",
                 f"vs {rows[0]['tta']} (points)", f"right only with {rows[0]['tta']} / with this",
                 "paired SE (points)", "difference / SE"], table)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "split": args.split, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
