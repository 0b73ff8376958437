"""Compare training runs side by side from their per-epoch metrics (no model is loaded or evaluated).

    python benchmarks/compare_runs.py baseline=docs/models/fer2013 nols=runs/abl_nols runs/abl_noaug \
        [--plot curves.png] [--n-val 3589] [--json FILE]

Each argument is a run directory (or a folder holding a copied ``metrics.csv``), or a ``metrics.csv`` file,
optionally prefixed ``NAME=``. The first run is the reference: the table gives every run's best validation
accuracy (the epoch ``ferkit train`` keeps), its difference from the reference, and that difference in
standard errors of the difference of two accuracies on ``n`` validation images (``sqrt(2 p (1 - p) / n)``,
about 1.1 points for FER2013's 3,589 PublicTest images; two independent runs of the same recipe differ by
about that much). ``n`` comes from each run's ``config.json`` (``data_info.sizes.val``) or from ``--n-val``.
Also: the last epoch's training accuracy (how far the run fits its training data), the gap between training
and validation accuracy at the best epoch, and the wall time (the sum of the epoch times). ``--plot`` draws
the validation curves of all runs in one figure. Validation accuracy is what the runs were selected on, so
it flatters them all alike; test-split figures come from ``ferkit evaluate``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

NEEDED = ("epoch", "train_acc", "val_acc")


class RunError(ValueError):
    """A run that cannot be read: named in the message, so the user knows which argument to fix."""


def _split_arg(arg: str) -> tuple[str, Path]:
    name, sep, path = arg.partition("=")
    if sep and name and path:
        return name, Path(path)
    p = Path(arg)
    return (p.parent.name if p.name == "metrics.csv" else p.name) or arg, p


def load_run(arg: str, n_val: int | None = None) -> dict[str, Any]:
    """Read one run's ``metrics.csv`` (and ``config.json`` when there) into a dict of per-epoch lists."""
    name, path = _split_arg(arg)
    csv_path = path if path.suffix == ".csv" else path / "metrics.csv"
    if not csv_path.is_file():
        raise RunError(f"{arg}: no metrics.csv at {csv_path}")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in NEEDED if c not in (reader.fieldnames or [])]
        if missing:
            raise RunError(f"{csv_path}: not a ferkit metrics.csv (missing column(s) {', '.join(missing)})")
        rows = []
        for i, r in enumerate(reader, start=2):
            try:
                rows.append({k: float(v) for k, v in r.items() if k and v not in (None, "")})
            except ValueError as e:
                raise RunError(f"{csv_path}, line {i}: {e}") from None
    if not rows:
        raise RunError(f"{csv_path}: no epochs recorded")
    cfg_path = csv_path.parent / "config.json"
    if cfg_path.is_file():
        try:
            n_val = json.loads(cfg_path.read_text())["data_info"]["sizes"]["val"]
        except (ValueError, KeyError, TypeError):
            pass  # an older or hand-written config: keep --n-val
    return {"name": name, "path": str(csv_path), "rows": rows, "n_val": n_val}


def summarize(run: dict[str, Any], ref: dict[str, Any] | None = None) -> dict[str, Any]:
    """Best validation epoch and the figures of the table (accuracies in %)."""
    rows = run["rows"]
    best = max(rows, key=lambda r: r["val_acc"])  # the first of equal maxima, as ferkit train keeps it
    out: dict[str, Any] = {
        "run": run["name"],
        "epochs": int(rows[-1]["epoch"]),
        "best_epoch": int(best["epoch"]),
        "best_val_acc": 100 * best["val_acc"],
        "last_val_acc": 100 * rows[-1]["val_acc"],
        "last_train_acc": 100 * rows[-1]["train_acc"],
        "gap_at_best": 100 * (best["train_acc"] - best["val_acc"]),
        "minutes": (sum(r["epoch_time_s"] for r in rows) / 60) if all("epoch_time_s" in r for r in rows) else None,
        "delta": None, "delta_se": None,
    }
    if ref is not None:
        ref_best = max(r["val_acc"] for r in ref["rows"])
        out["delta"] = out["best_val_acc"] - 100 * ref_best
        n = run["n_val"] or ref["n_val"]
        if n:
            p = (ref_best + best["val_acc"]) / 2
            se = 100 * math.sqrt(2 * p * (1 - p) / n)
            out["delta_se"] = out["delta"] / se if se > 0 else None
    return out


def plot(runs: list[dict[str, Any]], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_val, ax_train = fig.subplots(1, 2)
    for run in runs:
        ep = [r["epoch"] for r in run["rows"]]
        ax_val.plot(ep, [100 * r["val_acc"] for r in run["rows"]], "-", lw=1.2, label=run["name"])
        ax_train.plot(ep, [100 * r["train_acc"] for r in run["rows"]], "-", lw=1.2, label=run["name"])
    for ax, what in ((ax_val, "validation accuracy (%)"), (ax_train, "training accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="[NAME=]run directory or metrics.csv; the first is the reference")
    ap.add_argument("--n-val", type=int, default=None,
                    help="validation images, for runs without a config.json (FER2013 PublicTest: 3589)")
    ap.add_argument("--plot", help="write the validation and training curves of all runs to this PNG")
    ap.add_argument("--json", help="also write the table to this JSON file")
    args = ap.parse_args(argv)
    try:
        runs = [load_run(a, args.n_val) for a in args.runs]
    except RunError as e:
        raise SystemExit(f"compare_runs: {e}") from None
    if len({r["name"] for r in runs}) != len(runs):
        raise SystemExit("compare_runs: two runs have the same name; give them names with NAME=PATH")
    table = [summarize(runs[0])] + [summarize(r, runs[0]) for r in runs[1:]]
    cols = [("run", "run"), ("epochs", "epochs"), ("best_epoch", "best epoch"),
            ("best_val_acc", "best val. acc. %"), ("delta", f"vs {runs[0]['name']}"),
            ("delta_se", "in SE"), ("last_val_acc", "last val. acc. %"), ("last_train_acc", "last train acc. %"),
            ("gap_at_best", "train-val gap at best"), ("minutes", "minutes")]
    signed = {"delta", "delta_se"}  # differences print with their sign
    print_table("Runs (best validation epoch; the first run is the reference)", [c[1] for c in cols],
                [[f"{t[k]:+.2f}" if k in signed and t[k] is not None else t[k] for k, _ in cols] for t in table],
                fmt=_fmt)
    if args.plot:
        plot(runs, args.plot)
        print(f"\ncurves: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
