"""``ferkit train``: a thin shell over :func:`ferkit.train.train` (torch is imported inside the handler).

Every option defaults to "not given", so the architecture's literature recipe and ``--recipe`` supply
what the command line leaves out. Data-parallel: ``torchrun --nproc_per_node 2 -m ferkit.cli train ...``.
"""
from __future__ import annotations

import argparse
import json
import os

from ..errors import FerkitError


def _key_values(text: str) -> dict:
    """``a=1,b=[2,3],c=relu`` -> {"a": 1, "b": [2, 3], "c": "relu"} (values parsed as JSON when they can be)."""
    out = {}
    for part in _split_top_level(text):
        if "=" not in part:
            raise FerkitError(f"expected KEY=VALUE, got {part!r}")
        key, value = part.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _sample_cap(text: str):
    if "=" not in text:
        try:
            return int(text)
        except ValueError:
            raise FerkitError(f"--sample-cap takes a count or CLASS=COUNT[,CLASS=COUNT], got {text!r}") from None
    caps = _key_values(text)
    if not all(isinstance(v, int) for v in caps.values()):
        raise FerkitError(f"--sample-cap counts must be whole numbers, got {text!r}")
    return caps


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a network on FER2013 (or an image folder); writes a run directory",
        description="Train a network. Settings come from ferkit's defaults, then the architecture's literature "
        "recipe, then --recipe, then the options given here. Validation (model selection) is PublicTest; "
        "PrivateTest is never used. Example: ferkit train --data fer2013.csv.gz --arch vgg --epochs 60 --out runs/vgg",
    )
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group("run")
    g.add_argument("--data", help="fer2013.csv / .csv.gz, or an image-folder root (<root>/<class>/*.png)")
    g.add_argument("--out", help="run directory (last.pt, best.pt, metrics.json/csv, curves.png, config.json)")
    g.add_argument("--arch", help="architecture name (`ferkit models` lists them)")
    g.add_argument("--recipe", help="named recipe from ferkit.recipes, e.g. cpu-fast (see --list-recipes)")
    g.add_argument("--list-recipes", action="store_true", help="print the recipes and exit")
    g.add_argument("--epochs", type=int)
    g.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="instead of --epochs: time a few training steps on this machine first and train as many "
                   "epochs as fit in MINUTES (the number chosen is printed and saved in config.json)")
    g.add_argument("--max-epochs", type=int, metavar="N",
                   help="with --time-budget: train at most N epochs, fewer if fewer fit (e.g. on a fast GPU)")
    g.add_argument("--stop-by", metavar="TIME",
                   help="wall-clock deadline, HH:MM (today) or 'YYYY-MM-DD HH:MM', local time: stop after the last "
                   "epoch that can end by then (files written; the schedule keeps --epochs, so --resume continues)")
    g.add_argument("--save-every", type=float, metavar="SECONDS",
                   help="write the run's files (checkpoints, metrics, curves) only when this long has passed since "
                   "the last time, and after the last epoch (default 0: after every epoch); for short epochs on a GPU")
    g.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out from its last.pt, exactly where it stopped")
    g.add_argument("--init", metavar="CHECKPOINT", help="fine-tune from a checkpoint or run directory "
                   "(the classifier head is replaced when the classes differ)")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run in --out")
    g.add_argument("--seed", type=int, help="seed of everything random (recorded in config.json); default 0")

    g = p.add_argument_group("data")
    g.add_argument("--label-set", choices=["fer7", "fer6", "fer5", "ferplus8"])
    g.add_argument("--split", choices=["usage", "random"], help="Usage column, or stratified random 80/10/10")
    g.add_argument("--split-seed", type=int, help="seed of the random split (default 0)")
    g.add_argument("--limit", type=int, metavar="N", help="use only the first N rows of each split (quick runs)")
    g.add_argument("--skip-bad", action="store_true", default=None, help="skip malformed CSV rows instead of failing")
    g.add_argument("--ferplus", metavar="PATH", help="FER+ labels (fer2013new.csv)")
    g.add_argument("--ferplus-mode", choices=["majority", "soft", "blend"],
                   help="FER+ majority vote or soft vote targets; blend: keep FER2013's labels and soften the "
                        "training target towards the FER+ votes (extra supervision)")
    g.add_argument("--ferplus-weight", type=float, metavar="W",
                   help="weight of the FER+ votes in blend mode (default 0.5)")
    g.add_argument("--ferplus-protocol", choices=["plurality", "reference"],
                   help="which images FER+ labels: plurality of the votes, ties dropped (default), or reference: "
                        "the FER+ authors' rule (single votes removed, more than half of the rest for one class)")
    g.add_argument("--teacher", metavar="MODEL", action="append",
                   help="distil from this exported model or ensemble (.onnx or bundled name; trained on the same "
                        "data and split): its probabilities on the Training images join the training target. "
                        "Repeat to average several teachers; a teacher's classes that the student's label set "
                        "leaves out (FER+ contempt for fer7) are dropped and the rest renormalised")
    g.add_argument("--teacher-weight", type=float, metavar="W",
                   help="weight of the teacher's probabilities in the training target (default 0.5)")
    g.add_argument("--teacher-temperature", type=float, metavar="T",
                   help="soften (T > 1) or sharpen (T < 1) each teacher's probabilities before they join the "
                        "target: p ** (1/T), renormalised, as dividing its logits by T (default 1: unchanged)")
    g.add_argument("--teacher-mode", choices=["fixed", "consistent"],
                   help="fixed: the teachers see each clean Training image once, before training (default); "
                        "consistent: they see every augmented batch the student trains on (consistent teaching, "
                        "Beyer et al. 2022; each epoch costs the teachers' inference on the Training split)")
    g.add_argument("--clean", metavar="RULE[,RULE]", help="cleaning rules, e.g. blank,histogram,duplicates")
    g.add_argument("--obfuscate", metavar="METHOD-STRENGTH",
                   help="train and select on obfuscated faces (privacy experiment), e.g. pixelate-8, blur-2, fill")
    g.add_argument("--preprocess", metavar="KEY=VALUE[,...]", help="PreprocessSpec fields, e.g. equalize=true")

    g = p.add_argument_group("optimisation")
    g.add_argument("--model-opt", metavar="KEY=VALUE[,...]", help="architecture options, e.g. dropout=0.3")
    g.add_argument("--batch-size", type=int, help="global batch (split across torchrun processes)")
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    g.add_argument("--lr", type=float, help="(peak) learning rate")
    g.add_argument("--momentum", type=float)
    g.add_argument("--nesterov", action=B, help="Nesterov momentum (SGD)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=["constant", "plateau", "cosine", "onecycle"])
    g.add_argument("--schedule-opt", metavar="KEY=VALUE[,...]", help="e.g. factor=0.75,patience=5 (plateau)")
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--grad-clip", type=float, help="max gradient norm (0 = off)")
    g.add_argument("--ema", type=float, metavar="DECAY",
                   help="validate, select and save an exponential moving average of the weights (e.g. 0.999; 0 = off)")
    g.add_argument("--class-weights", choices=["none", "balanced", "sqrt"], help="class-weighted loss")
    g.add_argument("--sampling", choices=["none", "over", "under"], help="re-balance classes each epoch")
    g.add_argument("--sample-cap", metavar="N|CLASS=N[,...]", help="per-class count for --sampling")

    g = p.add_argument_group("augmentation (a preset, then single options on top)")
    g.add_argument("--augment", choices=["none", "light", "standard", "heavy", "photo"],
                   help="photo: standard + brightness/contrast/gamma/sharpness/noise jitter")
    g.add_argument("--flip", action=B, help="random horizontal flip")
    g.add_argument("--crop", type=int, metavar="PX", help="pad by PX and crop at random")
    g.add_argument("--shift", type=float, metavar="FRAC", help="max translation, fraction of the side")
    g.add_argument("--scale", type=float, metavar="FRAC", help="zoom in [1-FRAC, 1+FRAC]")
    g.add_argument("--rotate", type=float, metavar="DEG", help="max rotation in degrees")
    g.add_argument("--erase", type=float, metavar="P", help="random-erasing probability")
    g.add_argument("--mixup", type=float, metavar="ALPHA")
    g.add_argument("--cutmix", type=float, metavar="ALPHA")
    g.add_argument("--brightness", type=float, metavar="D", help="add U[-D, D] to intensities in [0, 1]")
    g.add_argument("--contrast", type=float, metavar="FRAC", help="contrast factor in [1-FRAC, 1+FRAC]")
    g.add_argument("--gamma", type=float, metavar="G", help="random gamma exp(U[-G, G])")
    g.add_argument("--sharpness", type=float, metavar="A", help="unsharp-mask amount in [-A, A] (-1 = blur)")
    g.add_argument("--noise", type=float, metavar="SIGMA", help="Gaussian noise, std up to SIGMA")

    g = p.add_argument_group("runtime")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on a CPU that supports it, bf16/fp16 AMP on CUDA")
    g.add_argument("--channels-last", action=B)
    g.add_argument("--threads", type=int, help="torch threads per process (default: cores / local processes)")
    g.add_argument("--compile", action=B, help="torch.compile the network")
    g.add_argument("--progress", action=B, help="tqdm progress bar per epoch")
    p.set_defaults(func=handle)


_AUG_FLAGS = ("flip", "crop", "shift", "scale", "rotate", "erase", "mixup", "cutmix", "brightness", "contrast",
              "gamma", "sharpness", "noise")
_PLAIN = ("data", "out", "arch", "recipe", "epochs", "time_budget", "max_epochs", "stop_by", "save_every", "resume", "init", "overwrite", "seed", "label_set", "split",
          "split_seed", "limit", "skip_bad", "ferplus", "ferplus_mode", "ferplus_weight", "ferplus_protocol",
          "teacher", "teacher_weight", "teacher_temperature", "teacher_mode", "obfuscate", "batch_size", "eval_batch_size", "optimizer",
          "lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup_epochs", "label_smoothing", "grad_clip", "ema",
          "class_weights", "sampling", "device", "precision", "channels_last", "threads", "compile", "progress")


def config_from_args(args):
    """The TrainConfig the command line asks for (only the options that were given)."""
    from ..train import TrainConfig

    # --teacher comes as a list (action="append"); train() saves a list of one as its name
    values = {k: getattr(args, k) for k in _PLAIN if getattr(args, k) is not None}
    if args.clean:
        values["clean"] = [r.strip() for r in args.clean.split(",") if r.strip()]
    if args.preprocess:
        values["preprocess"] = _key_values(args.preprocess)
    if args.model_opt:
        values["arch_kwargs"] = _key_values(args.model_opt)
    if args.schedule_opt:
        values["schedule_params"] = _key_values(args.schedule_opt)
    if args.sample_cap:
        values["sample_cap"] = _sample_cap(args.sample_cap)
    aug = {k: getattr(args, k) for k in _AUG_FLAGS if getattr(args, k) is not None}
    if args.augment:
        aug["preset"] = args.augment
    if aug:
        values["augment"] = aug
    return TrainConfig(**values)


def handle(args) -> int:
    if args.list_recipes:
        from ..recipes import RECIPES

        for r in RECIPES.values():
            print(f"{r.name}: {r.description}")
            print("    " + ", ".join(f"{k}={v}" for k, v in r.settings.items()))
        return 0
    from ..train import train

    run_dir = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only process 0 reports
        print(f"run directory: {run_dir}")
    return 0
