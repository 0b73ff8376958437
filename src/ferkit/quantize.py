"""int8 quantization of an exported model: ``ferkit export MODEL --quantize int8 --data fer2013.csv --out M.onnx``.

onnxruntime's static quantization (``onnxruntime.quantization.quantize_static``) in QDQ form: activations
uint8, weights int8 per output channel, scales from the minimum and maximum seen on calibration faces (random
images of the FER2013 **Training** split only, prepared with the model's own preprocessing). The result still
takes float32 faces and gives float32 logits, carries the source model's ferkit metadata (labels,
preprocessing, test-time augmentation, provenance) plus a ``quantization`` record in its provenance, and runs
through :class:`ferkit.runtime.EmotionClassifier` like any other model. On a 2-core AVX2 CPU a ``fastres_s``
runs 1.5x faster than in float32 through ``EmotionClassifier`` (preprocessing included;
``benchmarks/bench_bundled.py``) and 1.9x in onnxruntime alone.

Weights use 7 of their 8 bits (``reduce_range``): CPUs without VNNI (AVX2, plain AVX-512) multiply uint8 by
int8 into 16-bit sums that saturate with full-range weights, which cost the bundled default 1.8 points of
PublicTest accuracy in a pilot (63.75% against 65.51%; 65.23% with 7-bit weights). The written file is checked
against its source on the calibration faces: at least ``min_agreement`` of the top-1 predictions must be the
same, or nothing is written.

A model stored with float16 weights (an ensemble written with ``--half``) is first widened exactly to float32
(:func:`ferkit.onnx_ensemble.float_weights`: each float16 tensor becomes the float32 tensor its Cast made), so
the int8 scales come from the weights the file really computes with.
"""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FerkitError
from .preprocess import PreprocessSpec, prepare_faces
from .runtime import resolve_model_path

QUANT_MODES = ("int8",)
DEFAULT_CALIBRATION_IMAGES = 1024
MIN_AGREEMENT = 0.97


def calibration_faces(data, n: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``n`` random uint8 faces of the Training split of a FER2013 CSV (without replacement, ``seed``)."""
    from .data.fer2013 import load_fer2013

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise FerkitError(f"calibration images must be a positive integer, got {n!r}")
    fer = load_fer2013(data)
    train = fer.split("Training")
    if train.size == 0:
        raise FerkitError(f"{data} has no Training rows to calibrate on (test splits are never used)")
    pick = np.sort(np.random.default_rng(seed).choice(train, size=min(n, train.size), replace=False))
    return fer.images[pick], {"data_sha256": fer.sha256, "split": "Training", "images": int(pick.size), "seed": seed}


def _logits(run, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([run(x[i:i + batch]) for i in range(0, len(x), batch)])


def quantize_onnx(model, out_path: str | os.PathLike, *, data, mode: str = "int8",
                  n_images: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0,
                  min_agreement: float = MIN_AGREEMENT) -> dict[str, Any]:
    """Write the int8 quantization of ``model`` (an ``.onnx`` path or bundled name) to ``out_path``.

    ``data``: the FER2013 CSV whose Training split provides ``n_images`` calibration faces (``seed``).
    Returns ``{"path", "bytes", "source", "agreement", "max_prob_diff", "quantized_nodes", "metadata"}``.
    """
    if mode not in QUANT_MODES:
        raise FerkitError(f"unknown quantization {mode!r}; choose one of {', '.join(QUANT_MODES)}")
    try:
        import onnx
        import onnxruntime
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:  # pragma: no cover - onnx comes with the train extra
        raise FerkitError(f"quantization needs onnx and onnxruntime ({e}): pip install 'ferkit[train]'") from None
    from .data.fer2013 import file_sha256
    from .export import set_ferkit_metadata
    from .metrics import softmax
    from .onnx_ensemble import _load, _out_path, _session, _write, float_weights, is_quantized

    out = _out_path(out_path)
    source_path = resolve_model_path(model)
    source, proto, meta = _load(model)
    prov = dict(meta.get("provenance") or {})
    if prov.get("quantization") or is_quantized(proto):  # the graph too: an ensemble of int8 networks has no record
        mode = (prov.get("quantization") or {}).get("mode") or "QuantizeLinear/DequantizeLinear nodes"
        raise FerkitError(f"{source} is already quantized ({mode})")
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    faces, calib = calibration_faces(data, n_images, seed)
    data_sha = (prov.get("data") or {}).get("data_sha256") or prov.get("data_sha256")
    if data_sha and data_sha != calib["data_sha256"]:
        raise FerkitError(f"{data} (sha256 {calib['data_sha256'][:12]}...) is not the data file {source} was "
                          f"trained on (sha256 {data_sha[:12]}...); calibrate on that file's Training split")
    x = prepare_faces(faces, spec)
    input_name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{input_name: x[i:i + 64]} for i in range(0, len(x), 64)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="ferkit-quant-") as tmp_dir:
        tmp = Path(tmp_dir)
        widened = float_weights(proto)  # 0 for a model stored in float32
        if widened:
            onnx.save(proto, str(tmp / "float32.onnx"))
        quant_pre_process(str(tmp / "float32.onnx") if widened else str(source_path), str(tmp / "pre.onnx"))
        quantize_static(str(tmp / "pre.onnx"), str(tmp / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=True)
        qproto = onnx.load(str(tmp / "q.onnx"))
        n_quant = sum(1 for n in qproto.graph.node if n.op_type == "DequantizeLinear")
        if n_quant == 0:
            raise FerkitError(f"onnxruntime quantized nothing in {source}; nothing was written")
        quantization = {
            "mode": mode, "format": "QDQ", "activations": "uint8", "weights": "int8 per channel, 7-bit range",
            "calibration": {**calib, "method": "MinMax"}, "source": str(model), "source_sha256": file_sha256(source_path),
            **({"source_weights": f"float16, {widened} tensors widened exactly to float32 before quantization"}
               if widened else {}),
            "onnxruntime": onnxruntime.__version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        new_prov = {**prov, "quantization": quantization}
        if "weights_dtype" in prov:  # an ensemble's record of how its weights are stored
            new_prov["weights_dtype"] = "int8"
        new_meta = {**meta, "provenance": new_prov}
        set_ferkit_metadata(qproto, new_meta)
        qproto.doc_string = (proto.doc_string + " " if proto.doc_string else "") + "(int8, static QDQ quantization)"
        onnx.checker.check_model(qproto)
        tmp_out = _write(qproto, out)
        try:
            p_ref = softmax(_logits(_session(str(source_path)), x))
            p_q = softmax(_logits(_session(str(tmp_out)), x))
            agreement = float((p_ref.argmax(1) == p_q.argmax(1)).mean())
            max_diff = float(np.abs(p_ref - p_q).max())
            if not agreement >= min_agreement:
                raise FerkitError(f"the int8 model agrees with {source} on only {agreement:.1%} of the "
                                  f"{len(x)} calibration faces (< {min_agreement:.0%}); nothing was written")
            os.replace(tmp_out, out)
        finally:
            if tmp_out.exists():
                tmp_out.unlink()
    return {"path": str(out), "bytes": out.stat().st_size, "source": str(model), "agreement": agreement,
            "max_prob_diff": max_diff, "quantized_nodes": n_quant, "metadata": new_meta}
