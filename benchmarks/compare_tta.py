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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ferkit.errors import FerkitError  # noqa: E402
from ferkit.evaluate import compare_models, format_comparison  # noqa: E402
from ferkit.tta import normalize_tta  # noqa: E402


def compare(model: str, data: str, split: str, modes: list[str], *, ferplus: str | None = None,
            protocol: str | None = None, limit: int | None = None) -> list[dict]:
    """One row per mode; rows after the first carry the paired comparison with the first
    (:func:`ferkit.evaluate.compare_models`, which ``ferkit compare`` runs too)."""
    kwargs = {}
    if ferplus:
        kwargs["ferplus"] = ferplus
    if protocol:
        kwargs["ferplus_protocol"] = protocol
    return compare_models([(model, mode) for mode in modes], data, split=split, limit=limit, **kwargs)


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
    print(format_comparison(rows, f"{args.model} on {args.split}" + (
        f" (FER+ labels, {args.ferplus_protocol or 'plurality'})" if args.ferplus else "")))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "split": args.split, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
