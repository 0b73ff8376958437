"""Speed of every registered architecture on this machine, side by side with the ``vgg`` baseline.

For each architecture: parameters, MACs per face (multiply-accumulates of every conv and linear layer,
counted by forward hooks on one 48x48 face), and throughput in faces (images) per second:

  torch_b64   PyTorch fp32 eval forward, batch 64, no_grad
  train_b64   PyTorch training step (forward + backward), batch 64, bf16 autocast + channels_last
  ort_b1      onnxruntime fp32, batch 1 (one face at a time: the live-camera case)
  ort_b64     onnxruntime fp32, batch 64 (the ``ferkit predict`` folder / evaluation case)

and each throughput as a ratio to ``vgg`` measured in the same run. The ONNX file is exported with
``torch.onnx.export`` (opset 17, dynamic batch) to a temporary file; onnxruntime folds BatchNorm into
the convolutions. All timings use ``--threads`` threads (default 2, the whole machine).

The machine is shared, so every number is the best of ``--rounds`` short windows, and the rounds are
interleaved across architectures (round 1 of every model, then round 2, ...) so that a burst of
someone else's load does not hit one model only.

    python benchmarks/bench_models.py                       # all architectures, ~3 minutes
    python benchmarks/bench_models.py --archs vgg,fastres_s --rounds 5
    python benchmarks/bench_models.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings


def count_macs(model) -> int:
    """Multiply-accumulates per face of all Conv2d and Linear layers (one (1, 1, 48, 48) forward)."""
    import torch
    from torch import nn

    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            per_out = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            total += out[0].numel() * per_out
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 48, 48))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total


def _rate(fn, batch: int, seconds: float) -> float:
    """Faces/s of ``fn`` (one call = ``batch`` faces) over a window of about ``seconds``."""
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n * batch / dt


class Bench:
    """Holds one architecture's model, ONNX session and inputs; each ``measure_*`` is one window."""

    def __init__(self, name: str, threads: int, train: bool):
        import torch
        import onnxruntime as ort

        from ferkit.models import count_parameters, create_model

        self.name = name
        torch.manual_seed(0)
        self.model = create_model(name, num_classes=7)
        self.params = count_parameters(self.model)
        self.macs = count_macs(self.model)
        self.x64 = torch.randn(64, 1, 48, 48)
        self.y64 = torch.randint(0, 7, (64,))
        self.model.eval()
        fd, path = tempfile.mkstemp(suffix=".onnx")
        os.close(fd)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    self.model, torch.zeros(1, 1, 48, 48), path, input_names=["input"], output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
                )
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        finally:
            os.unlink(path)
        self.np64 = self.x64.numpy()
        self.np1 = self.np64[:1].copy()
        self.train = train
        if train:
            self.train_model = create_model(name, num_classes=7).to(memory_format=torch.channels_last)
            self.train_model.train()
            self.xcl = self.x64.contiguous(memory_format=torch.channels_last)
        self.best: dict[str, float] = {}
        self.warm()

    def warm(self) -> None:
        self.torch_step()
        self.session.run(None, {"input": self.np64})
        self.session.run(None, {"input": self.np1})
        if self.train:
            self.train_step()

    def torch_step(self) -> None:
        import torch

        with torch.no_grad():
            self.model(self.x64)

    def train_step(self) -> None:
        import torch

        self.train_model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(self.train_model(self.xcl), self.y64)
        loss.backward()

    def measure(self, seconds: float) -> None:
        runs = {
            "torch_b64": (self.torch_step, 64),
            "ort_b1": (lambda: self.session.run(None, {"input": self.np1}), 1),
            "ort_b64": (lambda: self.session.run(None, {"input": self.np64}), 64),
        }
        if self.train:
            runs["train_b64"] = (self.train_step, 64)
        for key, (fn, batch) in runs.items():
            self.best[key] = max(self.best.get(key, 0.0), _rate(fn, batch, seconds))


METRICS = ("torch_b64", "train_b64", "ort_b1", "ort_b64")


def run(archs: list[str], rounds: int, seconds: float, threads: int, train: bool) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    benches = []
    for name in archs:
        print(f"  preparing {name} ...", file=sys.stderr, flush=True)
        benches.append(Bench(name, threads, train))
    for r in range(rounds):
        print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        for b in benches:
            b.measure(seconds)
    rows = []
    for b in benches:
        row = {"arch": b.name, "params": b.params, "macs": b.macs}
        row.update({k: b.best.get(k) for k in METRICS})
        rows.append(row)
    base = next((r for r in rows if r["arch"] == "vgg"), None)
    for row in rows:
        for k in METRICS:
            row[f"{k}_x_vgg"] = (row[k] / base[k]) if base and row[k] and base[k] else None
    return rows


def print_table(rows: list[dict]) -> None:
    def fmt(v, ratio):
        if v is None:
            return "-"
        return f"{v:,.0f} ({ratio:.1f}x)" if ratio is not None else f"{v:,.0f}"

    head = ["arch", "params", "MACs/face", "torch b64/s", "train bf16 b64/s", "ORT b1/s", "ORT b64/s"]
    table = [head]
    for r in rows:
        table.append([
            r["arch"], f"{r['params'] / 1e6:.2f}M", f"{r['macs'] / 1e6:.1f}M",
            *(fmt(r[k], r[f"{k}_x_vgg"]) for k in METRICS),
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for j, row in enumerate(table):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print("(faces/s, best of the rounds; in brackets: ratio to vgg measured in the same run)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="all", help="comma-separated architecture names (default: all registered)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measuring rounds; the best is kept")
    ap.add_argument("--seconds", type=float, default=0.6, help="length of one measuring window")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    ap.add_argument("--no-train", action="store_true", help="skip the bf16 training-step column")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)

    from ferkit.models import list_models

    archs = list_models() if args.archs == "all" else [a.strip() for a in args.archs.split(",") if a.strip()]
    if "vgg" not in archs:
        archs.append("vgg")  # the baseline every ratio is taken against
    import onnxruntime
    import torch

    print(f"# bench_models: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{args.rounds} rounds x {args.seconds}s windows")
    t0 = time.time()
    rows = run(archs, args.rounds, args.seconds, args.threads, not args.no_train)
    print_table(rows)
    print(f"(benchmark took {time.time() - t0:.0f}s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
