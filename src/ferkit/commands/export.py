"""``ferkit export RUN_DIR --out model.onnx``: a checkpoint -> one self-describing .onnx.

Several runs (``ferkit export RUN_A RUN_B ... --out accurate.onnx``) give one ensemble file whose
probabilities are the (weighted) mean of the members'."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a training run or checkpoint to one .onnx with label/preprocessing/provenance metadata",
        description="Export a run directory (its best.pt) or a checkpoint file to ONNX (dynamic batch, float32). "
                    "Given several runs, export their ensemble (mean of probabilities) as one file. "
                    "The result is checked against the PyTorch model with onnxruntime (max |diff| <= 1e-4).",
    )
    p.add_argument("run", nargs="+", help="run directory (uses best.pt) or checkpoint .pt; several: an ensemble")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="ensemble only: one positive weight per run (default: equal weights)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=17, help="minimum ONNX opset (the dynamo exporter writes 18)")
    p.add_argument("--tta", choices=("none", "flip", "tencrop"), default=None,
                   help="the model's default test-time augmentation, stored in its metadata "
                        "(default: the training config's, else none)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="torch ONNX exporter (auto: dynamo, falling back to TorchScript)")
    p.add_argument("--json", action="store_true", help="print the export summary as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import sys

    from ..errors import FerkitError
    from ..export import export_ensemble, export_onnx

    with contextlib.redirect_stdout(sys.stderr):
        if len(args.run) > 1:
            info = export_ensemble(args.run, args.out, opset=args.opset, weights=args.weights, tta=args.tta,
                                   exporter=args.exporter)
        elif args.weights is not None:
            raise FerkitError("--weights is for an ensemble: give two or more runs")
        else:
            info = export_onnx(args.run[0], args.out, opset=args.opset, tta=args.tta, exporter=args.exporter)
    if args.json:
        print(json.dumps(info))
    else:
        meta = info["metadata"]
        print(f"wrote {info['path']} ({info['bytes'] / 1e6:.2f} MB): {meta['arch']}, labels {', '.join(meta['labels'])}, "
              f"input (N, 1, {meta['input_size']}, {meta['input_size']}), opset {info['opset']}, "
              f"exporter {info['exporter']}, tta {meta['tta']}, max |onnx - torch| = {info['max_abs_diff']:.2e}")
    return 0
