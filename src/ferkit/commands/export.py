"""``ferkit export RUN_DIR --out model.onnx``: a checkpoint -> one self-describing .onnx.

Several runs (``ferkit export RUN_A RUN_B ... --out accurate.onnx``) give one ensemble file whose
probabilities are the (weighted) mean of the members'. Exported models (``.onnx`` files or bundled names)
combine the same way without their checkpoints (``ferkit export accurate runs/b.onnx --out e.onnx --half``),
and ``ferkit export accurate --split DIR`` writes an ensemble's members as files of their own
(:mod:`ferkit.onnx_ensemble`). ``ferkit export default --quantize int8 --data fer2013.csv.gz --out d8.onnx``
writes an exported model's int8 quantization, calibrated on Training faces (:mod:`ferkit.quantize`).
``ferkit export accurate --calibrate --data fer2013.csv.gz --out a.onnx`` fits the temperature of its
probabilities on PublicTest and writes it into the copy (:mod:`ferkit.calibrate`); given a training run,
``--calibrate`` exports it and calibrates the export in one step."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a training run or checkpoint to one .onnx with label/preprocessing/provenance metadata",
        description="Export a run directory (its best.pt) or a checkpoint file to ONNX (dynamic batch, float32). "
                    "Given several runs, export their ensemble (mean of probabilities) as one file. "
                    "The result is checked against the PyTorch model with onnxruntime (max |diff| <= 1e-4). "
                    "Exported models (.onnx files, bundled names) combine into an ensemble the same way, "
                    "checked against the members' mean with onnxruntime.",
    )
    p.add_argument("run", nargs="+",
                   help="run directory (uses best.pt) or checkpoint .pt; several: an ensemble. Or exported models "
                        "(.onnx or bundled names, not mixed with runs): their ensemble")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="ensemble only: one positive weight per run (default: equal weights)")
    p.add_argument("--out", help="output .onnx path (an existing file is replaced only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--half", action="store_true",
                   help="with .onnx members: store the weights as float16 (half the file; inference stays float32)")
    p.add_argument("--split", metavar="DIR",
                   help="write each member of one ensemble .onnx as its own .onnx in DIR (instead of --out)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="with one exported model: write its static int8 quantization (onnxruntime QDQ; 1.5x "
                        "faster on a 2-core AVX2 CPU), calibrated on Training faces of --data")
    p.add_argument("--calibrate", action="store_true",
                   help="with one exported model or one training run: fit the temperature of its probabilities on "
                        "PublicTest of --data (minimum log-loss) and write it into the .onnx; predictions do not "
                        "change, confidences do")
    p.add_argument("--ferplus", default=None,
                   help="--calibrate a FER+ (8-class) model: FER+ fer2013new.csv (default: the path recorded at training)")
    p.add_argument("--data", help="--quantize: the FER2013 CSV the model was trained on (its Training split "
                                  "calibrates the int8 scales); --calibrate: the CSV whose PublicTest fits the temperature")
    p.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help="--quantize: random Training faces for the int8 scales (default 1024)")
    p.add_argument("--seed", type=int, default=None, help="--quantize: seed of the calibration sample (default 0)")
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
    import os
    import sys

    from ..errors import FerkitError
    from ..evaluate import is_onnx_ref

    onnx_in = [is_onnx_ref(r) for r in args.run]
    if args.quantize and args.calibrate:
        raise FerkitError("--quantize and --calibrate are two steps: quantize first, then calibrate the int8 file")
    if not args.calibrate and args.ferplus:
        raise FerkitError("--ferplus is for --calibrate")
    if not args.quantize and (args.calibration_images is not None or args.seed is not None):
        raise FerkitError("--calibration-images and --seed are for --quantize")
    if not (args.quantize or args.calibrate) and args.data:
        raise FerkitError("--data is for --quantize and --calibrate")
    if args.split is not None:
        if len(args.run) != 1 or not onnx_in[0] or args.out or args.half or args.weights or args.tta:
            raise FerkitError("--split takes one ensemble .onnx (or bundled name) and no other option")
        from ..onnx_ensemble import split_ensemble

        for path in split_ensemble(args.run[0], args.split):
            print(f"wrote {path}")
        return 0
    if not args.out:
        raise FerkitError("give --out model.onnx (or --split DIR for an ensemble's members)")
    if os.path.isfile(args.out) and not args.overwrite:
        raise FerkitError(f"--out {args.out} exists; pass --overwrite to replace it, or choose another name")
    if args.calibrate:
        from ..calibrate import calibrate_onnx

        extra = {"ferplus": args.ferplus} if args.ferplus else {}
        if len(args.run) == 1 and not onnx_in[0]:  # a training run: export it, then calibrate that export
            if args.half or args.weights:
                raise FerkitError("--calibrate with a training run exports one network: no --half or --weights")
            if not args.data:
                raise FerkitError("--calibrate needs --data FER2013.csv: its PublicTest split fits the temperature")
            import tempfile
            from pathlib import Path

            from ..export import export_onnx
            from ..onnx_ensemble import _out_path

            _out_path(args.out)  # a bad --out is refused before the export, not after it

            with tempfile.TemporaryDirectory(prefix="ferkit-export-") as tmp, contextlib.redirect_stdout(sys.stderr):
                raw = Path(tmp) / "raw.onnx"
                export_onnx(args.run[0], raw, opset=args.opset, tta=args.tta, exporter=args.exporter)
                info = calibrate_onnx(raw, args.out, data=args.data, source=str(args.run[0]), **extra)
        else:
            _one_exported_model(args, onnx_in, "--calibrate", "its PublicTest split fits the temperature")
            with contextlib.redirect_stdout(sys.stderr):
                info = calibrate_onnx(args.run[0], args.out, data=args.data, **extra)
        b, a = info["before"], info["after"]
        summary = (f"temperature {info['temperature']:g} fitted on {info['split']} ({info['n']} faces, tta "
                   f"{info['tta']}): log-loss {b['nll']:.4f} -> {a['nll']:.4f}, ECE {b['ece']:.2%} -> {a['ece']:.2%}, "
                   f"mean top probability {b['confidence']:.2%} -> {a['confidence']:.2%}")
        return _report(info, summary, args.json)
    if args.quantize:
        _one_exported_model(args, onnx_in, "--quantize", "the Training faces that set the int8 scales")
        from ..quantize import DEFAULT_CALIBRATION_IMAGES, quantize_onnx

        n = DEFAULT_CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images
        info = quantize_onnx(args.run[0], args.out, data=args.data, mode=args.quantize, n_images=n,
                             seed=0 if args.seed is None else args.seed)
        cal = info["metadata"]["provenance"]["quantization"]["calibration"]
        summary = (f"int8 (QDQ, {info['quantized_nodes']} dequantized tensors) of {info['source']}, calibrated on "
                   f"{cal['images']} Training faces (seed {cal['seed']}); top-1 agreement with the source on them "
                   f"{info['agreement']:.2%}, max |p - p_source| = {info['max_prob_diff']:.3f}")
        return _report(info, summary, args.json)
    if any(onnx_in):
        if not all(onnx_in):
            raise FerkitError("give either training runs or exported .onnx models, not both "
                              "(export the runs first: ferkit export RUN --out run.onnx)")
        if args.exporter != "auto" or args.opset != 17:
            raise FerkitError("--exporter and --opset are for exporting runs; .onnx members keep their graphs")
        from ..onnx_ensemble import combine_onnx

        info = combine_onnx(args.run, args.out, weights=args.weights, tta=args.tta, half=args.half)
        meta = info["metadata"]
        summary = (f"ensemble of {len(info['members'])} ({', '.join(m['arch'] for m in meta['arch_kwargs']['members'])}), "
                   f"weights {', '.join(f'{w:.3f}' for w in info['weights'])}, {meta['provenance']['weights_dtype']}, "
                   f"tta {meta['tta']}, max |file - members' mean| = {info['max_abs_diff']:.2e}")
        return _report(info, summary, args.json)
    if args.half:
        raise FerkitError("--half is for combining exported .onnx models")
    from ..export import export_ensemble, export_onnx

    with contextlib.redirect_stdout(sys.stderr):
        if len(args.run) > 1:
            info = export_ensemble(args.run, args.out, opset=args.opset, weights=args.weights, tta=args.tta,
                                   exporter=args.exporter)
        elif args.weights is not None:
            raise FerkitError("--weights is for an ensemble: give two or more runs")
        else:
            info = export_onnx(args.run[0], args.out, opset=args.opset, tta=args.tta, exporter=args.exporter)
    meta = info["metadata"]
    summary = (f"{meta['arch']}, labels {', '.join(meta['labels'])}, input (N, 1, {meta['input_size']}, "
               f"{meta['input_size']}), opset {info['opset']}, exporter {info['exporter']}, tta {meta['tta']}, "
               f"max |onnx - torch| = {info['max_abs_diff']:.2e}")
    return _report(info, summary, args.json)


def _one_exported_model(args: argparse.Namespace, onnx_in: list[bool], flag: str, data_for: str) -> None:
    """--quantize / --calibrate: exactly one exported model, its graph and TTA kept, and --data."""
    from ..errors import FerkitError

    if len(args.run) != 1 or not onnx_in[0]:
        raise FerkitError(f"{flag} takes one exported model (.onnx or bundled name); export a run first")
    if args.half or args.weights or args.tta or args.exporter != "auto" or args.opset != 17:
        raise FerkitError(f"{flag} keeps the model's graph and TTA: no --half, --weights, --tta, --exporter or "
                          "--opset with it")
    if not args.data:
        raise FerkitError(f"{flag} needs --data FER2013.csv: {data_for}")


def _report(info: dict, summary: str, as_json: bool) -> int:
    import json

    print(json.dumps(info) if as_json else f"wrote {info['path']} ({info['bytes'] / 1e6:.2f} MB): {summary}")
    return 0
