"""``ferkit data stats|clean|pack``: class counts, a bar chart, image-quality counts, the cleaning report, and
compact packs of FER2013 for moving the training data to another machine."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LABEL_SETS = ("fer7", "fer6", "fer5", "ferplus8")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="FER2013 CSV (.csv or .csv.gz) or an image-folder root")
    p.add_argument("--ferplus", default=None, help="FER+ fer2013new.csv: take labels from the FER+ votes")
    p.add_argument("--ferplus-mode", default="majority", choices=("majority", "soft"), help="FER+ target kind (default majority)")
    p.add_argument("--ferplus-protocol", default="plurality", choices=("plurality", "reference"),
                   help="which images FER+ labels: plurality of the votes (default) or the FER+ authors' rule")
    p.add_argument("--label-set", default=None, choices=LABEL_SETS,
                   help="label set (default fer7, or ferplus8 when --ferplus is given)")
    p.add_argument("--split", default="usage", choices=("usage", "random"),
                   help="usage: the Usage column / split folders; random: stratified 80/10/10 with --seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed rows / unreadable images")


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="inspect and clean training data (class counts, quality, duplicates)")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    s = sub.add_parser("stats", help="class counts per split (table, JSON, bar chart PNG) and image-quality counts")
    _add_data_args(s)
    s.add_argument("--clean", nargs="+", default=None, metavar="RULE",
                   help="count classes after cleaning with these rules (blank histogram duplicates; RULE:all cleans val/test too)")
    s.add_argument("--out", default=".", help="folder for class_counts.png (default: current folder)")
    s.add_argument("--no-plot", action="store_true", help="do not write the bar chart")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    s.set_defaults(func=stats_command)

    c = sub.add_parser("clean", help="apply cleaning rules and report what they remove")
    _add_data_args(c)
    c.add_argument("--rules", nargs="+", default=["blank", "histogram", "duplicates"], metavar="RULE",
                   help="blank, histogram, duplicates (default: all three); RULE:all cleans val/test too")
    c.add_argument("--json", action="store_true", help="print the full report (with row ids) as JSON")
    c.set_defaults(func=clean_command)

    k = sub.add_parser("pack", help="write FER2013 (+ FER+ votes) as a compact, checked .npz for another machine",
                       description="Pack the chosen Usage splits of a FER2013 CSV (and FER+'s fer2013new.csv) into an "
                                   "LZMA-compressed .npz that keeps the CSV's sha256; --data and --ferplus of every "
                                   "command take the pack in place of the CSVs.")
    k.add_argument("--data", required=True, help="FER2013 CSV (.csv or .csv.gz)")
    k.add_argument("--ferplus", default=None, help="FER+ fer2013new.csv to carry along (checked against the CSV)")
    k.add_argument("--splits", nargs="+", default=None, metavar="SPLIT", choices=("Training", "PublicTest", "PrivateTest"),
                   help="Usage splits to pack (default: all three; Training PublicTest is what training needs)")
    k.add_argument("--max-mb", type=float, default=None, metavar="MB",
                   help="cut the pack into parts of at most about MB megabytes (OUT, OUT-stem.part2.npz, ...)")
    k.add_argument("--skip-bad", action="store_true", help="skip (and record) malformed CSV rows")
    k.add_argument("--overwrite", action="store_true", help="replace existing pack files")
    k.add_argument("--out", required=True, help="pack file to write, ending in .npz")
    k.set_defaults(func=pack_command)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _label_set(args) -> str:
    return args.label_set or ("ferplus8" if args.ferplus else "fer7")


def _prepare(args, clean=None):
    from ..data.splits import prepare_splits

    return prepare_splits(args.data, label_set=_label_set(args), split=args.split, seed=args.seed,
                          skip_bad=args.skip_bad, ferplus=args.ferplus, ferplus_mode=args.ferplus_mode,
                          ferplus_protocol=args.ferplus_protocol, clean=clean)


def _split_titles(splits) -> list[str]:
    if splits.info.get("data_kind") == "fer2013-csv" and splits.info.get("split") == "usage":
        return ["Training", "PublicTest", "PrivateTest"]
    return ["train", "val", "test"]


def _counts_table(counts: dict[str, dict[str, int]], labels, titles) -> str:
    roles = ("train", "val", "test")
    w = max(8, max(len(n) for n in labels))
    head = f"{'class':<{w}}" + "".join(f"{t:>13}" for t in titles) + f"{'total':>9}{'%':>7}"
    lines = [head, "-" * len(head)]
    grand = sum(sum(counts[r].values()) for r in roles)
    for name in labels:
        row = [counts[r][name] for r in roles]
        lines.append(f"{name:<{w}}" + "".join(f"{v:>13,}" for v in row) + f"{sum(row):>9,}" +
                     f"{100.0 * sum(row) / max(grand, 1):>7.1f}")
    tot = [sum(counts[r].values()) for r in roles]
    lines.append("-" * len(head))
    lines.append(f"{'total':<{w}}" + "".join(f"{v:>13,}" for v in tot) + f"{grand:>9,}{100.0 if grand else 0.0:>7.1f}")
    return "\n".join(lines)


def _quality_table(q: dict, titles) -> str:
    roles = ("train", "val", "test")
    p = q["params"]
    lines = [f"{'image quality (before cleaning)':<40}" + "".join(f"{t:>13}" for t in titles)]
    lines.append(f"{'blank (pixel std < ' + str(p['blank_std']) + ')':<40}" + "".join(f"{q['blank'][r]['total']:>13,}" for r in roles))
    lines.append(f"{'histogram rule (a bin > ' + str(p['histogram_max_bin']) + ' px)':<40}" +
                 "".join(f"{q['histogram'][r]['total']:>13,}" for r in roles))
    d = q["duplicates"]
    lines.append(f"{'duplicates within split (extra copies)':<40}" + "".join(f"{d['within'][r]:>13,}" for r in roles))
    across = ", ".join(f"{titles[roles.index(a)]}-{titles[roles.index(b)]} {n:,}"
                       for (a, b), n in ((k.split("-"), v) for k, v in d["across"].items()))
    lines.append(f"duplicates across splits (images of the 2nd split also in the 1st): {across}")
    lines.append(f"distinct images {d['distinct']:,} of {d['images']:,}; {d['groups_with_copies']:,} distinct images occur more than once "
                 f"({d['images_in_groups']:,} copies in all), {d.get('label_conflicts', 0):,} of them with conflicting labels")
    return "\n".join(lines)


def _plot(counts, labels, titles, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    roles = ("train", "val", "test")
    x = np.arange(len(labels))
    width = 0.8 / len(roles)
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(labels) + 2), 4.5), dpi=110)
    for k, (role, t) in enumerate(zip(roles, titles)):
        vals = [counts[role][n] for n in labels]
        bars = ax.bar(x + (k - 1) * width, vals, width, label=f"{t} ({sum(vals):,})")
        ax.bar_label(bars, labels=[f"{v:,}" for v in vals], fontsize=6, padding=1)
    ax.set_xticks(x, labels)
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def stats_command(args) -> int:
    import numpy as np

    from ..data.clean import quality_counts
    from ..errors import FerkitError

    splits = _prepare(args)
    titles = _split_titles(splits)
    roles = ("train", "val", "test")
    subsets = [splits.get(r) for r in roles]
    quality = quality_counts(
        np.concatenate([s.images for s in subsets]), np.concatenate([s.labels for s in subsets]),
        np.concatenate([np.full(len(s), k, np.int8) for k, s in enumerate(subsets)]), class_names=splits.labels,
    )
    counts = splits.class_counts()
    result = {"data": str(args.data), "label_set": splits.label_set, "labels": list(splits.labels), "splits": titles,
              "class_counts": counts, "sizes": splits.info["sizes"], "quality": quality, "info": splits.info}
    cleaned = None
    if args.clean:
        cleaned = _prepare(args, clean=args.clean)
        result["class_counts_after_cleaning"] = cleaned.class_counts()
        result["cleaning"] = cleaned.info["cleaning"]
    if not args.no_plot:
        path = Path(args.out) / "class_counts.png"
        final = cleaned if cleaned is not None else splits
        try:
            _plot(final.class_counts(), list(final.labels), titles, path,
                  f"{Path(args.data).name}: images per class and split ({final.label_set}"
                  f"{', cleaned: ' + ' '.join(args.clean) if cleaned is not None else ''})")
        except OSError as e:
            raise FerkitError(f"cannot write {path}: {e}") from None
        result["chart"] = str(path)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    info = splits.info
    print(f"data: {args.data} ({info.get('data_kind')}, split {info.get('split_used')}, label set {splits.label_set})")
    if info.get("skipped_rows"):
        print(f"skipped {info['skipped_rows']} bad rows/images: " + "; ".join(info["skipped"][:3]))
    if "ferplus" in info:
        print("FER+ labels: " + ", ".join(f"{k} {v:,}" for k, v in info["ferplus"]["reasons"].items()))
    print()
    print(_counts_table(counts, splits.labels, titles))
    if cleaned is not None:
        print(f"\nafter cleaning ({' '.join(args.clean)}):")
        print(_counts_table(cleaned.class_counts(), cleaned.labels, titles))
    print()
    print(_quality_table(quality, titles))
    if "chart" in result:
        print(f"\nbar chart: {result['chart']}")
    return 0


def clean_command(args) -> int:
    from ..data.clean import parse_rules

    parse_rules(args.rules)  # a bad rule name fails before the data is read
    splits = _prepare(args, clean=args.rules)
    report = splits.info["cleaning"]
    if args.json:
        print(json.dumps({"data": str(args.data), "label_set": splits.label_set, **report}, indent=1))
        return 0
    titles = _split_titles(splits)
    roles = ("train", "val", "test")
    print(f"data: {args.data} ({splits.info.get('data_kind')}, label set {splits.label_set})")
    head = f"{'rule':<22}{'':<9}" + "".join(f"{t:>13}" for t in titles)
    print(head)
    print("-" * len(head))
    for rule, e in report["by_rule"].items():
        name = rule + (":all" if e["scope"] == "all" else "")
        print(f"{name:<22}{'flagged':<9}" + "".join(f"{e['flagged'][r]['total']:>13,}" for r in roles))
        print(f"{'':<22}{'removed':<9}" + "".join(f"{e['removed'][r]['total']:>13,}" for r in roles))
        if rule == "duplicates":
            d = e["summary"]
            across = ", ".join(f"{titles[roles.index(a)]}-{titles[roles.index(b)]} {n:,}"
                               for (a, b), n in ((k.split("-"), v) for k, v in d["across"].items()))
            print(f"{'':<22}cross-split copies: {across}; within splits: " +
                  ", ".join(f"{titles[k]} {d['within'][r]:,}" for k, r in enumerate(roles)))
    print("-" * len(head))
    print(f"{'size before':<31}" + "".join(f"{report['sizes_before'][r]:>13,}" for r in roles))
    print(f"{'size after':<31}" + "".join(f"{report['sizes_after'][r]:>13,}" for r in roles))
    print("\n(--json lists the removed row ids per rule and split)", file=sys.stderr)
    return 0


def pack_command(args) -> int:
    from ..data.fer2013 import USAGES
    from ..data.pack import write_pack

    rep = write_pack(args.data, args.out, ferplus=args.ferplus, splits=args.splits or USAGES, max_mb=args.max_mb,
                     skip_bad=args.skip_bad, overwrite=args.overwrite)
    print(f"packed {rep['images']:,} images of {rep['source']} (sha256 {rep['source_sha256'][:16]}...): "
          + ", ".join(f"{u} {n:,}" for u, n in rep["counts"].items())
          + (f"; FER+ votes (sha256 {rep['ferplus_sha256'][:16]}...)" if rep["ferplus_sha256"] else ""))
    print(f"{rep['raw_bytes'] / 1e6:.1f} MB of pixels -> {rep['packed_bytes'] / 1e6:.1f} MB "
          f"({rep['packed_bytes'] / rep['raw_bytes']:.2f} of the raw size) in {len(rep['files'])} file(s):")
    folder = Path(rep["out"]).parent
    for name, size in rep["files"]:
        print(f"  {folder / name}  {size / 1e6:.1f} MB")
    if len(rep["files"]) > 1:
        print("keep the parts side by side; pass the first one as --data (and --ferplus)")
    return 0
