"""The privacy experiment behind ``ferkit privacy-report`` (needs torch and scikit-image).

For each obfuscation (pixelation at several mosaic sizes, Gaussian blur at several strengths, a black box),
on FER2013 with the ``Usage`` split (train on Training, select on PublicTest, report on PrivateTest):

1. **default model on obfuscated faces**: the emotion accuracy (and macro-F1) a user's classifier gets on
   obfuscated PrivateTest faces;
2. **model trained on obfuscated faces**: a classifier trained (or fine-tuned from ``init``) on obfuscated
   Training faces, selected on obfuscated PublicTest, scored on obfuscated PrivateTest: what an adversary
   who adapts to the obfuscation reads;
3. **recovery**: a U-Net (:mod:`ferkit.privacy.recovery`) trained to map obfuscated Training faces back to
   the originals, selected on PublicTest by MAE; on PrivateTest: mean absolute pixel error in % of 255,
   PSNR and SSIM of the recovered faces against the originals, next to the same measures for the
   obfuscated faces themselves (what the recovery gained);
4. **default model on recovered faces**: the emotion accuracy on the U-Net's output.

A row ``none`` gives the reference: the default model on clean faces, and a classifier trained the same
way on clean faces (so that the effect of the extra training itself is visible).

Outputs in ``out/``: ``privacy_report.json`` (every number, the settings, the data file's sha256, the
wall time per step), ``privacy_report.md`` (the table and what it means), ``privacy_grid.png``
(obfuscated / recovered / original for a few PrivateTest faces per method), and ``runs/`` with the
classifier training runs (ferkit run directories; delete them once the report is written). The JSON is
written after every method, and a re-run with the same settings skips the methods already done, so a
killed report resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import FerkitError
from .obfuscate import Obfuscation, obfuscate_batch, parse_obfuscation

DEFAULT_METHODS = ("pixelate-2", "pixelate-4", "pixelate-6", "pixelate-8", "pixelate-12",
                   "blur-1", "blur-2", "blur-4", "fill")
REPORT_JSON, REPORT_MD, GRID_PNG = "privacy_report.json", "privacy_report.md", "privacy_grid.png"
FORMAT = "ferkit-privacy-report-1"


@dataclass
class ReportSettings:
    """What defines a report; a resumed report must have the same settings (except ``threads``)."""

    data: str
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    model: str = "default"               # the classifier scored on obfuscated and recovered faces
    init: str | None = None              # checkpoint / run dir the obfuscation-trained classifiers start from
    arch: str = "fastres_s"              # architecture of those classifiers when there is no init
    classifier_epochs: int = 3
    classifier_lr: float | None = None   # None: 0.02 when fine-tuning from init, else the cpu-fast recipe's
    recovery_epochs: int = 3
    recovery_base: int = 16
    limit: int | None = None             # first N rows per split (quick runs and tests)
    seed: int = 0
    grid_faces: int = 4
    threads: int | None = None

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("threads")
        return d


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "-" if x is None else format(x, spec) + suffix


def _score(lm, faces: np.ndarray, labels: np.ndarray, tta: str | None = None) -> dict[str, float]:
    from ..metrics import macro_f1
    from ..runtime import batched_predict

    probs, _ = batched_predict(lm.forward, faces, lm.spec, tta=tta or lm.default_tta, temperature=lm.temperature)
    pred = probs.argmax(1)
    return {"accuracy": float((pred == labels).mean()), "macro_f1": float(macro_f1(labels, pred, len(lm.labels)))}


def _model_file_info(model: str) -> dict[str, Any]:
    """Which file the scored model is (its sha256), so the report stays tied to it if the default changes."""
    import hashlib

    from ..checkpoint import resolve_checkpoint
    from ..evaluate import is_onnx_ref
    from ..runtime import resolve_model_path

    try:
        path = resolve_model_path(model) if is_onnx_ref(model) else resolve_checkpoint(model)
    except FerkitError:
        return {"name": str(model)}
    return {"name": str(model), "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _train_classifier(settings: ReportSettings, ob: Obfuscation | None, run_dir: Path, log) -> Path:
    """A ferkit training run on obfuscated faces (``ob`` None: clean faces, the control)."""
    from ..train import TrainConfig, train

    fine_tune = settings.init is not None
    cfg = TrainConfig(
        data=settings.data, out=str(run_dir), recipe="cpu-fast", arch=None if fine_tune else settings.arch,
        epochs=settings.classifier_epochs, init=settings.init, obfuscate=ob.name if ob else None,
        limit=settings.limit, seed=settings.seed, threads=settings.threads, progress=False,
    )
    if fine_tune:
        # A short fine-tune: a small peak LR with a short warm-up (the recipe's 3-epoch warm-up is for runs from scratch).
        cfg.lr = settings.classifier_lr or 0.02
        cfg.warmup_epochs = min(0.5, settings.classifier_epochs / 4)
        from ..checkpoint import load_checkpoint

        cfg.arch = load_checkpoint(settings.init).get("arch")
    else:
        cfg.lr = settings.classifier_lr  # None: the recipe's
        cfg.warmup_epochs = min(3.0, settings.classifier_epochs / 4)  # the recipe's 3, or less for short runs
    if (run_dir / "last.pt").exists():
        import torch

        done = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False).get("epoch", 0)
        if done >= settings.classifier_epochs:
            log(f"  classifier run {run_dir} is complete; reusing it")
            return run_dir
        cfg = TrainConfig(out=str(run_dir), resume=True, threads=settings.threads, progress=False)
    else:
        cfg.overwrite = True  # a half-written directory without last.pt
    return train(cfg)


def _grid(samples: dict[str, dict[str, np.ndarray]], path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(samples)
    cols = 3 * n
    fig, axes = plt.subplots(len(methods), cols, figsize=(cols * 0.95, len(methods) * 1.05 + 0.4), squeeze=False)
    for r, m in enumerate(methods):
        for i in range(n):
            for j, kind in enumerate(("obfuscated", "recovered", "original")):
                ax = axes[r, 3 * i + j]
                ax.imshow(samples[m][kind][i], cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(kind, fontsize=7)
        axes[r, 0].set_ylabel(m, fontsize=8)
    fig.suptitle("PrivateTest faces: obfuscated | recovered by the U-Net | original", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| obfuscation | default model on obfuscated | trained on obfuscated | MAE obfuscated | MAE recovered "
            "| PSNR obf. / rec. (dB) | SSIM obf. / rec. | default model on recovered |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        q_o, q_r = r.get("quality_obfuscated") or {}, r.get("quality_recovered") or {}
        lines.append(
            f"| {r['method']} | {_fmt_pct(r['default_on_obfuscated']['accuracy'])} "
            f"| {_fmt_pct((r.get('trained_on_obfuscated') or {}).get('accuracy'))} "
            f"| {_fmt(q_o.get('mae_pct'), '.1f', '%')} | {_fmt(q_r.get('mae_pct'), '.1f', '%')} "
            f"| {_fmt(q_o.get('psnr_db'), '.1f')} / {_fmt(q_r.get('psnr_db'), '.1f')} "
            f"| {_fmt(q_o.get('ssim'), '.3f')} / {_fmt(q_r.get('ssim'), '.3f')} "
            f"| {_fmt_pct((r.get('default_on_recovered') or {}).get('accuracy'))} |")
    return head + "\n".join(lines) + "\n"


def settings_command(settings: ReportSettings, out: str | os.PathLike) -> str:
    """The ``ferkit privacy-report`` command line that reproduces a report with these settings."""
    import shlex

    parts = ["ferkit", "privacy-report", "--data", str(settings.data), "--out", str(out)]
    defaults = ReportSettings(data=settings.data)
    flags = {"model": "--model", "init": "--init", "arch": "--arch", "classifier_epochs": "--classifier-epochs",
             "classifier_lr": "--classifier-lr", "recovery_epochs": "--recovery-epochs",
             "recovery_base": "--recovery-base", "limit": "--limit", "seed": "--seed", "grid_faces": "--grid-faces",
             "threads": "--threads"}
    if list(settings.methods) != list(defaults.methods):
        parts += ["--methods", ",".join(settings.methods)]
    for name, flag in flags.items():
        value = getattr(settings, name)
        if value != getattr(defaults, name) and value is not None:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def render_markdown(report: dict[str, Any], command: str | None = None) -> str:
    s = report["settings"]
    rows = report["rows"]
    n_test = report["counts"]["test"]
    chance = report.get("majority_class_accuracy")
    out = ["# Privacy report: what a network still reads from obfuscated faces", ""]
    if command:
        out += ["Produced by:", "", "```", command, "```", ""]
    out += [
        f"FER2013 `{Path(s['data']).name}` (sha256 `{report['data_sha256'][:16]}…`), Usage split: classifiers and "
        f"recovery networks trained on Training ({report['counts']['train']} faces), selected on PublicTest "
        f"({report['counts']['val']}), scored on PrivateTest ({n_test}). Default model: `{s['model']}`"
        + (f" (`{report['model_file']['file']}`, sha256 `{report['model_file']['sha256'][:16]}…`). "
           if (report.get("model_file") or {}).get("sha256") else ". ")
        + "Classifiers on obfuscated faces: "
        + (f"fine-tuned from `{s['init']}`" if s.get("init") else f"`{s['arch']}` trained from scratch")
        + f" for {s['classifier_epochs']} epochs (recipe cpu-fast); recovery U-Net (base {s['recovery_base']}, "
        f"{report.get('recovery_parameters', 0) / 1e6:.2f} M parameters): {s['recovery_epochs']} epochs, L1 loss."
        + (f" Limited to the first {s['limit']} rows per split." if s.get("limit") else ""),
        "",
        "Pixelate N: mosaic cells of N x N pixels on the 48 x 48 face; blur N: Gaussian sigma N pixels; fill: "
        "a black box. MAE: mean absolute pixel error against the original, in % of 255 (the source project "
        "reported 2.4% for its recovery); PSNR in dB (peak 255); SSIM (Gaussian window, sigma 1.5). "
        "\"obf.\" compares the obfuscated face itself with the original; \"rec.\" the U-Net's output. "
        + (f"Always answering the most common Training class scores {_fmt_pct(chance)} on PrivateTest." if chance else ""),
        "",
        _table(rows),
        f"Wall time: {report.get('seconds_total', 0) / 60:.1f} min on {report.get('hardware', '?')}.",
        "",
    ]
    return "\n".join(out)


def privacy_report(settings: ReportSettings, out: str | os.PathLike, *, log: Callable[[str], None] | None = print,
                   command: str | None = None, keep_runs: bool = True) -> dict[str, Any]:
    """Run the experiment (see the module docstring) and write the report into ``out``. Returns the
    report as a dict. Methods already in ``out/privacy_report.json`` with the same settings are skipped."""
    import torch

    from ..data import prepare_splits
    from ..evaluate import load_model
    from .recovery import image_quality, recover, train_recovery

    log = log or (lambda _msg: None)
    obs = [parse_obfuscation(m) for m in settings.methods]
    if not obs:
        raise FerkitError("choose at least one obfuscation method")
    names = [o.name for o in obs]
    if len(set(names)) != len(names):
        raise FerkitError(f"obfuscation methods repeat: {', '.join(names)}")
    for what, v in (("classifier epochs", settings.classifier_epochs), ("recovery epochs", settings.recovery_epochs)):
        if v < 0:
            raise FerkitError(f"{what} must be >= 0 (0 skips that step), got {v}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / REPORT_JSON

    splits = prepare_splits(settings.data, label_set="fer7", split="usage", limit=settings.limit)
    lm = load_model(settings.model, threads=settings.threads)
    if tuple(lm.labels) != tuple(splits.labels):
        raise FerkitError(f"model {settings.model} predicts {list(lm.labels)}, but the report is on FER2013's 7 "
                          f"classes {list(splits.labels)}; choose a 7-class fer7 model")
    tr, va, te = splits.train, splits.val, splits.test
    if len(te) == 0 or len(va) == 0:
        raise FerkitError(f"{settings.data} has no PrivateTest or PublicTest rows; the report needs the Usage split")

    report: dict[str, Any] = {
        "format": FORMAT, "settings": settings.key(), "data_sha256": splits.info.get("data_sha256"),
        "counts": {"train": len(tr), "val": len(va), "test": len(te)},
        "majority_class_accuracy": float((te.labels == np.bincount(tr.labels).argmax()).mean()),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "rows": [], "seconds_total": 0.0,
    }
    if json_path.exists():
        old = json.loads(json_path.read_text())
        if old.get("format") == FORMAT and old.get("settings") == settings.key() and old.get("data_sha256") == report["data_sha256"]:
            report = old
            log(f"resuming {json_path}: {len(report['rows'])} row(s) done")
        else:
            log(f"{json_path} has other settings; starting over")
    done = {r["method"] for r in report["rows"]}
    if "model_file" not in report:
        report["model_file"] = _model_file_info(settings.model)

    rng = np.random.default_rng(settings.seed)
    grid_idx = np.sort(rng.choice(len(te), size=min(settings.grid_faces, len(te)), replace=False))
    samples: dict[str, dict[str, np.ndarray]] = {}
    t_all = time.perf_counter()

    seconds_before = float(report.get("seconds_total", 0.0))  # from an earlier, interrupted run

    def save():
        report["seconds_total"] = seconds_before + time.perf_counter() - t_all
        tmp = json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, json_path)

    # Reference row: clean faces.
    if "none" not in done:
        t0 = time.perf_counter()
        log("none: default model on clean PrivateTest faces")
        row: dict[str, Any] = {"method": "none", "default_on_obfuscated": _score(lm, te.images, te.labels)}
        if settings.classifier_epochs:
            run = _train_classifier(settings, None, out / "runs" / "cls-none", log)
            row["trained_on_obfuscated"] = _score(load_model(run, threads=settings.threads), te.images, te.labels)
            row["trained_run"] = str(run)
        row["seconds"] = time.perf_counter() - t0
        report["rows"].append(row)
        save()

    for ob in obs:
        if ob.name in done:
            log(f"{ob.name}: done already")
            continue
        test_ob = obfuscate_batch(te.images, ob.method, ob.strength)
        t0 = time.perf_counter()
        log(f"{ob.name}: default model on obfuscated PrivateTest faces")
        row = {"method": ob.name, "obfuscation": {"method": ob.method, "strength": ob.strength},
               "default_on_obfuscated": _score(lm, test_ob, te.labels),
               "quality_obfuscated": image_quality(test_ob, te.images)}
        if settings.classifier_epochs:
            log(f"{ob.name}: training a classifier on obfuscated faces")
            run = _train_classifier(settings, ob, out / "runs" / f"cls-{ob.name}", log)
            row["trained_on_obfuscated"] = _score(load_model(run, threads=settings.threads), test_ob, te.labels)
            row["trained_run"] = str(run)
        if settings.recovery_epochs:
            log(f"{ob.name}: training the recovery U-Net")
            res = train_recovery(obfuscate_batch(tr.images, ob.method, ob.strength), tr.images,
                                 obfuscate_batch(va.images, ob.method, ob.strength), va.images,
                                 epochs=settings.recovery_epochs, base=settings.recovery_base, seed=settings.seed,
                                 log=log)
            report["recovery_parameters"] = sum(p.numel() for p in res.model.parameters())
            rec = recover(res.model, test_ob)
            row["quality_recovered"] = image_quality(rec, te.images)
            row["default_on_recovered"] = _score(lm, rec, te.labels)
            row["recovery"] = {"best_epoch": res.best_epoch, "history": res.history, "seconds": res.seconds}
            np.savez_compressed(out / f"samples-{ob.name}.npz", obfuscated=test_ob[grid_idx], recovered=rec[grid_idx],
                                original=te.images[grid_idx])
        row["seconds"] = time.perf_counter() - t0
        report["rows"].append(row)
        save()
        log(f"{ob.name}: default {_fmt_pct(row['default_on_obfuscated']['accuracy'])}, trained "
            f"{_fmt_pct((row.get('trained_on_obfuscated') or {}).get('accuracy'))}, recovered MAE "
            f"{_fmt((row.get('quality_recovered') or {}).get('mae_pct'), '.2f')}%, default on recovered "
            f"{_fmt_pct((row.get('default_on_recovered') or {}).get('accuracy'))} ({row['seconds']:.0f} s)")

    save()
    order = ["none"] + names
    report["rows"].sort(key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))
    json_path.write_text(json.dumps(report, indent=1))
    for name in names:
        f = out / f"samples-{name}.npz"
        if f.exists():
            with np.load(f) as z:
                samples[name] = {k: z[k] for k in ("obfuscated", "recovered", "original")}
    if samples:
        _grid(samples, out / GRID_PNG, len(grid_idx))
    (out / REPORT_MD).write_text(render_markdown(report, command or settings_command(settings, out)))
    if not keep_runs and (out / "runs").exists():
        shutil.rmtree(out / "runs")
    return report
