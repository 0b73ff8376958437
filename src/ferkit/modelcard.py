"""Model cards: what a shipped ``.onnx`` model is, how it was made, and how well it does, measured.

``write_model_card(model, data, out_dir)`` evaluates the exported model (the artifact users get, through
the same runtime they use, with its default test-time augmentation) on FER2013 Training, PublicTest and
PrivateTest, and writes ``MODEL_CARD.md`` plus ``metrics.json`` and the PrivateTest confusion matrix PNGs.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from .errors import FerkitError
from .io import make_output_folder

SPLITS = ("Training", "PublicTest", "PrivateTest")


def _ferplus_text(cfg: dict) -> str:
    if not cfg.get("ferplus"):
        return "no"
    mode = cfg.get("ferplus_mode") or "majority"
    if mode == "blend":
        return (f"`{cfg['ferplus']}` as extra supervision (blend: training target = "
                f"{1 - cfg.get('ferplus_weight', 0.5):g} x FER2013 label + {cfg.get('ferplus_weight', 0.5):g} x FER+ votes; "
                f"labels and evaluation are FER2013's)")
    protocol = cfg.get("ferplus_protocol") or "plurality"
    return f"`{cfg['ferplus']}` ({mode} targets, {protocol} protocol)"


def _teacher_text(prov: dict, blended: bool = False) -> str:
    """The distillation line; ``blended``: the target the teachers join is the FER+ blend, not the label."""
    t = (prov.get("data") or {}).get("teacher")
    if not t:
        return "no"
    members = t.get("teachers") or [t]
    names = " and ".join(f"`{m.get('teacher')}` ({m.get('arch')}, tta {m.get('tta')}, sha256 `{str(m.get('sha256'))[:12]}...`"
                         + (f"; {', '.join(m['dropped_classes'])} dropped, the rest renormalised" if m.get("dropped_classes") else "")
                         + ")" for m in members)
    probs = "the mean of the teachers' probabilities" if len(members) > 1 else "teacher probabilities"
    base = "the FER+-blended target above" if blended else "label"
    temp = t.get("temperature", 1)
    if temp != 1:
        probs += f" (each at temperature {temp:g}: p ** (1/{temp:g}), renormalised)"
    when = (" on each augmented batch the student trains on (consistent teaching)" if t.get("mode") == "consistent"
            else " on each clean Training image, once before training")
    return f"from {names}; target = {1 - t.get('weight', 0):g} x {base} + {t.get('weight'):g} x {probs}{when}"


def _data_file_text(prov: dict) -> str:
    """``FER2013 `fer2013.csv.gz` sha256 `...` `` naming the file that was hashed (its bytes: a .gz's hash is not
    that of the CSV inside it)."""
    path = (prov.get("data") or {}).get("data")
    name = os.path.basename(str(path)) if path else "fer2013.csv"
    return f"FER2013 `{name}` sha256 `{prov.get('data_sha256')}` (of the file's bytes)"


def _single_sections(meta: dict, prov: dict, cfg: dict, notes: str | None) -> list[str]:
    """Data, selection and recipe of a model exported from one training run."""
    return [
        "## Data and selection",
        "",
        f"- Training data: {_data_file_text(prov)}, Training split only "
        f"({(prov.get('data') or {}).get('sizes', {}).get('train', '?')} images), label set {meta.get('label_set')}.",
        f"- Model selection: the epoch with the best PublicTest accuracy (epoch {prov.get('best_epoch')} of "
        f"{cfg.get('epochs', '?')} planned, PublicTest {_pct(prov['best_val_acc']) if prov.get('best_val_acc') is not None else '?'} during training). "
        "PrivateTest was not used for any choice.",
        f"- Cleaning: {cfg.get('clean') or 'none'}; FER+ labels: {_ferplus_text(cfg)}; distillation: {_teacher_text(prov, cfg.get('ferplus_mode') == 'blend' and bool(cfg.get('ferplus')))}.",
        "",
        "## Recipe",
        "",
        f"- Optimiser {cfg.get('optimizer')} lr {cfg.get('lr')} momentum {cfg.get('momentum')} nesterov {cfg.get('nesterov')} "
        f"weight decay {cfg.get('weight_decay')}, batch {cfg.get('batch_size')}, schedule {cfg.get('schedule')} "
        f"(warm-up {cfg.get('warmup_epochs')} epochs), {cfg.get('epochs')} epochs, label smoothing {cfg.get('label_smoothing')}{_ema_text(cfg)}, "
        f"precision {cfg.get('precision')}, channels-last {cfg.get('channels_last')}, seed {cfg.get('seed')}.",
        f"- Augmentation: {json.dumps(cfg.get('augment'))}.",
        f"- Training wall time: {prov.get('train_time_s')} s (sum of the epoch times up to epoch "
        f"{prov.get('epochs_completed')}, the exported checkpoint's; hardware of the training run: "
        f"{notes or 'see the command below'}).",
        "",
    ]


def _quantization_lines(prov: dict) -> list[str]:
    """One line for an int8 model (``ferkit export --quantize``): what it was quantized from and on what."""
    q = prov.get("quantization")
    if not q:
        # an ensemble combined from members quantized each on its own (its members' weighted sum is float32)
        quantized = [(m.get("source"), m["quantization"]) for m in prov.get("members") or [] if m.get("quantization")]
        if not quantized:
            return []
        groups: dict[str, list[str]] = {}  # members quantized together (split out of one int8 ensemble) share a line
        for src, mq in quantized:
            cal = mq.get("calibration") or {}
            how = (f"from `{mq.get('source')}` ({mq.get('scope') or 'on its own'}; {mq.get('format')}, onnxruntime "
                   f"{mq.get('onnxruntime')}, {cal.get('method')} scales from {cal.get('images')} random "
                   f"{cal.get('split')} faces, seed {cal.get('seed')})")
            groups.setdefault(how, []).append(f"`{src}`")
        return [f"- Weights: {len(quantized)} of the {len(prov['members'])} member networks are int8, quantized "
                f"before the ensemble was combined (the weighted mean of their probabilities stays float32): "
                + "; ".join(f"{', '.join(srcs)} {how}" for how, srcs in groups.items())
                + "; every figure below is this file's"]
    cal = q.get("calibration") or {}
    return [f"- Weights: {q.get('mode')} ({q.get('format')}: {q.get('activations')} activations, {q.get('weights')} "
            f"weights), quantized from `{q.get('source')}` (sha256 `{str(q.get('source_sha256'))[:16]}...`"
            f"{'; its float16 weights widened exactly to float32 first' if q.get('source_weights') else ''}) with "
            f"onnxruntime {q.get('onnxruntime')}, {cal.get('method')} scales from {cal.get('images')} random "
            f"{cal.get('split')} faces (seed {cal.get('seed')}); every figure below is the int8 model's"]


def _temperature_lines(meta: dict, prov: dict) -> list[str]:
    """One line for a calibrated model (``ferkit export --calibrate``): its temperature and where it was fitted."""
    t = meta.get("temperature")
    if t is None or float(t) == 1.0:
        return ["- Probabilities: the network's softmax (no temperature; `ferkit export MODEL --calibrate` fits one)"]
    ts = prov.get("temperature_scaling") or {}
    b, a = ts.get("before") or {}, ts.get("after") or {}
    fit = (f", fitted on {ts.get('split')} ({ts.get('n')} faces): log-loss {b.get('nll', float('nan')):.4f} -> "
           f"{a.get('nll', float('nan')):.4f}, ECE {_pct(b['ece']) if 'ece' in b else '?'} -> "
           f"{_pct(a['ece']) if 'ece' in a else '?'}" if ts else "")
    return [f"- Probabilities: softmax at temperature {float(t):g}{fit}; it changes confidences, never the "
            "predicted class, and every figure below uses it"]


def _ema_text(cfg: dict) -> str:
    return f", weight average (EMA) {cfg['ema']}" if cfg.get("ema") else ""


def _recipe_line(cfg: dict) -> str:
    return (f"{cfg.get('optimizer')} lr {cfg.get('lr')}, batch {cfg.get('batch_size')}, {cfg.get('schedule')}, "
            f"{cfg.get('epochs')} epochs, label smoothing {cfg.get('label_smoothing')}{_ema_text(cfg)}, "
            f"seed {cfg.get('seed')}, recipe {cfg.get('recipe')}")


def _ensemble_sections(meta: dict, prov: dict, notes: str | None) -> list[str]:
    """Data, selection and recipe of an ensemble: one row per member."""
    members = prov.get("members") or []
    weights = [m.get("weight") for m in (meta.get("arch_kwargs") or {}).get("members") or []]
    data = prov.get("data") or {}
    lines = [
        "## Data and selection",
        "",
        f"- An ensemble of {len(members)} networks: the output is the weighted mean of their softmax probabilities.",
        f"- Training data of every member: {_data_file_text(prov)}, Training split "
        f"only ({data.get('sizes', {}).get('train', '?')} images), split `{data.get('split')}`; each member's "
        "checkpoint is its epoch with the best PublicTest accuracy. PrivateTest was not used for any choice.",
        "",
        "| member | architecture | weight | best epoch | PublicTest in training | FER+ labels | recipe | train time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, m in enumerate(members):
        cfg = m.get("config") or {}
        w = weights[i] if i < len(weights) else None
        lines.append(
            f"| {m.get('source') or i + 1} | `{cfg.get('arch')}` | {'?' if w is None else f'{w:.3g}'} | "
            f"{m.get('best_epoch')} of {cfg.get('epochs')} | "
            f"{_pct(m['best_val_acc']) if m.get('best_val_acc') is not None else '?'} | {_ferplus_text(cfg)} | "
            f"{_recipe_line(cfg)} | {m.get('train_time_s')} s |")
    lines += [
        "",
        f"- Total training wall time: {prov.get('train_time_s')} s (sum of the members' epoch times; hardware: "
        f"{notes or 'see the commands below'}).",
        "",
    ]
    return lines


def _split_row(split: str, r: dict) -> str:
    cal = r.get("calibration") or {}
    ece = _pct(cal["ece"]) if "ece" in cal else "-"
    brier = f"{cal['brier']:.4f}" if "brier" in cal else "-"
    return f"| {split} | {r['n']} | {_pct(r['accuracy'])} | {_pct(r['macro_f1'])} | {r['loss']:.4f} | {ece} | {brier} |"


def _shown(model: str) -> str:
    """A bundled model by its name (as a user would type it), anything else by its path."""
    from .runtime import ASSETS_DIR

    p = Path(model)
    return p.stem if p.parent.resolve() == ASSETS_DIR.resolve() else model


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def write_model_card(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    train_command: str | None = None,
    export_command: str | None = None,
    notes: str | None = None,
) -> Path:
    """Evaluate ``model`` (an exported ``.onnx``) on every FER2013 split and write a model card.

    Selection is by PublicTest (validation) accuracy during training; PrivateTest is reported, never
    used to choose anything. Returns the path of ``MODEL_CARD.md``.
    """
    from .evaluate import evaluate, save_report
    from .runtime import EmotionClassifier

    model = str(model)
    if not model.endswith(".onnx"):
        raise FerkitError(f"a model card describes an exported .onnx model, got {model}")
    clf = EmotionClassifier(model)
    meta = clf.metadata
    prov = meta.get("provenance") or {}
    cfg = prov.get("config") or {}
    out = Path(out_dir)
    make_output_folder(out, "--out")
    results: dict[str, Any] = {}
    for split in SPLITS:
        results[split] = evaluate(model, str(data), split=split)
    save_report(results["PrivateTest"], out / "privatetest")
    # FER+ models: also the FER+ authors' test protocol (single votes removed, > 50% agreement), which
    # keeps fewer, clearer images; the main table stays ferkit's plurality protocol
    reference = {split: evaluate(model, str(data), split=split, ferplus_protocol="reference")
                 for split in SPLITS[1:]} if meta.get("label_set") == "ferplus8" else {}
    # the test splits without the images that also occur in Training (FER2013 shares 280 + 288 of them)
    unseen = {split: evaluate(model, str(data), split=split, unseen=True) for split in SPLITS[1:]}
    (out / "metrics.json").write_text(json.dumps(
        {**{s: {k: v for k, v in r.items() if k not in ("probs", "y_true")} for s, r in results.items()},
         **({"reference_protocol": reference} if reference else {}), "unseen": unseen}, indent=1) + "\n")

    name = name or Path(model).stem
    test = results["PrivateTest"]
    labels = test["labels"]
    size_mb = os.path.getsize(model) / 1e6
    lines = [
        f"# Model card: `{name}`",
        "",
        f"- File: `{Path(model).name}` ({size_mb:.1f} MB, ONNX opset {prov.get('opset')}, exporter {prov.get('exporter')})",
        f"- Architecture: `{meta.get('arch')}` {json.dumps(meta.get('arch_kwargs') or {})}",
        f"- Labels ({meta.get('label_set')}): {', '.join(labels)}",
        f"- Input: {meta.get('input_size')}x{meta.get('input_size')} gray face crop, preprocessing {json.dumps(meta.get('preprocess'))}",
        f"- Test-time augmentation used by default (and in every figure below): `{meta.get('tta')}`",
        *_quantization_lines(prov),
        *_temperature_lines(meta, prov),
        "",
        *(_ensemble_sections(meta, prov, notes) if meta.get("arch") == "ensemble" else _single_sections(meta, prov, cfg, notes)),
        "Reproduce:",
        "",
        "```bash",
        train_command or "# (training command not recorded)",
        export_command or f"ferkit export RUN_DIR --out {Path(model).name}",
        f"ferkit model-card {_shown(model)} --data fer2013.csv.gz --out DIR",
        "```",
        "",
        "## Accuracy (measured on the exported model with onnxruntime)",
        "",
        "| split | images | accuracy | macro-F1 | loss | ECE | Brier |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for split in SPLITS:
        lines.append(_split_row(split, results[split]))
    if reference:
        lines += ["", "FER+ labels above: plurality of the 10 votes, ties, unknown and not-a-face dropped (ferkit's "
                  "protocol). The same model under the FER+ authors' protocol (microsoft/FERPlus `ferplus.py`, "
                  "majority mode: single votes removed, then more than half of the remaining votes for one "
                  "emotion; fewer, clearer images), `ferkit evaluate MODEL --ferplus-protocol reference`:", "",
                  "| split | images | accuracy | macro-F1 | loss | ECE | Brier |", "| --- " * 7 + "|"]
        for split, r in reference.items():
            lines.append(_split_row(split, r))
    left = {split: (r.get("unseen") or {}).get("left_out_also_in_training", 0) for split, r in unseen.items()}
    if any(left.values()):
        lines += ["", "The table is the standard protocol: the full splits. Some test images also occur, pixel for "
                  "pixel, in Training, which this model (like any trained on Training) has seen; without them "
                  "(`ferkit evaluate MODEL --unseen`):", "",
                  "| split | images | accuracy | macro-F1 | loss | ECE | Brier |", "| --- " * 7 + "|"]
        for split, r in unseen.items():
            lines.append(_split_row(f"{split} (not in Training; {left[split]} left out)", r))
    lines += [
        "",
        "loss: mean negative log-likelihood of the true class (nats); ECE: expected calibration error, the mean gap "
        "between the top probability and accuracy over 15 equal-width bins (0 = the probabilities are honest); "
        "Brier: mean squared error of the probability rows against the one-hot label.",
        "",
        f"Evaluation machine: {_cpu_name()}, {os.cpu_count()} logical CPUs; classifier speed there during evaluation: "
        f"{test.get('faces_per_s')} faces/s (PrivateTest, batch {256}).",
        "",
        "## PrivateTest per class",
        "",
        "| class | precision | recall | F1 | support | predicted |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for lab in labels:
        pc = test["per_class"][lab]
        lines.append(f"| {lab} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} | "
                     f"{test['pred_counts'][lab]} |")
    lines += ["", "## PrivateTest confusion matrix (rows = true, columns = predicted)", "",
              "| true \\ predicted | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 1) + "|"]
    for lab, row in zip(labels, test["confusion_matrix"]):
        lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "Pictures: `privatetest/confusion_matrix.png`, `privatetest/class_counts.png`, `privatetest/reliability.png` "
              "(accuracy against top probability); all figures: `metrics.json`.", ""]
    card = out / "MODEL_CARD.md"
    card.write_text("\n".join(lines))
    return card
