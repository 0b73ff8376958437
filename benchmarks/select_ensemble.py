"""Choose an ensemble of trained runs on PublicTest (greedy forward selection), then report it.

    python benchmarks/select_ensemble.py --data ../shared/data/fer2013/fer2013.csv.gz \
        runs/default_fastres_s runs/fastres_s_e120 runs/fastres_e120 --tta flip [--test] [--json FILE]

Every candidate is evaluated on PublicTest (with the given test-time augmentation) and
:func:`ferkit.ensemble.greedy_select` adds members while the equal-weight mean of probabilities gets more
accurate on PublicTest. Only after that choice, ``--test`` evaluates the chosen ensemble (and, for
reference, each candidate) on PrivateTest; PrivateTest plays no part in the choice. The script ends with
the ``ferkit export`` command that writes the chosen ensemble as one ``.onnx``.

Candidates are run directories or exported ``.onnx`` files (no checkpoint needed: ``ferkit export`` combines
``.onnx`` members too, ``--half`` stores them in float16). To choose among the networks of an existing
ensemble, split it first: ``ferkit export accurate --split members/``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

from ferkit.ensemble import greedy_select  # noqa: E402
from ferkit.errors import FerkitError  # noqa: E402
from ferkit.evaluate import evaluate  # noqa: E402
from ferkit.metrics import accuracy  # noqa: E402


def _probs(run: str, data: str, split: str, tta: str, limit: int | None,
           ferplus: str | None = None, protocol: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    r = evaluate(run, data, split=split, tta=tta, limit=limit, return_probs=True, ferplus=ferplus,
                 ferplus_protocol=protocol)
    return r["probs"], r["y_true"]


def export_hint(chosen: list[str], tta: str) -> str:
    """The line that says how to get the chosen ensemble as one file (``export: ferkit export ...``)."""
    if len(chosen) == 1 and chosen[0].endswith(".onnx"):
        return f"export: nothing to combine; the choice is one exported network, use {chosen[0]} as it is"
    tta_opt = f" --tta {tta}" if tta != "none" else ""
    half = " --half" if all(c.endswith(".onnx") for c in chosen) else ""
    return f"export: ferkit export {' '.join(shlex.quote(c) for c in chosen)} --out ensemble.onnx{tta_opt}{half}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="candidate run directories, checkpoints or exported .onnx files (same data and split)")
    ap.add_argument("--data", required=True, help="fer2013.csv(.gz)")
    ap.add_argument("--ferplus", help="FER+ labels (fer2013new.csv): the votes of 8-class FER+ models (default: the path "
                    "each recorded at training time); 7-class models are then scored against the FER+ majority "
                    "instead of FER2013's labels, as `ferkit evaluate --ferplus` does")
    ap.add_argument("--ferplus-protocol", choices=("plurality", "reference"), default=None,
                    help="which images FER+ labels (as `ferkit evaluate --ferplus-protocol`; needs --ferplus)")
    ap.add_argument("--tta", choices=("none", "flip", "tencrop"), default="none", help="test-time augmentation")
    ap.add_argument("--max-members", type=int, default=None, help="stop at this many members")
    ap.add_argument("--test", action="store_true", help="after choosing, report PrivateTest accuracy")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each split (quick checks)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if len(set(args.runs)) != len(args.runs):
        raise SystemExit("select_ensemble: a run is listed twice")
    t0 = time.perf_counter()
    try:
        val, y_val = {}, None
        for run in args.runs:
            val[run], y = _probs(run, args.data, "PublicTest", args.tta, args.limit, args.ferplus,
                                 args.ferplus_protocol)
            if y_val is not None and not np.array_equal(y, y_val):
                raise FerkitError(f"{run} was evaluated on other PublicTest labels than {args.runs[0]}")
            y_val = y
        steps = greedy_select(val, y_val, max_members=args.max_members)
    except FerkitError as e:
        raise SystemExit(f"select_ensemble: {e}") from None
    singles = {run: accuracy(y_val, p.argmax(1)) for run, p in val.items()}
    print_table(f"Candidates on PublicTest (tta {args.tta}, {len(y_val)} images)", ["run", "PublicTest"],
                [[run, f"{100 * a:.2f}%"] for run, a in singles.items()])
    print_table("Greedy forward selection on PublicTest", ["step", "added", "members", "PublicTest"],
                [[i + 1, s["added"], len(s["members"]), f"{100 * s['accuracy']:.2f}%"] for i, s in enumerate(steps)])
    chosen = steps[-1]["members"]
    out = {"tta": args.tta, "candidates_publictest": singles, "steps": steps, "chosen": chosen}
    if args.test:
        test, y_test = {}, None
        for run in args.runs:
            test[run], y_test = _probs(run, args.data, "PrivateTest", args.tta, args.limit, args.ferplus,
                                       args.ferplus_protocol)
        mean = sum(test[r] for r in chosen) / len(chosen)
        test_acc = {run: accuracy(y_test, p.argmax(1)) for run, p in test.items()}
        ens_acc = accuracy(y_test, mean.argmax(1))
        rows = [[run, f"{100 * a:.2f}%"] for run, a in test_acc.items()]
        rows.append([f"chosen ensemble ({len(chosen)} members)", f"{100 * ens_acc:.2f}%"])
        print_table(f"PrivateTest, after the choice (tta {args.tta}, {len(y_test)} images)", ["model", "PrivateTest"], rows)
        out["privatetest"] = {"candidates": test_acc, "chosen": ens_acc}
    print("\n" + export_hint(chosen, args.tta))
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
