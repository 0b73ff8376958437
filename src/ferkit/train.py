"""The training loop: one file, no framework; a reader sees every step of an epoch (needs torch).

``ferkit train`` is a thin shell over :func:`train`, which takes a :class:`TrainConfig` and returns the
run directory. What one run does, in order:

1. Settle the configuration (:func:`resolve_config`): ferkit's defaults < the architecture's literature
   recipe (its registry info) < a named recipe (``ferkit.recipes``) < what the caller set explicitly.
   Or, with ``resume``, take the run's saved configuration from ``last.pt``.
2. Start data parallelism if launched by ``torchrun`` (gloo on CPU, nccl on GPU); pick the device,
   precision (bf16 autocast on CPU, AMP on CUDA) and thread count.
3. Load the splits (``ferkit.data.prepare_splits``: train / val = PublicTest / test = PrivateTest, never
   used here) and convert train and val ONCE with ``ferkit.preprocess.prepare_faces``, the one
   preprocessing path; augmentation then works on those float tensors.
4. Build the network, optimiser, LR schedule and loss; restore them from ``last.pt`` (resume) or copy
   weights from another checkpoint (``init``, fine-tuning; a classifier head of the wrong size is replaced).
5. For each epoch: draw the epoch's shuffled (optionally re-balanced) index list from ``(seed, epoch)``,
   take this process's shard, and for each batch: set the LR, gather images, augment, mixup/CutMix,
   forward under autocast, loss, backward, optimiser step. Then evaluate on the validation split, step
   the plateau schedule, and (process 0 only) write ``best.pt`` when validation accuracy improved,
   ``last.pt`` atomically, ``metrics.json``/``metrics.csv`` and ``curves.png``.

The run directory follows the contract in ``ferkit.checkpoint``. Everything random is seeded from
``seed``: model init and dropout (torch's global generator), augmentation (its own generator) and the
epoch order (numpy, a pure function of seed and epoch). All generator states go into ``last.pt``, so a
killed run resumed with ``resume=True`` continues exactly where it stopped: on the CPU its weights and
history equal those of an uninterrupted run bit for bit.

Test hook: with the environment variable ``FERKIT_TEST_KILL_AFTER_EPOCH=k`` the process kills itself
(SIGKILL) right after writing the files of epoch ``k``, which simulates a crash at a known point.
"""
from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AUGMENT_PRESETS, Augmenter, AugmentConfig, mix_batch
from .checkpoint import load_checkpoint, save_checkpoint
from .data.balance import SAMPLING_MODES, WEIGHT_MODES, class_weights, epoch_indices, shard
from .data.ferplus import FERPLUS_MODES
from .errors import FerkitError
from .preprocess import PreprocessSpec, prepare_faces
from .recipes import get_recipe

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "plateau", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RUN_FILES = ("last.pt", "best.pt", "config.json", "metrics.json", "metrics.csv", "curves.png")
KILL_HOOK_ENV = "FERKIT_TEST_KILL_AFTER_EPOCH"


# --------------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means "not chosen": the value then comes from
    the recipe, the architecture's literature recipe or ferkit's defaults (see :func:`resolve_config`).

    Data: ``data`` (FER2013 CSV/.csv.gz or image-folder root), ``label_set`` (fer7, fer6, fer5,
    ferplus8), ``split`` ('usage': Training/PublicTest/PrivateTest; 'random': stratified 80/10/10 drawn
    with ``split_seed``), ``limit`` (first N rows per split), ``skip_bad``, ``ferplus`` (path of
    fer2013new.csv) with ``ferplus_mode`` ('majority' or 'soft' FER+ targets, or 'blend': FER2013's labels
    with the target softened towards the FER+ votes by ``ferplus_weight``), ``clean`` (rule names),
    ``teacher`` (an exported ``.onnx`` or bundled model name, or a list of them whose probabilities are
    averaged; trained on the same data and split) with
    ``teacher_weight``: distillation, the training target becomes ``(1 - teacher_weight) x target +
    teacher_weight x the teacher's probabilities`` (see :mod:`ferkit.distill`) and ``teacher_temperature``
    (each teacher's probabilities raised to ``1 / T`` and renormalised first, the same as dividing its logits
    by T: above 1 softer, below 1 sharper; 1 = as the teacher gives them) and ``teacher_mode`` ('fixed': the
    teachers see each clean Training image once, before training; 'consistent': they see every augmented
    batch the student sees, :class:`ferkit.distill.ConsistentTeacher`, slower),
    ``preprocess`` (``PreprocessSpec`` fields), ``obfuscate`` (e.g. ``"pixelate-8"``, ``"blur-2"``,
    ``"fill"``: every train and val face is obfuscated with :mod:`ferkit.privacy.obfuscate` before
    training, for the privacy experiment).
    Optimisation: ``epochs`` (or ``time_budget``: minutes of training on this machine; a few timed
    steps before the run decide how many epochs fit, see :func:`budget_epochs`, at most ``max_epochs`` if
    given), ``stop_by`` (a wall-clock
    deadline, ``"HH:MM"`` today or ``"YYYY-MM-DD HH:MM"``, local time: after each epoch, with its files
    written, the run stops if one more epoch as long as the last would end after it; the schedule keeps its
    planned length, so ``resume`` continues the same run), ``save_every`` (seconds: write the run's files
    (last.pt, best.pt, metrics, curves) after an epoch only if this long has passed since they were last
    written, and always after the last epoch; the best epoch's weights wait in memory until then; 0, the
    default, writes them after every epoch. For short epochs on a GPU: gudi's run on an H200 took 363 s for
    234 s of epochs, the rest in start-up and in writing 0.7 GB of checkpoints after every epoch), ``batch_size
    (global: split across data-parallel processes),
    ``optimizer`` (adam, adamw, sgd), ``lr`` (peak), ``momentum``, ``nesterov``, ``weight_decay``
    (not applied to biases and norm parameters), ``schedule`` (constant, plateau, cosine, onecycle),
    ``schedule_params`` (plateau: factor, patience, mode max|min, min_lr; cosine: min_lr; onecycle:
    div_factor, final_div_factor, pct_start), ``warmup_epochs`` (linear warm-up, may be fractional),
    ``label_smoothing``, ``grad_clip`` (max gradient norm, 0 = off), ``ema`` (decay of an exponential
    moving average of the weights, updated after every step, e.g. 0.999; 0 = off: with it on, validation,
    best-epoch selection and the saved ``model`` weights use the average), ``class_weights`` (none, balanced,
    sqrt), ``sampling`` (none, over, under) with ``sample_cap`` (a count, or {class name: count}),
    ``augment`` (a preset name from ``ferkit.augment.AUGMENT_PRESETS`` or a dict of ``AugmentConfig``
    fields, optionally with ``"preset"``).
    Runtime: ``precision`` (auto = bf16 autocast on a CPU that supports it, bf16/fp16 AMP on CUDA),
    ``channels_last``, ``device`` (auto, cpu, cuda, cuda:N), ``threads`` (per process; default: the
    usable cores divided among local processes), ``compile`` (torch.compile), ``progress`` (tqdm bar).
    Run: ``out`` (run directory), ``resume`` (continue ``out/last.pt``), ``init`` (checkpoint or run
    directory to fine-tune from), ``overwrite`` (replace an existing run in ``out``).
    """

    data: str | None = None
    out: str | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    recipe: str | None = None
    label_set: str | None = None
    split: str | None = None
    split_seed: int | None = None
    seed: int | None = None
    limit: int | None = None
    skip_bad: bool | None = None
    ferplus: str | None = None
    ferplus_mode: str | None = None
    ferplus_weight: float | None = None
    ferplus_protocol: str | None = None
    teacher: str | list[str] | None = None
    teacher_weight: float | None = None
    teacher_temperature: float | None = None
    teacher_mode: str | None = None
    clean: list[str] | None = None
    obfuscate: str | None = None
    preprocess: dict[str, Any] | None = None
    epochs: int | None = None
    time_budget: float | None = None
    max_epochs: int | None = None
    stop_by: str | None = None
    save_every: float | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    schedule_params: dict[str, Any] | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    grad_clip: float | None = None
    ema: float | None = None
    class_weights: str | None = None
    sampling: str | None = None
    sample_cap: int | dict[str, int] | None = None
    augment: str | dict[str, Any] | None = None
    precision: str | None = None
    channels_last: bool | None = None
    device: str | None = None
    threads: int | None = None
    compile: bool | None = None
    progress: bool | None = None
    resume: bool | None = None
    init: str | None = None
    overwrite: bool | None = None


TEACHER_MODES = ("fixed", "consistent")

DEFAULTS: dict[str, Any] = {
    "arch_kwargs": {}, "label_set": "fer7", "split": "usage", "split_seed": 0, "seed": 0, "skip_bad": False,
    "preprocess": {}, "epochs": 30, "batch_size": 64, "eval_batch_size": 512, "optimizer": "adamw",
    "lr": 1e-3, "momentum": 0.9, "nesterov": False, "weight_decay": 0.01, "schedule": "cosine",
    "schedule_params": {}, "warmup_epochs": 0.0, "label_smoothing": 0.0, "grad_clip": 0.0, "ema": 0.0,
    "class_weights": "none", "sampling": "none", "augment": "standard", "precision": "auto",
    "channels_last": True, "device": "auto", "compile": False, "progress": True, "resume": False,
    "overwrite": False, "obfuscate": None, "ferplus_weight": 0.5, "teacher": None, "teacher_weight": 0.5,
    "teacher_temperature": 1.0, "teacher_mode": "fixed",
    "time_budget": None, "max_epochs": None, "stop_by": None, "save_every": 0.0,
}

# Fields that may change when a run is resumed (they do not change what is being trained).
RESUME_OVERRIDABLE = {"epochs", "device", "threads", "progress", "compile", "eval_batch_size", "precision",
                      "channels_last", "resume", "out", "overwrite", "stop_by", "save_every",
                      "data", "ferplus"}  # another path to the same files (a pack, a copy): their sha256 is checked

# Registry-info keys of an architecture that are training settings (see ferkit.models.register_model).
_ARCH_SETTING_KEYS = ("label_set", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "batch_size",
                      "epochs", "split", "schedule_params", "warmup_epochs", "label_smoothing", "grad_clip",
                      "class_weights", "sampling", "sample_cap", "arch_kwargs", "preprocess")
_CLEAN_RULE_NAMES = {"histogram_max_bin": "histogram", "histogram": "histogram", "blank": "blank",
                     "duplicates": "duplicates"}
_SCHEDULE_PARAM_KEYS = {
    "constant": set(), "cosine": {"min_lr"}, "onecycle": {"div_factor", "final_div_factor", "pct_start"},
    "plateau": {"factor", "patience", "mode", "min_lr", "threshold"},
}


def _settings_from_arch_info(info: dict[str, Any]) -> dict[str, Any]:
    """Map an architecture's registry info (its source's recipe) onto TrainConfig fields."""
    out = {k: info[k] for k in _ARCH_SETTING_KEYS if info.get(k) is not None}
    if "schedule" in info:  # the literature recipes without a schedule used a constant learning rate
        out["schedule"] = info["schedule"] or "constant"
    if info.get("augment") is not None:
        out["augment"] = info["augment"]
    clean = info.get("clean")
    if isinstance(clean, str):
        out["clean"] = [clean]
    elif isinstance(clean, (list, tuple)):
        out["clean"] = list(clean)
    elif isinstance(clean, dict):
        rules = [_CLEAN_RULE_NAMES.get(k, k) for k in clean if k != "undersample" and clean[k]]
        if rules:
            out["clean"] = rules
        if clean.get("undersample"):
            out["sampling"] = "under"
            out["sample_cap"] = dict(clean["undersample"])
    return out


def _merge_augment(base: dict[str, Any], layer: str | dict[str, Any] | None) -> dict[str, Any]:
    """One layer of augmentation settings on top of ``base``: a preset name replaces everything; a
    dict with ``"preset"`` starts from that preset; a dict without one edits ``base``."""
    if layer is None:
        return base
    if isinstance(layer, str):
        layer = {"preset": layer}
    layer = dict(layer)
    if "preset" in layer:
        name = layer.pop("preset")
        if name not in AUGMENT_PRESETS:
            raise FerkitError(f"unknown augmentation preset {name!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
        base = {**AugmentConfig().to_dict(), **AUGMENT_PRESETS[name]}
    return {**base, **layer}


def canonical_teacher(teacher: str | list[str] | tuple[str, ...] | None) -> str | list[str] | None:
    """One teacher as its name, several as a list: how a run saves them, whichever way they were given."""
    if isinstance(teacher, (list, tuple)):
        return str(teacher[0]) if len(teacher) == 1 else [str(t) for t in teacher]
    return teacher


def resolve_config(config: TrainConfig) -> TrainConfig:
    """The concrete configuration of a new run: every field decided and checked.

    Precedence: ferkit's DEFAULTS < architecture registry info < named recipe < explicit fields.
    Raises FerkitError for unknown names and impossible combinations.
    """
    from .models import model_info

    given = {k: v for k, v in asdict(config).items() if v is not None}
    recipe = dict(get_recipe(given["recipe"]).settings) if given.get("recipe") else {}
    if "time_budget" in given and "epochs" in given:
        raise FerkitError("--time-budget chooses the number of epochs: drop --epochs (or --time-budget), or cap "
                          "the budget's choice with --max-epochs")
    if "max_epochs" in given and "time_budget" not in given:
        raise FerkitError("--max-epochs caps the epochs that --time-budget chooses; without --time-budget, use --epochs")

    init_meta = None
    if given.get("init"):
        init_meta = load_checkpoint(given["init"], "best")
    arch = given.get("arch") or recipe.get("arch") or (init_meta or {}).get("arch")
    if not arch:
        raise FerkitError("choose an architecture with --arch NAME (or a --recipe that names one); `ferkit models` lists them")
    if init_meta is not None and init_meta["arch"] != arch:
        raise FerkitError(f"--init checkpoint {init_meta['path']} holds a {init_meta['arch']!r} network, not {arch!r}; "
                          f"drop --arch or pick a checkpoint of that architecture")
    arch_settings = _settings_from_arch_info(model_info(arch))  # raises for an unknown architecture

    merged: dict[str, Any] = {**DEFAULTS}
    augment: dict[str, Any] = _merge_augment({}, DEFAULTS["augment"])
    for layer in (arch_settings, recipe, given):
        augment = _merge_augment(augment, layer.get("augment"))
        merged.update({k: v for k, v in layer.items() if k != "augment"})
    merged["arch"] = arch
    merged["augment"] = AugmentConfig.from_dict(augment).to_dict()
    if "sampling" in given and "sample_cap" not in given:  # an explicit sampling mode drops an inherited cap
        merged["sample_cap"] = None
    lone = [k for k in ("teacher_weight", "teacher_temperature", "teacher_mode") if k in given]
    if lone and not merged.get("teacher"):
        raise FerkitError(f"--{lone[0].replace('_', '-')} shapes the teacher's part of the target: it needs --teacher MODEL")
    if init_meta is not None:
        merged["arch_kwargs"] = {**init_meta.get("arch_kwargs", {}), **given.get("arch_kwargs", {})}
        if "preprocess" not in given:
            merged["preprocess"] = dict(init_meta.get("preprocess") or {})
    if merged.get("ferplus"):
        merged.setdefault("ferplus_mode", None)
        merged["ferplus_mode"] = merged["ferplus_mode"] or "majority"
        if "label_set" not in given and merged["ferplus_mode"] != "blend":
            merged["label_set"] = "ferplus8"
    if "ferplus_weight" in given and merged.get("ferplus_mode") != "blend":
        raise FerkitError("--ferplus-weight sets how much the FER+ votes weigh against FER2013's label: it needs "
                          "--ferplus PATH --ferplus-mode blend")
    cfg = TrainConfig(**{f.name: merged.get(f.name) for f in fields(TrainConfig)})
    _check_config(cfg)
    return cfg


def _check_config(cfg: TrainConfig) -> None:
    def bad(msg: str) -> None:
        raise FerkitError(msg)

    if not cfg.out:
        bad("choose a run directory with --out DIR")
    if not cfg.data:
        bad("choose the training data with --data PATH (fer2013.csv[.gz] or an image-folder root)")
    if cfg.obfuscate:
        from .privacy.obfuscate import parse_obfuscation

        parse_obfuscation(cfg.obfuscate)  # a FerkitError names what is wrong
    if cfg.optimizer not in OPTIMIZERS:
        bad(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if cfg.schedule not in SCHEDULES:
        bad(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    unknown = set(cfg.schedule_params or {}) - _SCHEDULE_PARAM_KEYS[cfg.schedule]
    if unknown:
        bad(f"schedule {cfg.schedule!r} takes no parameters {sorted(unknown)}; it knows {sorted(_SCHEDULE_PARAM_KEYS[cfg.schedule])}")
    if cfg.precision not in PRECISIONS:
        bad(f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if cfg.class_weights not in WEIGHT_MODES:
        bad(f"unknown class-weight mode {cfg.class_weights!r}; choose one of {', '.join(WEIGHT_MODES)}")
    if cfg.sampling not in SAMPLING_MODES:
        bad(f"unknown sampling mode {cfg.sampling!r}; choose one of {', '.join(SAMPLING_MODES)}")
    if cfg.sample_cap is not None and cfg.sampling == "none":
        bad("--sample-cap needs --sampling over or under")
    if cfg.split not in ("usage", "random"):
        bad(f"unknown split method {cfg.split!r}; use 'usage' or 'random'")
    for name in ("seed", "split_seed"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 0):
            bad(f"--{name.replace('_', '-')} must be a whole number >= 0, got {value!r}")
    from .models import check_model_options

    check_model_options(cfg.arch, cfg.arch_kwargs or {})
    if cfg.nesterov and (cfg.optimizer != "sgd" or not cfg.momentum):
        bad(f"Nesterov momentum needs --optimizer sgd with --momentum > 0 (got {cfg.optimizer}, momentum {cfg.momentum})")
    if cfg.ferplus_mode is not None and cfg.ferplus_mode not in FERPLUS_MODES:
        bad(f"unknown FER+ mode {cfg.ferplus_mode!r}; choose one of {', '.join(FERPLUS_MODES)}")
    if cfg.ferplus_mode is not None and not cfg.ferplus:
        if cfg.recipe and "ferplus_mode" in get_recipe(cfg.recipe).settings:
            bad(f"recipe {cfg.recipe!r} learns from the FER+ votes: add --ferplus PATH (the fer2013new.csv file)")
        bad("--ferplus-mode needs --ferplus PATH (the fer2013new.csv file)")
    if cfg.ferplus_mode == "blend" and cfg.label_set == "ferplus8":
        bad("--ferplus-mode blend keeps FER2013's labels: use it with --label-set fer7, fer6 or fer5")
    if cfg.ferplus_protocol is not None:
        from .data.ferplus import FERPLUS_PROTOCOLS
        if cfg.ferplus_protocol not in FERPLUS_PROTOCOLS:
            bad(f"unknown FER+ protocol {cfg.ferplus_protocol!r}; choose one of {', '.join(FERPLUS_PROTOCOLS)}")
        if not cfg.ferplus:
            bad("--ferplus-protocol needs --ferplus PATH (the fer2013new.csv file)")
    if cfg.ferplus_weight is not None and not 0 <= cfg.ferplus_weight <= 1:
        bad(f"--ferplus-weight must lie in [0, 1], got {cfg.ferplus_weight}")
    if cfg.teacher_weight is not None and not 0 <= cfg.teacher_weight <= 1:
        bad(f"--teacher-weight must lie in [0, 1], got {cfg.teacher_weight}")
    if cfg.teacher_temperature is not None and not (0 < cfg.teacher_temperature < float("inf")):
        bad(f"--teacher-temperature must be a number > 0, got {cfg.teacher_temperature}")
    if cfg.teacher_mode is not None and cfg.teacher_mode not in TEACHER_MODES:
        bad(f"unknown --teacher-mode {cfg.teacher_mode!r}; choose one of {', '.join(TEACHER_MODES)}")
    if cfg.teacher:
        from .distill import teacher_list
        from .runtime import resolve_model_path

        for t in teacher_list(cfg.teacher):
            resolve_model_path(t)  # a FerkitError names a missing file early, before the data loads
    checks = [
        (isinstance(cfg.epochs, int) and cfg.epochs >= 1, f"epochs must be a whole number >= 1, got {cfg.epochs}"),
        (isinstance(cfg.batch_size, int) and cfg.batch_size >= 2, f"batch size must be >= 2, got {cfg.batch_size}"),
        (cfg.eval_batch_size >= 1, f"eval batch size must be >= 1, got {cfg.eval_batch_size}"),
        (cfg.lr > 0, f"learning rate must be > 0, got {cfg.lr}"),
        (0 <= cfg.momentum < 1, f"momentum must lie in [0, 1), got {cfg.momentum}"),
        (cfg.weight_decay >= 0, f"weight decay must be >= 0, got {cfg.weight_decay}"),
        (0 <= cfg.label_smoothing < 1, f"label smoothing must lie in [0, 1), got {cfg.label_smoothing}"),
        (0 <= cfg.warmup_epochs < cfg.epochs, f"warm-up epochs must lie in [0, epochs={cfg.epochs}), got {cfg.warmup_epochs}"),
        (cfg.grad_clip >= 0, f"gradient clipping norm must be >= 0, got {cfg.grad_clip}"),
        (0 <= cfg.ema < 1, f"--ema (weight-average decay) must lie in [0, 1), got {cfg.ema}"),
        (cfg.limit is None or cfg.limit >= 1, f"--limit must be >= 1, got {cfg.limit}"),
        (cfg.time_budget is None or (isinstance(cfg.time_budget, (int, float)) and math.isfinite(cfg.time_budget)
                                     and cfg.time_budget > 0),
         f"--time-budget must be a positive number of minutes, got {cfg.time_budget}"),
        (cfg.max_epochs is None or cfg.max_epochs >= 1, f"--max-epochs must be >= 1, got {cfg.max_epochs}"),
        (isinstance(cfg.save_every, (int, float)) and math.isfinite(cfg.save_every) and cfg.save_every >= 0,
         f"--save-every must be a number of seconds >= 0, got {cfg.save_every}"),
        (cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}"),
    ]
    for ok, msg in checks:
        if not ok:
            bad(msg)
    if not (cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:")):
        bad(f"unknown device {cfg.device!r}; use auto, cpu, cuda or cuda:N")
    PreprocessSpec.from_dict(cfg.preprocess)  # raises for unknown fields
    if cfg.stop_by is not None:
        parse_deadline(cfg.stop_by)  # raises for a malformed or past deadline


def _clock() -> float:
    """Wall-clock time for --stop-by (a seam for tests)."""
    return time.time()


def parse_deadline(text: str, now: float | None = None, *, allow_past: bool = False) -> float:
    """``--stop-by``: ``"HH:MM"`` (today) or ``"YYYY-MM-DD HH:MM"`` / ISO 8601, local time unless it names
    a UTC offset -> a POSIX timestamp. Raises FerkitError when it is malformed or (unless ``allow_past``:
    the training loop reads the deadline checked at the start) not in the future."""
    from datetime import datetime

    now = time.time() if now is None else now
    raw = str(text).strip()
    try:
        if len(raw) <= 5 and ":" in raw:
            hh, mm = raw.split(":")
            if not (hh.isdigit() and mm.isdigit() and len(mm) == 2):
                raise ValueError(raw)
            today = datetime.fromtimestamp(now).astimezone()
            at = today.replace(hour=int(hh), minute=int(mm), second=0, microsecond=0)
        else:
            at = datetime.fromisoformat(raw)
            if at.tzinfo is None:
                at = at.astimezone()  # a naive time is local time
    except ValueError:
        raise FerkitError(f"--stop-by takes HH:MM (today) or YYYY-MM-DD HH:MM, local time; got {text!r}") from None
    ts = at.timestamp()
    if ts <= now and not allow_past:
        raise FerkitError(f"--stop-by {text} is already past ({at.isoformat(timespec='minutes')}); give a later time, "
                          "or a date for a deadline on another day")
    return ts


def _resume_config(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """The saved configuration of ``config.out``'s run plus the allowed runtime overrides, and last.pt."""
    if config.init:
        raise FerkitError("--init starts a new run from a checkpoint; --resume continues a run: use one of them")
    if config.overwrite:
        raise FerkitError("--resume continues the run in --out; --overwrite replaces it: use one of them")
    if not config.out:
        raise FerkitError("--resume needs --out RUN_DIR (the run to continue)")
    last = Path(config.out) / "last.pt"
    if not last.is_file():
        raise FerkitError(f"nothing to resume: {last} does not exist (start the run without --resume)")
    ckpt = load_checkpoint(last, "last")
    saved = dict(ckpt["config"])
    saved["teacher"] = canonical_teacher(saved.get("teacher"))
    for k, v in DEFAULTS.items():  # a setting added after the run was started: the run used its default
        saved.setdefault(k, v)
    given = asdict(config)
    if given.get("augment") is not None:  # a preset name or edits, as given: compare what they resolve to
        given["augment"] = AugmentConfig.from_dict(_merge_augment(dict(saved["augment"]), given["augment"])).to_dict()
    for k, v in given.items():
        if v is not None and k not in RESUME_OVERRIDABLE and v != saved.get(k):
            raise FerkitError(f"--resume continues {config.out} with its saved settings; {k} was {saved.get(k)!r} "
                              f"there, not {v!r}: drop that option (or start a new run with another --out)")
    if config.epochs is not None and config.epochs != saved.get("epochs") and saved.get("schedule") in ("cosine", "onecycle"):
        print(f"ferkit: note: --resume --epochs {config.epochs}: this run's {saved['schedule']} learning-rate schedule "
              f"was planned over {saved.get('epochs')} epochs and is now re-planned over {config.epochs} (the rate jumps "
              f"where the run goes on), so the run will differ from one trained for {config.epochs} epochs from the "
              "start; constant and plateau schedules do not depend on --epochs", file=sys.stderr)
    for k in RESUME_OVERRIDABLE:
        v = getattr(config, k)
        if v is not None:
            saved[k] = v
    saved["resume"], saved["out"] = True, str(config.out)
    saved["stop_by"] = config.stop_by  # a deadline belongs to one invocation, not to the run
    cfg = TrainConfig(**{f.name: saved.get(f.name) for f in fields(TrainConfig)})
    _check_config(cfg)
    return cfg, ckpt


# ------------------------------------------------------------------------------------ LR schedule
class LRSchedule:
    """The learning rate as a function of the optimiser step (and, for ``plateau``, of validation).

    constant / plateau / cosine: linear warm-up over ``warmup_epochs`` from lr/steps to lr, then
    constant, reduced by ``factor`` after ``patience`` epochs without improvement (plateau), or a
    half-cosine down to ``min_lr`` at the last step (cosine). onecycle: cosine rise from
    lr/``div_factor`` to lr over the warm-up (``warmup_epochs``, else ``pct_start`` of the run), then
    cosine decay to lr/(div_factor*final_div_factor).
    """

    def __init__(self, kind: str, lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float,
                 params: dict[str, Any] | None = None):
        p = dict(params or {})
        self.kind, self.base_lr = kind, lr
        self.total = max(1, steps_per_epoch * epochs)
        if kind == "onecycle" and not warmup_epochs:
            self.warmup = int(round(float(p.get("pct_start", 0.3)) * self.total))
        else:
            self.warmup = int(round(warmup_epochs * steps_per_epoch))
        self.min_lr = float(p.get("min_lr", 0.0))
        self.div, self.final_div = float(p.get("div_factor", 25.0)), float(p.get("final_div_factor", 1e4))
        self.factor, self.patience = float(p.get("factor", 0.5)), int(p.get("patience", 5))
        self.mode, self.threshold = p.get("mode", "max"), float(p.get("threshold", 1e-4))
        if self.mode not in ("max", "min") or not 0 < self.factor < 1:
            raise FerkitError("plateau schedule: mode must be 'max' (val accuracy) or 'min' (val loss), 0 < factor < 1")
        # plateau state (saved in checkpoints)
        self.scale, self.best, self.bad_epochs = 1.0, None, 0

    def lr_at(self, step: int) -> float:
        if self.kind == "onecycle":
            lo, end = self.base_lr / self.div, self.base_lr / (self.div * self.final_div)
            if step < self.warmup:
                return lo + (self.base_lr - lo) * (1 - math.cos(math.pi * step / self.warmup)) / 2
            t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup - 1))
            return end + (self.base_lr - end) * (1 + math.cos(math.pi * t)) / 2
        if step < self.warmup:
            return self.base_lr * self.scale * (step + 1) / self.warmup
        if self.kind == "cosine":
            t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup - 1))
            return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t)) / 2
        if self.kind == "plateau":
            return max(self.base_lr * self.scale, self.min_lr)
        return self.base_lr

    def epoch_end(self, val_acc: float, val_loss: float) -> bool:
        """Plateau bookkeeping after an epoch's validation; True when the LR was just reduced."""
        if self.kind != "plateau":
            return False
        value = val_acc if self.mode == "max" else -val_loss
        if self.best is None or value > self.best + self.threshold:
            self.best, self.bad_epochs = value, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.scale *= self.factor
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]


# ------------------------------------------------------------------------------- runtime helpers
@dataclass
class Runtime:
    """Where this process runs: device, precision, data-parallel rank and world size."""

    device: torch.device
    precision: str  # fp32, bf16 or fp16 (resolved from 'auto')
    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    threads: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def _cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _setup_runtime(cfg: TrainConfig) -> Runtime:
    """Device, precision, threads; joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FerkitError("--device cuda was asked for but this torch sees no CUDA GPU; use --device cpu or auto")
        device = torch.device(f"cuda:{local_rank}" if world > 1 and want == "cuda" else want)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            # torch._dynamo (imported by DistributedDataParallel) keeps references to a process group that exists
            # when it is first imported, so destroy_process_group could not free the group: gloo's worker threads
            # then outlived the run and could take the GIL during interpreter shutdown to release a collective's
            # tensors, which aborts the process ("terminate called without an active exception", a few runs in
            # a hundred on a busy CPU). Imported before the group exists, it holds none: destroy_process_group (in
            # train()) then frees the group, and its threads are joined before train() returns.
            importlib.import_module("torch._dynamo")

            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    threads = cfg.threads or max(1, cores // max(1, local_world))
    torch.set_num_threads(threads)
    notes = []
    precision = cfg.precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if _cpu_supports_bf16() else "fp32"
            if precision == "fp32":
                notes.append("this CPU has no fast bf16 (AVX512-BF16 or AMX), so training runs in float32: "
                             "expect epochs several times longer than the figures in ferkit's docs, measured "
                             "with bf16 (--time-budget MINUTES fits the epochs to this machine)")
    if precision == "fp16" and device.type != "cuda":
        raise FerkitError("fp16 mixed precision needs a CUDA GPU; on the CPU use --precision bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not _cpu_supports_bf16():
        notes.append("this CPU has no fast bf16: autocast will be slow; consider --precision fp32")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return Runtime(device, precision, rank, world, local_world, threads, notes)


def _load_splits(cfg: TrainConfig):
    """``prepare_splits`` with the options this config uses; a clear error when the installed
    ``prepare_splits`` does not know an option yet (FER+, cleaning)."""
    import inspect

    from .data import prepare_splits

    kwargs: dict[str, Any] = {"label_set": cfg.label_set, "split": cfg.split, "seed": cfg.split_seed,
                              "skip_bad": cfg.skip_bad, "limit": cfg.limit}
    optional = {"ferplus": cfg.ferplus, "ferplus_mode": cfg.ferplus_mode if cfg.ferplus else None,
                "ferplus_weight": cfg.ferplus_weight if cfg.ferplus_mode == "blend" else None,
                "ferplus_protocol": cfg.ferplus_protocol if cfg.ferplus else None,
                "clean": list(cfg.clean) if cfg.clean else None}
    known = inspect.signature(prepare_splits).parameters
    for name, value in optional.items():
        if value is None:
            continue
        if name not in known:
            raise FerkitError(f"this ferkit's data loader does not support the {name!r} option yet "
                              f"(asked for {name}={value!r}); drop it or update ferkit")
        kwargs[name] = value
    splits = prepare_splits(cfg.data, **kwargs)
    if len(splits.train) < 2:
        raise FerkitError(f"the training split of {cfg.data} has {len(splits.train)} images; at least 2 are needed")
    if len(splits.val) < 1:
        raise FerkitError(f"the validation split of {cfg.data} is empty; validation (PublicTest or the random "
                          f"split's val part) is needed to select the best epoch")
    return splits


def _sample_caps(cfg: TrainConfig, labels: tuple[str, ...]) -> int | dict[int, int] | None:
    """``sample_cap`` with class names turned into class ids of this label set."""
    cap = cfg.sample_cap
    if not isinstance(cap, dict):
        return cap
    out = {}
    for name, n in cap.items():
        if name not in labels:
            raise FerkitError(f"--sample-cap names class {name!r}, which is not in this label set ({', '.join(labels)})")
        out[labels.index(name)] = int(n)
    return out


def _head_keys(state: dict[str, torch.Tensor], num_classes: int) -> list[str]:
    """The classifier head: the trailing parameters whose first dimension is the class count."""
    keys = []
    for k in reversed(list(state)):
        if state[k].ndim >= 1 and state[k].shape[0] == num_classes:
            keys.append(k)
        elif keys:
            break
    return keys


def _init_from_checkpoint(model: torch.nn.Module, ckpt: dict[str, Any], labels: tuple[str, ...]) -> str:
    """Copy a checkpoint's weights into ``model`` for fine-tuning. The classifier head is kept only when
    the label list is the same; otherwise it keeps ``model``'s fresh initialisation. Returns a note."""
    own = model.state_dict()
    src = ckpt["model"]
    fresh: list[str] = []
    if list(ckpt.get("labels", [])) != list(labels):
        fresh = _head_keys(src, int(ckpt["num_classes"]))
    mismatched = [k for k in src if k in own and k not in fresh and src[k].shape != own[k].shape]
    if mismatched:
        raise FerkitError(f"--init checkpoint {ckpt['path']} does not fit this network: {mismatched[:3]} differ in "
                          f"shape (other arch options?)")
    missing = [k for k in own if k not in src]
    if missing:
        raise FerkitError(f"--init checkpoint {ckpt['path']} lacks {missing[:3]}: not the same architecture")
    model.load_state_dict({k: (own[k] if k in fresh else src[k]) for k in own})
    if fresh:
        return (f"fine-tuning from {ckpt['path']}: classifier head {fresh} replaced "
                f"({ckpt['num_classes']} classes {list(ckpt.get('labels', []))} -> {len(labels)} {list(labels)})")
    return f"fine-tuning from {ckpt['path']}: all weights copied"


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and conv kernels only (not on biases and norm scales/shifts)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=bool(cfg.nesterov))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _rng_state(gen: torch.Generator, rt: Runtime) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None,
        "augment": gen.get_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any], gen: torch.Generator, rt: Runtime) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and rt.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], rt.device)
    gen.set_state(state["augment"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _all_reduce_sum(values: list[float], rt: Runtime) -> list[float]:
    if rt.world_size == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


class WeightAverage:
    """An exponential moving average of a network's weights (and batch-norm statistics), updated after
    every optimiser step: ``avg <- d * avg + (1 - d) * weights``. The decay ramps up as
    ``min(decay, (1 + step) / (10 + step))`` so that the random initial weights fade fast; it depends on the
    global step only, so a resumed run computes the same average as an uninterrupted one."""

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        avg, cur = [], []
        for a, c in zip(self.model.state_dict().values(), model.state_dict().values()):
            if a.dtype.is_floating_point:
                avg.append(a)
                cur.append(c.detach())
            else:
                a.copy_(c)  # counters such as num_batches_tracked
        torch._foreach_lerp_(avg, cur, 1.0 - d)


# ------------------------------------------------------------------------------------ time budget
BUDGET_WARMUP_STEPS = 2  # untimed steps first (allocator, oneDNN kernels)
BUDGET_TIMED_STEPS = 8
BUDGET_EPOCH_OVERHEAD_S = 1.0  # per epoch besides training and validation: checkpoints, metrics, curves
BUDGET_MARGIN = 0.97  # the epochs are planned to fill this fraction of the budget


def budget_epochs(minutes: float, epoch_seconds: float, margin: float = BUDGET_MARGIN) -> int:
    """How many whole epochs of ``epoch_seconds`` fit in ``margin`` x ``minutes`` (0 when none does)."""
    if minutes <= 0 or epoch_seconds <= 0:
        raise FerkitError(f"a time budget needs positive minutes and epoch seconds, got {minutes}, {epoch_seconds}")
    return int(minutes * 60.0 * margin // epoch_seconds)


def _optimisation_step(cfg: TrainConfig, rt: Runtime, train_model: torch.nn.Module, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer, scaler, ema: "WeightAverage | None", x: torch.Tensor,
                       y: torch.Tensor, target: torch.Tensor | None, weight: torch.Tensor | None,
                       ema_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One step on a prepared batch: memory format, forward under autocast, loss in float32, backward (scaled
    under fp16), gradient clipping, optimiser step, weight average. ``train_model`` is what runs forward (the
    data-parallel or compiled wrapper), ``model`` the network whose gradients are clipped and averaged.
    Returns (float32 logits, loss)."""
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with rt.autocast():
        logits = train_model(x)
    logits = logits.float()
    loss = F.cross_entropy(logits, y if target is None else target, weight=weight,
                           label_smoothing=cfg.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
    if ema is not None:
        ema.update(model, ema_step)
    return logits, loss


def _consistent_target(teach, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                       weight: float) -> torch.Tensor:
    """``(1 - weight) x target (one-hot y if None) + weight x the teachers' probabilities on x``."""
    probs = teach(x)
    base = target.float() if target is not None else F.one_hot(y, probs.shape[1]).float()
    return (1 - weight) * base + weight * probs


def _measure_epoch(cfg: TrainConfig, rt: Runtime, model: torch.nn.Module, augmenter: Augmenter,
                   train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                   batch: int, steps_per_epoch: int, teach=None) -> dict[str, float]:
    """Time this run's epoch on this machine, before the run starts (for ``--time-budget``).

    A copy of the network takes ``BUDGET_WARMUP_STEPS`` + ``BUDGET_TIMED_STEPS`` training steps through the
    run's own :func:`_optimisation_step` (same batch size, augmentation, precision, memory format, optimiser,
    clipping and weight average, and the teachers' calls with consistent teaching; no mixing, no class
    weights) on random Training batches, then :func:`evaluate_tensors` over up to 1,024 validation images a process is timed
    and scaled to the split.
    The run's own network, optimiser and random streams are left exactly as they were, so a budgeted
    run is the same run as one started with ``--epochs`` set to the number it chose. Under data-parallel
    training the processes' measures are averaged, so that all of them plan the same epochs."""
    import copy

    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if rt.device.type == "cuda" else None
    probe = copy.deepcopy(model).train()
    opt = _make_optimizer(cfg, probe)
    avg = WeightAverage(probe, cfg.ema) if cfg.ema else None
    gen = torch.Generator().manual_seed(2_147_483_647)

    def sync() -> None:
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)

    scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" else None

    def step() -> None:
        idx = torch.randint(0, len(train_y), (batch,), generator=gen).to(train_x.device)
        x, y = augmenter(train_x[idx], gen), train_y[idx]
        target = None if teach is None else _consistent_target(teach, x, y, None, cfg.teacher_weight)
        _optimisation_step(cfg, rt, probe, probe, opt, scaler, avg, x, y, target, None, 0)

    for _ in range(BUDGET_WARMUP_STEPS):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(BUDGET_TIMED_STEPS):
        step()
    sync()
    step_s = (time.perf_counter() - t0) / BUDGET_TIMED_STEPS

    k = min(len(val_y), 1024 * rt.world_size)
    t0 = time.perf_counter()
    evaluate_tensors(probe, val_x[:k], val_y[:k], rt, cfg.eval_batch_size, cfg.channels_last)
    sync()
    val_s = (time.perf_counter() - t0) * len(val_y) / k * (2 if cfg.ema else 1)  # the average and the trained weights

    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    step_s, val_s = (v / rt.world_size for v in _all_reduce_sum([step_s, val_s], rt))
    epoch_s = steps_per_epoch * step_s + val_s + BUDGET_EPOCH_OVERHEAD_S
    return {"step_s": step_s, "validation_s": val_s, "epoch_s": epoch_s}


@torch.no_grad()
def evaluate_tensors(model, x: torch.Tensor, y: torch.Tensor, rt: Runtime, batch_size: int,
                     channels_last: bool) -> tuple[float, float]:
    """Mean cross-entropy (hard labels, no smoothing) and accuracy of ``model`` on (x, y), sharded
    across data-parallel processes and summed."""
    model.eval()
    idx = torch.arange(rt.rank, len(y), rt.world_size, device=x.device)
    loss_sum, correct = 0.0, 0.0
    for lo in range(0, len(idx), batch_size):
        b = idx[lo:lo + batch_size]
        xb = x[b].contiguous(memory_format=torch.channels_last) if channels_last else x[b]
        with rt.autocast():
            logits = model(xb)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, y[b], reduction="sum"))
        correct += float((logits.argmax(1) == y[b]).sum())
    loss_sum, correct, n = _all_reduce_sum([loss_sum, correct, float(len(idx))], rt)
    return loss_sum / max(n, 1), correct / max(n, 1)


# ------------------------------------------------------------------------------------ run files
def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")


def write_metrics(run_dir: Path, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """``metrics.json`` ({..summary, "history": [per-epoch records]}) and ``metrics.csv`` (one row per
    epoch). Accuracies are fractions in [0, 1]; lr is the rate of the epoch's last step."""
    _write_atomic(run_dir / "metrics.json", json.dumps({**summary, "history": history}, indent=1).encode())
    buf = io.StringIO()
    extra = [k for k in ("val_loss_raw", "val_acc_raw") if history and k in history[-1]]  # runs with --ema
    w = csv.DictWriter(buf, fieldnames=[*METRIC_COLUMNS, *extra], extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    _write_atomic(run_dir / "metrics.csv", buf.getvalue().encode())


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Training-vs-validation accuracy (%) and loss per epoch as a PNG (matplotlib Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_acc, ax_loss = fig.subplots(1, 2)
    ep = [r["epoch"] for r in history]
    for ax, key, scale, name in ((ax_acc, "acc", 100.0, "accuracy (%)"), (ax_loss, "loss", 1.0, "loss")):
        ax.plot(ep, [scale * r[f"train_{key}"] for r in history], "o-", ms=3, label="train")
        ax.plot(ep, [scale * r[f"val_{key}"] for r in history], "o-", ms=3,
                label="validation (weight average)" if f"val_{key}_raw" in history[-1] else "validation")
        if f"val_{key}_raw" in history[-1]:
            ax.plot(ep, [scale * r.get(f"val_{key}_raw", float("nan")) for r in history], "-", lw=1,
                    label="validation (trained weights)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    best = max(history, key=lambda r: r["val_acc"])
    ax_acc.axvline(best["epoch"], color="gray", ls="--", lw=0.8)
    ax_acc.set_title(f"best validation {100 * best['val_acc']:.2f}% at epoch {best['epoch']}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _write_atomic(path, buf.getvalue())


def _check_run_dir(cfg: TrainConfig) -> None:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FerkitError(f"--out {out} is a file; choose a directory for the run")
    present = [name for name in RUN_FILES if (out / name).exists()]
    if present and not cfg.overwrite:
        how = "continue it with --resume, " if "last.pt" in present else ""
        raise FerkitError(f"{out} already holds a run ({', '.join(present)}); {how}replace it with --overwrite, "
                          f"or choose another --out")


def _prepare_run_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if cfg.overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


# ------------------------------------------------------------------------------------------ train
def train(config: TrainConfig) -> Path:
    """Train a network as ``config`` says and return the run directory (see the module docstring)."""
    # 1. configuration ------------------------------------------------------------------------
    config = replace(config, teacher=canonical_teacher(config.teacher))
    if config.resume:
        cfg, resume_ckpt = _resume_config(config)
    else:
        cfg, resume_ckpt = resolve_config(config), None
    if cfg.stop_by:  # saved with its date: "HH:MM" alone would not say which day (checked as future above)
        from datetime import datetime

        cfg = replace(cfg, stop_by=datetime.fromtimestamp(parse_deadline(cfg.stop_by, allow_past=True)).astimezone()
                      .isoformat(timespec="seconds"))

    # 2. runtime: device, precision, threads, data parallelism ---------------------------------
    rt = _setup_runtime(cfg)
    try:
        return _train(cfg, rt, resume_ckpt)
    finally:
        if rt.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _train(cfg: TrainConfig, rt: Runtime, resume_ckpt: dict[str, Any] | None) -> Path:
    from tqdm import tqdm

    from .models import count_parameters, create_model

    run_dir = Path(cfg.out)
    if resume_ckpt is None:
        _check_run_dir(cfg)  # every process, so that all of them stop on a user error

    # 3. data: splits, converted once by the one preprocessing function --------------------------
    splits = _load_splits(cfg)
    if resume_ckpt is not None and resume_ckpt["data"].get("data_sha256") != splits.info.get("data_sha256"):
        raise FerkitError(f"{cfg.data} is not the file this run was trained on (sha256 differs); "
                          f"resume with the original data")
    if resume_ckpt is not None and ((resume_ckpt["data"].get("ferplus") or {}).get("sha256")
                                    != (splits.info.get("ferplus") or {}).get("sha256")):
        raise FerkitError(f"the FER+ votes ({cfg.ferplus}) are not those this run was trained on (sha256 differs); "
                          "resume with the original fer2013new.csv (or a pack that carries it)")
    if cfg.obfuscate:  # the privacy experiment: learn from obfuscated faces only
        from .privacy.obfuscate import obfuscate_batch, parse_obfuscation

        ob = parse_obfuscation(cfg.obfuscate)
        for part in (splits.train, splits.val):
            part.images = obfuscate_batch(part.images, ob.method, ob.strength)
    spec = PreprocessSpec.from_dict(cfg.preprocess)
    labels, num_classes = tuple(splits.labels), len(splits.labels)
    data_device = rt.device  # the whole (small) data set lives where the model does
    train_x = torch.from_numpy(prepare_faces(splits.train.images, spec)).to(data_device)
    train_y = torch.from_numpy(np.asarray(splits.train.labels, np.int64)).to(data_device)
    train_soft = None
    if cfg.ferplus_mode in ("soft", "blend"):
        if splits.train.soft is None:
            raise FerkitError("soft FER+ targets were asked for but the data loader returned none")
        train_soft = torch.from_numpy(np.asarray(splits.train.soft, np.float32)).to(data_device)
    teach = None  # consistent teaching: the teachers' probabilities on each augmented batch
    if cfg.teacher:
        from .distill import ConsistentTeacher, distill_targets

        # also when consistent: checks each teacher's training data and records them (and their
        # accuracy on the clean Training images)
        soft, splits.info["teacher"] = distill_targets(
            cfg.teacher, splits.train.images, splits.train.labels, labels, splits.info, cfg.teacher_weight,
            base=None if train_soft is None else train_soft.cpu().numpy(), threads=rt.threads,
            temperature=cfg.teacher_temperature)
        splits.info["teacher"]["mode"] = cfg.teacher_mode
        if cfg.teacher_mode == "consistent":
            splits.info["teacher"]["rule"] += ("; consistent teaching: the teachers' probabilities are computed on "
                                               "each augmented batch the student trains on")
            teach = ConsistentTeacher(cfg.teacher, labels, spec, label_set=splits.info.get("label_set"),
                                      temperature=cfg.teacher_temperature, threads=rt.threads)
        else:
            train_soft = torch.from_numpy(soft).to(data_device)
        if resume_ckpt is not None and (resume_ckpt["data"].get("teacher") or {}).get("sha256") != \
                splits.info["teacher"]["sha256"]:
            raise FerkitError(f"{cfg.teacher} is not the teacher this run was trained with (sha256 differs); "
                              "resume with the original teacher(s)")
        if rt.main:
            t = splits.info["teacher"]
            print(f"distillation: teacher {t['teacher']} ({t['arch']}, tta {t['tta']}, {100 * t['teacher_train_acc']:.2f}% "
                  f"on the Training images), weight {t['weight']:g}"
                  + (f", temperature {t['temperature']:g}" if t["temperature"] != 1 else "")
                  + (", consistent teaching (teachers on every augmented batch)" if teach is not None else ""),
                  file=sys.stderr)
    val_x = torch.from_numpy(prepare_faces(splits.val.images, spec)).to(data_device)
    val_y = torch.from_numpy(np.asarray(splits.val.labels, np.int64)).to(data_device)
    caps = _sample_caps(cfg, labels)
    # only now, with the data, FER+ votes and teachers checked, may --overwrite clear an earlier run
    if resume_ckpt is None and rt.main:
        _prepare_run_dir(cfg)
    if rt.world_size > 1:
        import torch.distributed as dist

        dist.barrier()  # the run directory is ready before anyone goes on

    # the epoch length is fixed by the class counts, so the schedule knows the total step count
    n_epoch = len(epoch_indices(splits.train.labels, seed=cfg.seed, epoch=0, mode=cfg.sampling, cap=caps))
    per_rank = len(shard(np.arange(n_epoch), 0, rt.world_size))
    batch = max(2, cfg.batch_size // rt.world_size)
    starts = list(range(0, per_rank, batch))
    if len(starts) > 1 and per_rank - starts[-1] < 2:
        starts.pop()  # a last batch of one image breaks batch norm; its image is seen next epoch
    batches = [(lo, min(lo + batch, per_rank)) for lo in starts]
    steps_per_epoch = len(batches)

    # 4. model, optimiser, schedule, loss ---------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.arch, num_classes=num_classes, **(cfg.arch_kwargs or {}))
    init_note = None
    if cfg.init and resume_ckpt is None:
        init_note = _init_from_checkpoint(model, load_checkpoint(cfg.init, "best"), labels)
    model.to(rt.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    augmenter = Augmenter(AugmentConfig.from_dict(cfg.augment), mean=spec.mean, std=spec.std)
    budget_info = None
    if cfg.time_budget and resume_ckpt is None:
        # the schedule needs the total step count up front, so the epochs are decided here, once
        probe = _measure_epoch(cfg, rt, model, augmenter, train_x, train_y, val_x, val_y, batch, steps_per_epoch,
                               teach)
        fit = budget_epochs(cfg.time_budget, probe["epoch_s"])
        epochs = min(fit, cfg.max_epochs) if cfg.max_epochs else fit
        if epochs < 1 or epochs <= cfg.warmup_epochs:
            raise FerkitError(
                f"--time-budget {cfg.time_budget:g} min fits {fit} epoch(s) on this machine"
                f"{f' (--max-epochs {cfg.max_epochs})' if cfg.max_epochs and cfg.max_epochs < fit else ''} (about "
                f"{probe['epoch_s']:.0f} s each; the warm-up alone is {cfg.warmup_epochs:g} epochs): give it more "
                f"minutes, or choose a smaller network or --epochs")
        cfg = replace(cfg, epochs=epochs)
        budget_info = {**probe, "minutes": cfg.time_budget, "epochs": epochs, "fit": fit, "max_epochs": cfg.max_epochs,
                       "margin": BUDGET_MARGIN}
    optimizer = _make_optimizer(cfg, model)
    ema = WeightAverage(model, cfg.ema) if cfg.ema else None
    schedule = LRSchedule(cfg.schedule, cfg.lr, steps_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.schedule_params)
    scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" else None
    weight = None
    if cfg.class_weights != "none":
        weight = torch.from_numpy(class_weights(splits.train.labels, num_classes, cfg.class_weights)).to(rt.device)
    aug = augmenter.config
    mixing = bool(aug.mixup or aug.cutmix)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 17 + 7919 * rt.rank)  # augmentation randomness
    if rt.world_size > 1:
        torch.manual_seed(cfg.seed + 104_729 * rt.rank)  # each process its own dropout masks

    history: list[dict[str, Any]] = []
    start_epoch, best_val_acc, best_epoch = 0, -1.0, 0
    if resume_ckpt is not None:  # restore everything a killed run had at the end of its last epoch
        # with a weight average, "model" holds the average and "train_model" the trained weights
        model.load_state_dict(resume_ckpt.get("train_model") or resume_ckpt["model"])
        if ema is not None:
            ema.model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        schedule.load_state_dict(resume_ckpt["scheduler"])
        if scaler is not None and resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        history = list(resume_ckpt["history"])
        start_epoch, best_val_acc, best_epoch = resume_ckpt["epoch"], resume_ckpt["best_val_acc"], resume_ckpt["best_epoch"]
        rng = resume_ckpt.get("rng") or {}
        if rng.get("world_size") == rt.world_size:
            _set_rng_state(rng["ranks"][rt.rank], gen, rt)
        else:
            rt.notes.append(f"resumed with {rt.world_size} processes instead of {rng.get('world_size')}: "
                            f"random streams re-seeded, so the rest of the run is not bit-identical")
            torch.manual_seed(cfg.seed + 1_000 * start_epoch + rt.rank)
            gen.manual_seed(cfg.seed * 1_000_003 + 1_000 * start_epoch + rt.rank)

    train_model = model
    if rt.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    eval_model = ema.model if ema is not None else model  # what is validated, selected and saved

    def model_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in m.state_dict().items()}

    meta = {
        "arch": cfg.arch, "arch_kwargs": dict(cfg.arch_kwargs or {}), "num_classes": num_classes,
        "labels": list(labels), "label_set": splits.label_set, "preprocess": spec.to_dict(),
        "config": asdict(cfg), "data": splits.info,
    }
    if rt.main:
        run_info = {**asdict(cfg), "data_info": splits.info, "labels": list(labels), "world_size": rt.world_size,
                    "device": str(rt.device), "precision_used": rt.precision, "threads": rt.threads,
                    "torch": torch.__version__, "steps_per_epoch": steps_per_epoch, "images_per_epoch": n_epoch}
        budget_note = None
        if budget_info is not None:
            run_info["time_budget_probe"] = budget_info
            budget_note = (f"--time-budget {cfg.time_budget:g} min: {cfg.epochs} epochs of about "
                           f"{budget_info['epoch_s']:.1f} s ({budget_info['step_s'] * 1000:.0f} ms a step, "
                           f"measured before the run"
                           + (f"; {budget_info['fit']} would fit, capped by --max-epochs)"
                              if budget_info["fit"] > cfg.epochs else ")"))
        _write_atomic(run_dir / "config.json", json.dumps(run_info, indent=1, default=str).encode())
        print(f"ferkit train: {cfg.arch} ({count_parameters(model) / 1e6:.2f} M parameters), {splits.label_set} "
              f"({num_classes} classes); train {len(splits.train)} / val {len(splits.val)} images; "
              f"{rt.device}, {rt.threads} thread(s) x {rt.world_size} process(es), {rt.precision}"
              f"{', channels-last' if cfg.channels_last else ''}; seed {cfg.seed}; "
              f"{steps_per_epoch} steps/epoch of {batch * rt.world_size}; {cfg.optimizer} lr {cfg.lr:g}, {cfg.schedule}",
              flush=True)
        for note in [init_note, budget_note, *rt.notes]:
            if note:
                print(f"  note: {note}", flush=True)
        if resume_ckpt is not None:
            print(f"  resuming after epoch {start_epoch} (best val acc {100 * best_val_acc:.2f}% at epoch {best_epoch})",
                  flush=True)

    # 5. the epochs ----------------------------------------------------------------------------
    kill_after = int(os.environ.get(KILL_HOOK_ENV, "0") or 0)
    deadline = parse_deadline(cfg.stop_by, allow_past=True) if cfg.stop_by else None
    stopped = None
    last_save = time.perf_counter()  # --save-every counts from the start of the run
    files_s = 0.0  # how long the last writing of the files took (part of an epoch's cost for --stop-by)
    pending_best = None  # with --save-every: the best epoch's state, not yet written
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_model.train()
        order = epoch_indices(splits.train.labels, seed=cfg.seed, epoch=epoch, mode=cfg.sampling, cap=caps)
        order = torch.from_numpy(shard(order, rt.rank, rt.world_size)).to(data_device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
        correct = torch.zeros((), dtype=torch.int64, device=rt.device)
        seen = 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                   disable=not (cfg.progress and rt.main), file=sys.stderr, mininterval=0.5)
        for i, (lo, hi) in enumerate(batches):
            # learning rate of this step
            lr = schedule.lr_at(epoch * steps_per_epoch + i)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # batch: gather, augment, mix
            idx = order[lo:hi]
            x, y = train_x[idx], train_y[idx]
            x = augmenter(x, gen)
            target = train_soft[idx] if train_soft is not None else None
            if mixing:
                target = target if target is not None else F.one_hot(y, num_classes).to(x.dtype)
                x, target = mix_batch(x, target, gen, aug.mixup, aug.cutmix)
            if teach is not None:  # the teachers see exactly what the student sees, mixing included
                target = _consistent_target(teach, x, y, target, cfg.teacher_weight)
            # forward (mixed precision), loss in float32, backward, step
            logits, loss = _optimisation_step(cfg, rt, train_model, model, optimizer, scaler, ema, x, y, target,
                                              weight, epoch * steps_per_epoch + i)
            # running metrics (accuracy against the un-mixed labels)
            n = hi - lo
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(1) == y).sum()
            seen += n
            bar.update(1)
            if bar.n == steps_per_epoch or (not bar.disable and time.perf_counter() - bar.last_print_t > 0.5):
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{100 * int(correct) / seen:.1f}%",
                                lr=f"{lr:.2e}", refresh=False)
        bar.close()
        tr_loss, tr_correct, tr_seen = _all_reduce_sum([float(loss_sum), float(correct), float(seen)], rt)
        train_time = time.perf_counter() - t0

        # validation, plateau schedule, best epoch
        val_loss, val_acc = evaluate_tensors(eval_model, val_x, val_y, rt, cfg.eval_batch_size, cfg.channels_last)
        raw = None  # with --ema, the trained weights are validated too, to show what the average adds
        if ema is not None:
            raw = evaluate_tensors(model, val_x, val_y, rt, cfg.eval_batch_size, cfg.channels_last)
        schedule.epoch_end(val_acc, val_loss)
        improved = val_acc > best_val_acc
        if improved:
            best_val_acc, best_epoch = val_acc, epoch + 1
        record = {
            "epoch": epoch + 1, "train_loss": tr_loss / tr_seen, "train_acc": tr_correct / tr_seen,
            "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
            "epoch_time_s": round(time.perf_counter() - t0, 3), "images_per_s": round(tr_seen / train_time, 1),
        }
        if raw is not None:
            record["val_loss_raw"], record["val_acc_raw"] = raw
        history.append(record)
        if deadline is not None and epoch + 1 < cfg.epochs:
            # stop if one more epoch as long as this one would end after the deadline (any process's clock)
            late = float(_clock() + record["epoch_time_s"] + files_s > deadline)
            if _all_reduce_sum([late], rt)[0] > 0:
                stopped = {"stop_by": cfg.stop_by, "after_epoch": epoch + 1}

        # files (process 0): best.pt, last.pt (with every rank's random state), metrics, curves
        rng_states = [_rng_state(gen, rt)]
        if rt.world_size > 1:
            import torch.distributed as dist

            rng_states = [None] * rt.world_size
            dist.all_gather_object(rng_states, _rng_state(gen, rt))
        save_now = (not cfg.save_every or epoch + 1 == cfg.epochs or stopped is not None
                    or time.perf_counter() - last_save >= cfg.save_every)
        if rt.main:
            t_files = time.perf_counter()
            weights = model_state(eval_model) if improved or save_now else None
            if improved:
                pending_best = {**meta, "model": weights, "epoch": epoch + 1, "best_epoch": best_epoch,
                                "best_val_acc": best_val_acc, "history": list(history)}
            if save_now:
                if pending_best is not None:
                    save_checkpoint(pending_best, run_dir / "best.pt")
                    pending_best = None
                state = {**meta, "model": weights, "epoch": epoch + 1, "best_epoch": best_epoch,
                         "best_val_acc": best_val_acc, "history": history}
                save_checkpoint({**state, "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                                 "scaler": scaler.state_dict() if scaler is not None else None,
                                 "train_model": model_state(model) if ema is not None else None,
                                 "rng": {"world_size": rt.world_size, "ranks": rng_states}}, run_dir / "last.pt")
                summary = {"arch": cfg.arch, "seed": cfg.seed, "label_set": splits.label_set, "labels": list(labels),
                           "epochs_planned": cfg.epochs, "best_epoch": best_epoch, "best_val_acc": best_val_acc,
                           "data_sha256": splits.info.get("data_sha256")}
                if stopped:
                    summary["stopped"] = stopped
                write_metrics(run_dir, history, summary)
                plot_curves(history, run_dir / "curves.png", f"{cfg.arch} on {Path(cfg.data).name} (seed {cfg.seed})")
                files_s = time.perf_counter() - t_files
                last_save = time.perf_counter()
            print(f"epoch {epoch + 1:3d}/{cfg.epochs}  train loss {record['train_loss']:.4f} acc "
                  f"{100 * record['train_acc']:5.2f}%  val loss {val_loss:.4f} acc {100 * val_acc:5.2f}%  "
                  f"lr {lr:.2e}  {record['epoch_time_s']:.1f} s{'  *best' if improved else ''}", flush=True)
            if kill_after == epoch + 1:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: a crash right after epoch k's files
        if stopped:
            if rt.main:
                print(f"stopped after epoch {epoch + 1} of {cfg.epochs}: another epoch of about "
                      f"{record['epoch_time_s']:.0f} s would end after --stop-by {cfg.stop_by}; "
                      f"`ferkit train --resume --out {run_dir}` continues the run", flush=True)
            break

    if rt.main:
        print(f"done: best validation accuracy {100 * best_val_acc:.2f}% at epoch {best_epoch}; run in {run_dir}",
              flush=True)
    return run_dir
