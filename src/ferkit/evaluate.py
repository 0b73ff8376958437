"""Evaluate a model on a labelled split: accuracy, loss, macro-F1, per-class table, confusion matrix.

The same function takes a training run / checkpoint (run with torch) or an exported ``.onnx`` (run with
onnxruntime through :class:`ferkit.runtime.EmotionClassifier`, no torch imported). Both go through the
one inference loop :func:`ferkit.runtime.batched_predict` (``prepare_faces`` -> network -> softmax, TTA
averaged in numpy), so an exported model and its checkpoint report the same numbers, and
``EmotionClassifier(model).predict_proba(faces)`` reproduces the reported accuracy exactly.

The label set comes from the model (checkpoint or ONNX metadata), and by default so does the split
method (the ``Usage`` column, or the stratified random split and seed the model was trained with).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import FerkitError
from .metrics import classification_report
from .preprocess import PreprocessSpec
from .runtime import DEFAULT_BATCH_SIZE, EmotionClassifier, batched_predict, bundled_models, check_temperature
from .tta import normalize_tta


@dataclass
class LoadedModel:
    """A model ready to evaluate: ``forward`` maps preprocessed (N, 1, S, S) float32 to logits (N, C)."""

    forward: Callable[[np.ndarray], np.ndarray]
    labels: tuple[str, ...]
    spec: PreprocessSpec
    label_set: str | None
    default_tta: str
    kind: str          # "torch" or "onnx"
    name: str          # path (or bundled name) for the report
    arch: str | None
    data_info: dict
    temperature: float = 1.0  # applied to the averaged probabilities (an exported model's calibration)
    device: str = "cpu"  # where forward runs: onnxruntime on the CPU; torch on a CUDA GPU when there is one


def is_onnx_ref(model) -> bool:
    """An exported model: an .onnx path, an EmotionClassifier, or a bundled name that is not a local path."""
    if isinstance(model, EmotionClassifier):
        return True
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        if p.suffix == ".onnx":
            return True
        if not p.exists() and str(model) in bundled_models() + ["default"]:
            return True
    return False


def load_model(model, *, threads: int | None = None, temperature: float | None = None) -> LoadedModel:
    """A run dir / checkpoint path / checkpoint dict (torch) or an .onnx path / bundled name /
    EmotionClassifier (onnxruntime) -> :class:`LoadedModel`.

    temperature: None = the model's own (an exported model's ``ferkit_temperature``, or the ``temperature`` of
    an EmotionClassifier passed in; 1.0 for a checkpoint), else this value."""
    if is_onnx_ref(model):
        if isinstance(model, EmotionClassifier):
            clf = model
        else:
            clf = EmotionClassifier(model, threads=threads, temperature=temperature)
        prov = clf.metadata.get("provenance") or {}
        return LoadedModel(
            forward=clf.forward, labels=clf.labels, spec=clf.spec, label_set=clf.label_set,
            default_tta=clf.tta, kind="onnx",  # a passed-in classifier keeps its own TTA choice
            name=str(model) if isinstance(model, (str, os.PathLike)) else str(clf.path),
            arch=clf.metadata.get("arch"), data_info=prov.get("data") or {},
            temperature=clf.temperature if temperature is None else check_temperature(temperature),
        )
    lm = _load_torch(model, threads=threads)
    lm.temperature = check_temperature(temperature)
    return lm


def _load_torch(model, *, threads: int | None = None) -> LoadedModel:
    import torch

    from .checkpoint import build_model, load_checkpoint
    from .export import checkpoint_data_info

    if threads:
        torch.set_num_threads(threads)
    ckpt = model if isinstance(model, dict) else load_checkpoint(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # e.g. scoring on a lent GPU (scripts/device_train.sh)
    net = build_model(ckpt).float().eval().to(device)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
            return out.float().cpu().numpy()

    return LoadedModel(
        forward=forward, labels=tuple(str(x) for x in ckpt["labels"]),
        spec=PreprocessSpec.from_dict(ckpt.get("preprocess")), label_set=ckpt.get("label_set"),
        default_tta=normalize_tta((ckpt.get("config") or {}).get("tta")), kind="torch",
        name=str(ckpt.get("path", model if not isinstance(model, dict) else "<checkpoint>")),
        arch=ckpt.get("arch"), data_info=checkpoint_data_info(ckpt), device=device,
    )


def _subset_from_data(data, split: str, lm: LoadedModel, split_method: str | None, seed: int | None,
                      limit: int | None, splits_kwargs: dict, unseen: bool = False) -> tuple[Any, dict]:
    from .data import Splits, Subset, prepare_splits

    if isinstance(data, Subset):
        return data, {"data": None, "data_sha256": None, "split_method": None, "split": split or "PrivateTest"}
    if isinstance(data, Splits):
        split = split or "PrivateTest"
        if lm.label_set and data.label_set != lm.label_set:
            raise FerkitError(f"the splits use label set {data.label_set!r} but the model predicts {lm.label_set!r}")
        info = data.info
        return data.get(split), {"data": info.get("data"), "data_sha256": info.get("data_sha256"),
                                 "split_method": info.get("split"), "split": split, "_train": data.train}
    if not isinstance(data, (str, os.PathLike)):
        raise FerkitError(f"data must be a FER2013 CSV or image-folder path, Splits or Subset, got {type(data).__name__}")
    method = split_method or lm.data_info.get("split") or "usage"
    if seed is None:
        seed = int(lm.data_info.get("seed") or 0)
    label_set = lm.label_set or "fer7"
    if label_set == "ferplus8" and not splits_kwargs.get("ferplus"):
        recorded = (lm.data_info.get("ferplus") or {}).get("path")
        if recorded and os.path.isfile(recorded) and not os.path.isdir(str(data)):
            splits_kwargs = {**splits_kwargs, "ferplus": recorded}
    if splits_kwargs.get("ferplus_protocol") is not None and not splits_kwargs.get("ferplus"):
        raise FerkitError("a FER+ protocol applies to FER+ labels: pass ferplus=PATH (--ferplus) to fer2013new.csv")
    splits = prepare_splits(str(data), label_set=label_set, split=method, seed=seed, limit=limit, **splits_kwargs)
    if tuple(splits.labels) != tuple(lm.labels):
        raise FerkitError(
            f"the model's labels {list(lm.labels)} differ from label set {label_set!r} {list(splits.labels)}"
        )
    sha = splits.info.get("data_sha256")
    trained_on_it = bool(sha) and sha == lm.data_info.get("data_sha256")
    if not trained_on_it and not split_method and method != "usage":
        # the model's own random split means nothing on other data: use that data's Usage column / split folders
        method = "usage"
        splits = prepare_splits(str(data), label_set=label_set, split=method, seed=seed, limit=limit, **splits_kwargs)
    if split is None:  # a folder of labelled photos without split folders is scored whole, unless it trained the model
        split = "all" if splits.info.get("layout") == "flat" and not trained_on_it else "PrivateTest"
    if split.lower() == "all" and trained_on_it:
        raise FerkitError("split 'all' includes the images this model was trained on (it was trained on this very "
                          f"data, sha256 {sha[:12]}...); score PrivateTest, the held-out test split, instead")
    meta = {"data": str(data), "data_sha256": sha, "split_method": method, "seed": seed, "split": split}
    if splits.info.get("ferplus"):
        meta["ferplus"] = splits.info["ferplus"]
    if splits.info.get("cleaning"):
        meta["cleaning"] = splits.info["cleaning"]
    if splits.info.get("pack"):
        meta["pack"] = splits.info["pack"]
    meta["_train"] = splits.train
    if unseen and (limit is not None or splits_kwargs.get("clean") or splits_kwargs.get("ferplus")):
        # "seen" means in the Training split as the file holds it: not only its first `limit` rows, not what
        # --clean left of it (the duplicates rule removes exactly the copies of test images), not FER+'s subset
        ref_set = "fer7" if label_set == "ferplus8" and not os.path.isdir(str(data)) else label_set
        meta["_train"] = prepare_splits(str(data), label_set=ref_set, split=method, seed=seed).train
    return splits.get(split), meta


def _drop_seen(subset, train) -> tuple[Any, int]:
    """``subset`` without the images that also occur, pixel for pixel, in ``train``; and how many went."""
    from .data.clean import duplicate_groups

    groups = duplicate_groups(np.concatenate([train.images, subset.images]))
    seen = np.isin(groups[len(train):], groups[:len(train)])
    return subset.take(np.flatnonzero(~seen)), int(seen.sum())


def evaluate(
    model,
    subset_or_data,
    *,
    split: str | None = None,
    tta=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    split_method: str | None = None,
    seed: int | None = None,
    limit: int | None = None,
    progress: bool = False,
    return_probs: bool = False,
    temperature: float | None = None,
    unseen: bool = False,
    **splits_kwargs,
) -> dict[str, Any]:
    """Metrics of ``model`` on one split.

    model: run directory, checkpoint file or dict (torch); ``.onnx`` path, bundled model name or
        EmotionClassifier (onnxruntime, no torch).
    subset_or_data: a FER2013 CSV or image-folder path (loaded with the model's label set), a ``Splits``
        or a ``Subset``.
    split: Training / PublicTest / PrivateTest (or train / val / test), or ``all`` (every image; refused for
        the data the model was trained on). Model selection belongs on PublicTest; PrivateTest is the final
        test. None (default): PrivateTest, or ``all`` for a folder of labelled photos without split folders
        that the model was not trained on (someone else's test set).
    tta: None = the model's default, else 'none' / 'flip' / 'tencrop' (True = 'tencrop').
    split_method, seed: how to split a CSV (default: what the model was trained with, else ``usage``).
    limit: first ``limit`` rows of each split (quick checks). Other keyword arguments go to ``prepare_splits``
        (``ferplus=`` path of fer2013new.csv, needed for FER+ models and defaulting to the one recorded at
        training time; ``ferplus_protocol=`` 'plurality' (default) or 'reference', see
        :mod:`ferkit.data.ferplus`; ``clean=`` rules, off by default so the test split stays complete).
    return_probs: also return ``probs`` (N, C) float32 and ``y_true`` (N,) arrays (not JSON).
    temperature: None = the model's own (see :func:`load_model`); 1.0 = the raw softmax.
    unseen: score only the images of ``split`` that do not also occur, pixel for pixel, in the Training split
        (FER2013's PublicTest and PrivateTest share 280 and 288 images with Training; every model trained on
        Training has seen them). The result's ``unseen`` records how many were left out.

    Returns a JSON-ready dict: accuracy, loss (mean cross-entropy, nats), macro_f1, per_class,
    confusion_matrix (counts, rows = true class), confusion_matrix_normalized, true_counts, pred_counts,
    calibration (ECE, MCE, Brier, mean confidence, reliability bins: :func:`ferkit.metrics.calibration`),
    labels, n, split, model, model_kind, device, arch, data, data_sha256, tta, temperature, seconds, faces_per_s.
    """
    lm = load_model(model, threads=threads, temperature=temperature)
    subset, data_meta = _subset_from_data(subset_or_data, split, lm, split_method, seed, limit, splits_kwargs, unseen)
    split = data_meta.pop("split")
    train = data_meta.pop("_train", None)
    dropped = None
    if unseen:
        if train is None:
            raise FerkitError("unseen=True needs the data set (a CSV, pack, folder or Splits), not a bare Subset")
        if split.lower() in ("training", "train", "all"):
            raise FerkitError(f"unseen applies to a test split (PublicTest or PrivateTest), not {split!r}")
        subset, dropped = _drop_seen(subset, train)
    y = np.asarray(subset.labels, dtype=np.int64)
    if len(y) == 0:
        held = f" (a pack of {', '.join(data_meta['pack']['splits'])} only)" if data_meta.get("pack") else ""
        raise FerkitError(f"split {split!r} is empty in this data{held}; nothing to evaluate")
    if y.min() < 0 or y.max() >= len(lm.labels):
        raise FerkitError(f"the data's labels run {y.min()}..{y.max()} but the model has {len(lm.labels)} classes")
    mode = lm.default_tta if tta is None else normalize_tta(tta)
    t0 = time.perf_counter()
    probs, logits = batched_predict(lm.forward, subset.images, lm.spec, tta=mode, batch_size=batch_size,
                                    keep_logits=True, progress=progress, temperature=lm.temperature)
    seconds = time.perf_counter() - t0
    pred = probs.argmax(axis=1)
    report = classification_report(y, pred, lm.labels, probs=probs, logits=logits)
    result: dict[str, Any] = {
        "accuracy": report.pop("accuracy"),
        "loss": report.pop("loss"),
        "macro_f1": report.pop("macro_f1"),
        **report,
        "split": split,
        "model": lm.name,
        "model_kind": lm.kind,
        "device": lm.device,
        "arch": lm.arch,
        "label_set": lm.label_set,
        **data_meta,
        "tta": mode,
        "temperature": lm.temperature,
        "unseen": None if dropped is None else {"left_out_also_in_training": dropped, "scored": int(len(y))},
        "seconds": round(seconds, 4),
        "faces_per_s": round(len(y) / seconds, 1) if seconds > 0 else None,
    }
    if return_probs:
        result["probs"] = probs
        result["y_true"] = y
    return result


def compare_models(entries, data, *, split: str | None = None, limit: int | None = None, unseen: bool = False,
                   **splits_kwargs) -> list[dict[str, Any]]:
    """Several models (or one model under several TTA modes) on the same images, each against the first.

    entries: ``(model, tta)`` pairs (tta None = the model's own). Returns one dict per entry: ``model``,
    ``tta``, ``n``, ``accuracy``, ``macro_f1``, ``faces_per_s`` and, after the first, ``vs_first``:
    :func:`ferkit.metrics.paired_comparison` (difference, images only one gets right, paired standard
    error). Model choices belong on PublicTest; score PrivateTest only after deciding.
    """
    from .metrics import paired_comparison

    rows, first = [], None
    for model, tta in entries:
        r = evaluate(model, data, split=split, tta=tta, limit=limit, unseen=unseen, return_probs=True, **splits_kwargs)
        pred = r["probs"].argmax(axis=1)
        row = {"model": str(model), "tta": r["tta"], "split": r["split"], "n": r["n"], "accuracy": r["accuracy"],
               "macro_f1": r["macro_f1"], "faces_per_s": r["faces_per_s"]}
        if first is None:
            first = (r["y_true"], pred, tuple(r["labels"]))
        else:
            if not np.array_equal(first[0], r["y_true"]) or tuple(r["labels"]) != first[2]:
                raise FerkitError(f"{model} was scored on other images or labels than {rows[0]['model']}; "
                                  "only models of the same label set compare image by image")
            row["vs_first"] = paired_comparison(first[0], first[1], pred)
        rows.append(row)
    return rows


def format_comparison(rows: list[dict[str, Any]], title: str) -> str:
    """A Markdown table of :func:`compare_models` rows."""
    ref = f"{rows[0]['model']} ({rows[0]['tta']})"
    head = ["model", "tta", "images", "accuracy", "macro-F1", "faces/s", f"vs {ref} (points)",
            "right only with the first / with this", "paired SE (points)", "difference / SE"]
    body = []
    for r in rows:
        c = r.get("vs_first")
        body.append([r["model"], r["tta"], str(r["n"]), f"{100 * r['accuracy']:.2f}%", f"{100 * r['macro_f1']:.2f}%",
                     f"{r['faces_per_s']:.0f}" if r.get("faces_per_s") else "-",
                     "-" if c is None else f"{100 * c['difference']:+.2f}",
                     "-" if c is None else f"{c['a_only']} / {c['b_only']}",
                     "-" if c is None else f"{100 * c['paired_se']:.2f}",
                     "-" if c is None or c["paired_se"] == 0 else f"{c['difference'] / c['paired_se']:+.2f}"])
    from .tables import markdown_table

    return "\n".join([f"## {title}", "", *markdown_table(head, body)])


# -- reporting ---------------------------------------------------------------------------------------

def format_report(result: dict[str, Any]) -> str:
    """A readable text table of an :func:`evaluate` result."""
    labels = result["labels"]
    w = max(9, max(len(x) for x in labels))
    lines = [
        f"model   {result['model']} ({result['model_kind']}{', ' + result['arch'] if result.get('arch') else ''})",
        f"data    {result.get('data')}  split {result['split']}  n={result['n']}  tta={result['tta']}",
        *([f"labels  FER+ votes, {result['ferplus'].get('protocol', 'plurality')} protocol"]
          if result.get("ferplus") else []),
        *([f"unseen  {result['unseen']['left_out_also_in_training']} images that also occur in Training left out"]
          if result.get("unseen") else []),
        f"accuracy {result['accuracy'] * 100:.2f}%   macro-F1 {result['macro_f1'] * 100:.2f}%   "
        f"loss {result['loss']:.4f}   ({result.get('faces_per_s')} faces/s)",
        *([_calibration_line(result)] if result.get("calibration") else []),
        "",
        f"{'class':<{w}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8} {'predicted':>9}",
    ]
    for lab in labels:
        pc = result["per_class"][lab]
        lines.append(f"{lab:<{w}} {pc['precision']:>9.3f} {pc['recall']:>7.3f} {pc['f1']:>7.3f} "
                     f"{pc['support']:>8d} {result['pred_counts'][lab]:>9d}")
    lines += ["", "confusion matrix (rows = true, columns = predicted)"]
    short = [x[:5] for x in labels]
    cw = max(6, max(len(str(v)) for row in result["confusion_matrix"] for v in row) + 1)
    lines.append(" " * w + "".join(f"{s:>{cw}}" for s in short))
    for lab, row in zip(labels, result["confusion_matrix"]):
        lines.append(f"{lab:<{w}}" + "".join(f"{v:>{cw}d}" for v in row))
    return "\n".join(lines)


def _calibration_line(result: dict[str, Any]) -> str:
    cal = result["calibration"]
    t = result.get("temperature", 1.0)
    return (f"calibration: ECE {cal['ece'] * 100:.2f}%   Brier {cal['brier']:.4f}   mean top probability "
            f"{cal['confidence'] * 100:.2f}%   temperature {t:g}{' (raw softmax)' if t == 1.0 else ''}")


def save_report(result: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``metrics.json``, ``confusion_matrix.png`` (counts and row-normalised, annotated),
    ``class_counts.png`` (true vs predicted count per class) and, when the result has probabilities'
    calibration, ``reliability.png`` (accuracy against top probability per bin) into ``out_dir``; returns
    the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = {k: v for k, v in result.items() if k not in ("probs", "y_true")}
    paths = [out / "metrics.json"]
    paths[0].write_text(json.dumps(js, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FerkitError("plots need matplotlib: pip install 'ferkit[train]' (metrics.json was written)") from None

    labels = result["labels"]
    c = len(labels)
    cm = np.asarray(result["confusion_matrix"])
    cmn = np.asarray(result["confusion_matrix_normalized"])
    title = f"{Path(str(result['model'])).name} on {result['split']} (n={result['n']}, acc {result['accuracy'] * 100:.2f}%)"
    fig, axes = plt.subplots(1, 2, figsize=(6 + 1.2 * c, 3 + 0.6 * c))
    for ax, mat, name, fmt in ((axes[0], cm, "counts", "d"), (axes[1], cmn, "row-normalised", ".2f")):
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=mat.max() if mat.max() > 0 else 1)
        ax.set_xticks(range(c), labels, rotation=45, ha="right")
        ax.set_yticks(range(c), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
        hi = mat.max() / 2 if mat.max() > 0 else 0.5
        for i in range(c):
            for j in range(c):
                ax.text(j, i, format(mat[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if mat[i, j] > hi else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    paths.append(out / "confusion_matrix.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(2 + 0.9 * c, 3.5))
    xs = np.arange(c)
    t = [result["true_counts"][x] for x in labels]
    p = [result["pred_counts"][x] for x in labels]
    ax.bar(xs - 0.2, t, 0.4, label="true")
    ax.bar(xs + 0.2, p, 0.4, label="predicted")
    ax.set_xticks(xs, labels, rotation=30, ha="right")
    ax.set_ylabel("faces")
    ax.set_title(f"class counts on {result['split']}: true vs predicted")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "class_counts.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    cal = result.get("calibration")
    if cal and cal.get("bins"):
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        bins = cal["bins"]
        lo = np.array([b["lo"] for b in bins])
        width = np.array([b["hi"] - b["lo"] for b in bins])
        ax.bar(lo, [b["accuracy"] for b in bins], width, align="edge", edgecolor="black", alpha=0.7,
               label="accuracy in the bin")
        ax.plot([b["confidence"] for b in bins], [b["confidence"] for b in bins], "o", color="C3", markersize=3,
                label="mean top probability")
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top probability")
        ax.set_ylabel("accuracy")
        t = result.get("temperature", 1.0)
        ax.set_title(f"reliability on {result['split']}: ECE {cal['ece'] * 100:.2f}%"
                     + (f", T {t:g}" if t != 1.0 else ""), fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        paths.append(out / "reliability.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths
