"""Where a training step's time goes, on a GPU (or this CPU): milliseconds per optimiser step of a network at
its recipe's batch size with and without its augmentation, and at batch 256, on synthetic 48x48 batches
already on the device (no data loading), bf16 autocast + channels-last as `ferkit train` runs them.

    python benchmarks/bench_train_step.py [--archs vgg,gudi] [--steps 60] [--profile]

Ratios are against the first row of each network (recipe batch, augmented), measured in the same run.
``--profile`` adds torch.profiler's tables for 20 steps of the first network: on a GPU, compare "Self CPU
time total" with "Self CUDA time total": a step whose CPU time is several times its GPU time is bound by
Python and kernel launches, not by the GPU. The H200's output (first version of this script, same steps
and timing, plain lines in place of the table): docs/bench_train_step_h200.txt.
"""
from __future__ import annotations

import argparse
import time

import _table  # noqa: F401  (puts src/ on the path)
import torch
import torch.nn.functional as F

from ferkit.augment import AUGMENT_PRESETS, AugmentConfig, Augmenter
from ferkit.models import create_model, model_info


def make_step(arch: str, batch: int, augment: str, device: torch.device):
    model = create_model(arch).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, foreach=True)
    aug = Augmenter(AugmentConfig(**AUGMENT_PRESETS[augment])) if augment != "none" else None
    gen = torch.Generator().manual_seed(0)
    xs = torch.rand(batch * 4, 1, 48, 48, device=device)
    ys = torch.randint(0, 7, (batch * 4,), device=device)

    def step(i: int) -> None:
        k = i % 4
        x, y = xs[k * batch:(k + 1) * batch], ys[k * batch:(k + 1) * batch]
        if aug is not None:
            x = aug(x, gen)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, steps: int, device: torch.device, warmup: int = 10) -> float:
    for i in range(warmup):
        step(i)
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="vgg,gudi")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = []
    for arch in args.archs.split(","):
        info = model_info(arch)
        batch, augment = int(info.get("batch_size") or 64), info.get("augment") or "none"
        base = None
        for b, a in ((batch, augment), (batch, "none"), (256, augment)):
            if a == "none" and augment == "none" and b == batch and base is not None:
                continue
            dt = time_steps(make_step(arch, b, a, device), args.steps, device)
            base = base or dt
            rows.append([arch, b, a, f"{dt * 1e3:.2f}", f"{b / dt:,.0f}", f"{28709 / b * dt:.2f}", f"{dt / base:.2f}"])
    print(f"# training step on {name} (torch {torch.__version__}), {args.steps} steps after 10 warm-up")
    _table.print_table(None, ["network", "batch", "augment", "ms/step", "images/s", "s/epoch (28,709)",
                              "x first row"], rows)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        arch = args.archs.split(",")[0]
        info = model_info(arch)
        step = make_step(arch, int(info.get("batch_size") or 64), info.get("augment") or "none", device)
        time_steps(step, 5, device)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for i in range(20):
                step(i)
            sync(device)
        key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=40))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
