"""``ferkit models``: list the registered architectures with their size, cost and source recipe;
``ferkit models --bundled``: the trained models shipped in the package (``--model NAME``)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the architectures (--arch NAME) with parameters, MACs and their source recipe",
        description="List every registered architecture: parameters and multiply-accumulates per 48x48 face "
                    "(for its default label set), the default label set, the recipe of the source it comes "
                    "from and the accuracy that source reported. See docs/architectures.md.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON array (all recipe fields included)")
    p.add_argument("--bundled", action="store_true",
                   help="list the trained models shipped in the package instead (names for --model)")
    p.set_defaults(func=run)


def count_macs(model, size: int = 48) -> int:
    """Multiply-accumulates per face of every Conv2d and Linear layer, for one (1, 1, size, size) input.

    Counted with forward hooks, so it follows the real layer shapes (padding, strides, pooling).
    """
    import torch
    from torch import nn

    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, size, size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def recipe_summary(info: dict) -> str:
    """One short line from a model's registered recipe, e.g. 'sgd lr 0.01 nesterov wd 1e-4, batch 64, 300 ep, plateau'."""
    parts = []
    opt = info.get("optimizer")
    if opt:
        s = f"{opt} lr {info['lr']:g}" if info.get("lr") is not None else str(opt)
        if info.get("nesterov"):
            s += " nesterov"
        elif info.get("momentum"):
            s += f" mom {info['momentum']:g}"
        if info.get("weight_decay"):
            s += f" wd {info['weight_decay']:g}"
        parts.append(s)
    if info.get("batch_size"):
        parts.append(f"batch {info['batch_size']}")
    if info.get("epochs"):
        parts.append(f"{info['epochs']} ep")
    if info.get("schedule"):
        parts.append(str(info["schedule"]))
    if info.get("label_smoothing"):
        parts.append(f"ls {info['label_smoothing']:g}")
    if info.get("clean"):
        parts.append("cleaned: " + ", ".join(sorted(info["clean"])))
    if info.get("split") and info["split"] != "usage":
        parts.append(f"{info['split']} split")
    return ", ".join(parts) or "-"


def describe_models() -> list[dict]:
    """Every registered architecture as a dict: name, params, macs, label_set, num_classes, recipe + info."""
    import torch

    from ..labels import get_label_set
    from ..models import count_parameters, create_model, list_models, model_info

    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for name in list_models():
            info = model_info(name)
            label_set = info.get("label_set") or "fer7"
            num_classes = get_label_set(label_set).num_classes
            model = create_model(name, num_classes=num_classes)
            rows.append({
                "name": name,
                "params": count_parameters(model),
                "macs": count_macs(model),
                "label_set": label_set,
                "num_classes": num_classes,
                "recipe": recipe_summary(info),
                **{k: v for k, v in info.items() if k not in ("label_set",)},
            })
    return rows


def describe_bundled() -> list[dict]:
    """Every bundled model (no torch): name, architecture, labels, default TTA, size, training notes."""
    import os

    from ..runtime import EmotionClassifier, bundled_models, resolve_model_path

    rows = []
    for name in bundled_models():
        path = resolve_model_path(name)
        meta = EmotionClassifier(path, threads=1).metadata
        prov = meta.get("provenance") or {}
        if meta.get("arch") == "ensemble":
            members = (meta.get("arch_kwargs") or {}).get("members") or []
            arch = f"ensemble of {len(members)}: " + ", ".join(m.get("arch", "?") for m in members)
            configs = [m.get("config") or {} for m in prov.get("members") or []]
        else:
            arch = str(meta.get("arch"))
            configs = [prov.get("config") or {}]
        notes = []
        if any(c.get("ferplus") for c in configs):
            blend = all(c.get("ferplus_mode") == "blend" for c in configs if c.get("ferplus"))
            notes.append("FER2013 + FER+ votes" if blend else "FER+ votes")
        if any(c.get("teacher") for c in configs):
            notes.append("distilled")
        weights = (prov.get("quantization") or {}).get("mode") or prov.get("weights_dtype") or "float32"
        rows.append({"name": name, "arch": arch, "label_set": meta.get("label_set"), "labels": list(meta.get("labels") or []),
                     "tta": meta.get("tta"), "weights": weights, "temperature": float(meta.get("temperature") or 1.0),
                     "mb": round(os.path.getsize(path) / 1e6, 1),
                     "training": ", ".join(notes) or "FER2013 labels", "path": str(path)})
    return rows


def _table(rows: list[dict], head: list[str] | None = None, body: list[list[str]] | None = None,
           right: tuple[int, ...] = (1, 2)) -> str:
    if head is None:
        head = ["name", "params", "MACs/face", "labels", "source recipe", "reported accuracy"]
        body = [[r["name"], f"{r['params']:,}", f"{r['macs'] / 1e6:.1f}M", r["label_set"], r["recipe"],
                 str(r.get("reported_accuracy") or "-")] for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(x, widths))).rstrip()
             for x in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    if args.bundled:
        rows = describe_bundled()
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(_table(rows, ["name", "architecture", "labels", "default TTA", "weights", "temperature", "MB",
                                "trained on"],
                         [[r["name"], r["arch"], str(r["label_set"]), str(r["tta"]), r["weights"],
                           f"{r['temperature']:g}" if r["temperature"] != 1.0 else "- (raw)", f"{r['mb']:.1f}",
                           r["training"]] for r in rows], right=(5, 6)))
            print("(use one with --model NAME; model cards: docs/models/<name>/MODEL_CARD.md)")
        return 0
    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        print(_table(rows))
        print("(parameters and MACs for the default label set; MACs per 48x48 face; recipes: docs/architectures.md)")
    return 0
