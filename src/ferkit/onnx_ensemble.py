"""Ensembles built from exported ``.onnx`` files, without the checkpoints (needs ``onnx``, not torch).

A run's checkpoint stays on the machine that trained it; the ``.onnx`` it was exported to is what gets
bundled, shared and kept. These functions work on those files:

``combine_onnx(["a.onnx", "accurate", ...], "out.onnx", weights=None, tta="flip", half=True)``
    One file whose softmax is the weighted mean of its members' softmax, like
    :func:`ferkit.export.export_ensemble` writes from checkpoints. A member that is itself an ensemble
    is opened into its own members (each keeps its share of that ensemble's weight), so the result is
    always a flat ensemble with one network per member. ``half=True`` stores the weights as float16
    with a Cast to float32 in front of each (the file is half the size; onnxruntime folds the casts
    when it loads the model, so inference is float32 as before and as fast).
``split_ensemble("accurate", "members/")``
    The inverse: each member of an ensemble ``.onnx`` as its own file with its own metadata.

Members must predict the same labels from the same preprocessing and have been trained on the same data
file and split (checked on their metadata, as for checkpoints). Every written file is checked with
onnxruntime on random faces at batch sizes 1 and 37: its probabilities must equal the weighted mean of
the members' (``atol`` 1e-5 in float32; float16 weights move probabilities by up to ``half_atol``), or no
file is left behind.
"""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FerkitError
from .ensemble import normalized_weights
from .export import check_ensemble_members, give_file_mode, onnx_opset, set_ferkit_metadata
from .metrics import softmax
from .preprocess import PreprocessSpec, prepare_faces
from .runtime import METADATA_FORMAT, parse_metadata, resolve_model_path
from .tta import normalize_tta

HALF_MIN_ELEMENTS = 16  # smaller float32 tensors (scalars, the ensemble weights) stay float32


@dataclass
class Member:
    """One network: a graph whose only output is its logits, its metadata, and its weight."""
    source: str
    proto: Any  # onnx.ModelProto
    meta: dict[str, Any]
    weight: float


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx comes with the train extra
        raise FerkitError("combining .onnx files needs the onnx package: pip install 'ferkit[train]'") from None
    return onnx


def _load(model) -> tuple[str, Any, dict[str, Any]]:
    onnx = _onnx()
    path = resolve_model_path(model)
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises several kinds for a file that is not ONNX
        raise FerkitError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    meta = parse_metadata({p.key: p.value for p in proto.metadata_props}, source=str(path))
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise FerkitError(f"{path} has {len(proto.graph.input)} inputs and {len(proto.graph.output)} outputs; "
                          "a ferkit model has one of each")
    return str(model), proto, meta


def _member_logits(proto, meta: dict[str, Any], source: str) -> list[str]:
    """The tensors holding each member's logits in an ensemble graph: the inputs of its Softmax nodes."""
    members = (meta.get("arch_kwargs") or {}).get("members") or []
    found = [n.input[0] for n in proto.graph.node if n.op_type == "Softmax"]
    if len(found) != len(members) or not members:
        raise FerkitError(f"{source} is an ensemble of {len(members)} members but its graph has {len(found)} "
                          "Softmax nodes, so its members cannot be told apart")
    return found


def _extract(proto, logits: str, meta: dict[str, Any], index: int, source: str) -> tuple[Any, dict[str, Any]]:
    """Member ``index`` of an ensemble graph as a model of its own (output renamed ``logits``) and its metadata."""
    onnx = _onnx()
    from onnx.utils import Extractor

    if logits not in {v.name for v in proto.graph.value_info}:  # the extractor needs the tensor's type
        proto = onnx.shape_inference.infer_shapes(proto)
    sub = Extractor(proto).extract_model([proto.graph.input[0].name], [logits])
    for node in sub.graph.node:
        for k, name in enumerate(node.output):
            if name == logits:
                node.output[k] = "logits"
    sub.graph.output[0].name = "logits"
    sub.ir_version = proto.ir_version
    del sub.opset_import[:]
    sub.opset_import.extend(proto.opset_import)
    info = meta["arch_kwargs"]["members"][index]
    provs = (meta.get("provenance") or {}).get("members") or []
    prov = dict(provs[index]) if index < len(provs) else {}
    prov.setdefault("source", f"{source}#{index}")
    ens_q = (meta.get("provenance") or {}).get("quantization")
    if ens_q and not prov.get("quantization") and is_quantized(sub):
        # quantized with the whole ensemble (``ferkit export ENSEMBLE --quantize int8``): keep that record
        prov["quantization"] = {**ens_q, "scope": f"the ensemble {source}, all members at once"}
    sub_meta = {**{k: v for k, v in meta.items() if k != "temperature"},  # the ensemble's, not a member's
                "arch": info.get("arch"), "arch_kwargs": info.get("arch_kwargs") or {}, "tta": "none",
                "provenance": prov}
    set_ferkit_metadata(sub, sub_meta)
    onnx.checker.check_model(sub)
    return sub, sub_meta


def is_quantized(proto) -> bool:
    """Whether a graph is int8 (it has QuantizeLinear / DequantizeLinear nodes, as ``--quantize int8`` writes)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)


def _weights_dtype(members: list[Member], half: bool) -> str:
    """How the combined file stores its members' weights: one dtype, or the members' dtypes when they differ."""
    kinds = ["int8" if is_quantized(m.proto) else ("float16" if half else "float32") for m in members]
    return kinds[0] if len(set(kinds)) == 1 else "mixed: " + ", ".join(kinds)


def _expand(source: str, proto, meta: dict[str, Any], weight: float) -> list[Member]:
    if meta.get("arch") != "ensemble":
        return [Member(source, proto, meta, weight)]
    members = meta["arch_kwargs"]["members"]
    out = []
    for i, logits in enumerate(_member_logits(proto, meta, source)):
        sub, sub_meta = _extract(proto, logits, meta, i, source)
        out.append(Member(sub_meta["provenance"]["source"], sub, sub_meta,
                          weight * float(members[i].get("weight", 1.0 / len(members)))))
    return out


def half_weights(proto, min_elements: int = HALF_MIN_ELEMENTS) -> int:
    """Store the float32 initializers of ``proto`` (in place) as float16, each behind a Cast to float32.

    The scales and zero points of int8 (QDQ) parts stay float32: they set the int8 grid, and rounding them to
    float16 moves every weight they scale. Returns the number of tensors converted. A value beyond float16's
    range is an error (nothing changed)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    quant = {name for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for name in n.input[1:]}
    todo = [t for t in graph.initializer
            if t.data_type == TensorProto.FLOAT and int(np.prod(t.dims)) >= min_elements and t.name not in quant]
    arrays = {}
    for t in todo:
        a = numpy_helper.to_array(t)
        if np.abs(a).max(initial=0.0) > np.finfo(np.float16).max:
            raise FerkitError(f"weight {t.name!r} exceeds float16's range; store this model in float32")
        arrays[t.name] = a.astype(np.float16)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    casts, keep = [], [t for t in graph.initializer if t.name not in arrays]
    for name, a in arrays.items():
        half_name = f"{name}__f16"
        while half_name in taken:
            half_name += "_"
        keep.append(numpy_helper.from_array(a, half_name))
        casts.append(helper.make_node("Cast", [half_name], [name], to=TensorProto.FLOAT, name=f"{half_name}_cast"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(proto)
    return len(casts)


def float_weights(proto) -> int:
    """The inverse of :func:`half_weights`, in place: each float16 initializer read through a Cast to float32
    becomes the float32 tensor that Cast produced (exact: every float16 value is a float32 value), and the
    Cast goes. Returns the number of tensors widened; the graph computes exactly what it did before."""
    onnx = _onnx()
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    uses = Counter(i for n in graph.node for i in n.input)
    nodes = list(graph.node)
    cast_at = {i for i, n in enumerate(nodes) if n.op_type == "Cast" and len(n.input) == 1 and n.input[0] in inits
               and inits[n.input[0]].data_type == TensorProto.FLOAT16 and uses[n.input[0]] == 1
               and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)}
    casts = [nodes[i] for i in sorted(cast_at)]
    widened = [numpy_helper.from_array(numpy_helper.to_array(inits[n.input[0]]).astype(np.float32), n.output[0])
               for n in casts]
    gone = {n.input[0] for n in casts}
    keep_nodes = [n for i, n in enumerate(nodes) if i not in cast_at]
    keep_inits = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits + widened)
    del graph.node[:]
    graph.node.extend(keep_nodes)
    onnx.checker.check_model(proto)
    return len(casts)


def _session(proto_or_path):
    """An onnxruntime session (one thread) on a ModelProto or a file; ``run(x)`` gives the logits."""
    import onnxruntime as ort

    data = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") else str(proto_or_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _probe_faces(spec: PreprocessSpec) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [prepare_faces(rng.integers(0, 256, (n, spec.size, spec.size), dtype=np.uint8), spec) for n in (1, 37)]


def _verify(whole, members: list[Member], spec: PreprocessSpec, atol: float) -> float:
    """Largest |p_whole - sum_i w_i p_i| over the probe faces (``whole``: a file or a ModelProto);
    above ``atol`` is an error."""
    runs = [(m.weight, _session(m.proto)) for m in members]
    run_whole = _session(whole)
    diff = 0.0
    for x in _probe_faces(spec):
        want = sum(w * softmax(run(x)) for w, run in runs)
        got = softmax(run_whole(x))
        diff = max(diff, float(np.abs(got - want).max()))
    if not diff <= atol:
        raise FerkitError(f"the ensemble's probabilities differ from the mean of its members' by {diff:.2e} "
                          f"(> {atol:.0e}); nothing was written")
    return diff


def _write(proto, out_path: Path) -> Path:
    """Save to a temporary file next to ``out_path`` (moved into place by the caller once verified)."""
    onnx = _onnx()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", prefix=out_path.stem + ".", dir=out_path.parent)
    os.close(fd)
    onnx.save(proto, tmp)
    give_file_mode(tmp)
    return Path(tmp)


def _out_path(out_path) -> Path:
    out = Path(out_path)
    if out.suffix != ".onnx":
        raise FerkitError(f"output must be an .onnx path, got {out}")
    if out.is_dir():
        raise FerkitError(f"output {out} is a directory")
    return out


def combine_onnx(models: list, out_path: str | os.PathLike, *, weights: list[float] | None = None,
                 tta: str | bool | None = None, half: bool = False, atol: float = 1e-5,
                 half_atol: float = 2e-3) -> dict[str, Any]:
    """Write the ensemble of exported models (``.onnx`` paths or bundled names) as one ``.onnx``.

    ``weights``: one positive weight per model given (default equal); a model that is itself an ensemble
    shares its weight among its members as it did. ``tta``: the ensemble's default test-time augmentation
    (None: ``"none"``). ``half``: store the weights as float16 (see the module docstring).
    Returns ``{"path", "bytes", "members", "weights", "max_abs_diff", "metadata"}``.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    from onnx.compose import add_prefix

    from . import __version__

    out = _out_path(out_path)
    weights = normalized_weights(weights, len(models))
    loaded = [_load(m) for m in models]
    members: list[Member] = []
    for (source, proto, meta), w in zip(loaded, weights):
        members.extend(_expand(source, proto, meta, w))
    if len(members) < 2:
        raise FerkitError("an ensemble needs at least two member networks")
    check_ensemble_members([(m.source, m.meta["labels"], m.meta["preprocess"],
                             (m.meta.get("provenance") or {}).get("data")) for m in members])
    first = members[0]
    spec = PreprocessSpec.from_dict(first.meta["preprocess"])
    opset = max(onnx_opset(m.proto) for m in members)
    if opset < 13:
        raise FerkitError(f"members use ONNX opset {opset}; combining needs 13 or later (re-export them)")

    input_name = "input"
    nodes, inits, functions, value_info = [], [], [], []
    probs = []
    for i, m in enumerate(members):
        p = add_prefix(m.proto, f"m{i}/", rename_inputs=False)
        old_in = p.graph.input[0].name
        for node in p.graph.node:
            for k, name in enumerate(node.input):
                if name == old_in:
                    node.input[k] = input_name
        nodes.extend(p.graph.node)
        inits.extend(p.graph.initializer)
        functions.extend(p.functions)
        value_info.extend(p.graph.value_info)
        value_info.append(p.graph.output[0])  # the member's logits keep their type, so the file can be split again
        w_name = f"m{i}/ensemble_weight"
        inits.append(numpy_helper.from_array(np.array(m.weight, np.float32), w_name))
        nodes.append(helper.make_node("Softmax", [p.graph.output[0].name], [f"m{i}/prob"], axis=1,
                                      name=f"m{i}/softmax"))
        nodes.append(helper.make_node("Mul", [f"m{i}/prob", w_name], [f"m{i}/weighted"], name=f"m{i}/weigh"))
        probs.append(f"m{i}/weighted")
    inits.append(numpy_helper.from_array(np.array(1e-12, np.float32), "ensemble/eps"))
    nodes.append(helper.make_node("Sum", probs, ["ensemble/prob"], name="ensemble/sum"))
    nodes.append(helper.make_node("Max", ["ensemble/prob", "ensemble/eps"], ["ensemble/clamped"], name="ensemble/clamp"))
    nodes.append(helper.make_node("Log", ["ensemble/clamped"], ["logits"], name="ensemble/log"))
    inp = onnx.ValueInfoProto()
    inp.CopyFrom(first.proto.graph.input[0])
    inp.name = input_name
    n_classes = len(first.meta["labels"])
    batch = first.proto.graph.input[0].type.tensor_type.shape.dim[0]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                           [batch.dim_param or batch.dim_value or "N", n_classes])
    graph = helper.make_graph(nodes, "ferkit_ensemble", [inp], [output], initializer=inits, value_info=value_info)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], functions=functions)
    proto.ir_version = max(m.proto.ir_version for m in members)
    converted = half_weights(proto) if half else 0

    provs = []
    for m in members:
        prov = dict(m.meta.get("provenance") or {})
        prov["source"] = prov.get("source") or m.source
        provs.append(prov)
    data = first.meta["provenance"]["data"]
    meta = {
        "format": METADATA_FORMAT,
        "labels": first.meta["labels"],
        "label_set": first.meta.get("label_set"),
        "input_size": spec.size,
        "preprocess": spec.to_dict(),
        "arch": "ensemble",
        "arch_kwargs": {"members": [{"arch": m.meta.get("arch"), "arch_kwargs": m.meta.get("arch_kwargs") or {},
                                     "weight": m.weight} for m in members]},
        "tta": normalize_tta(tta),
        "provenance": {
            "data_sha256": data.get("data_sha256"), "data": data, "members": provs,
            "train_time_s": round(sum(float(p.get("train_time_s") or 0) for p in provs), 1),
            "ferkit_version": __version__, "exporter": "ferkit.onnx_ensemble.combine_onnx", "opset": opset,
            "weights_dtype": _weights_dtype(members, half), "sources": [s for s, _, _ in loaded],
            "export_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    set_ferkit_metadata(proto, meta)
    proto.doc_string = (f"ferkit ensemble of {len(members)} emotion classifiers "
                        f"({', '.join(str(m.meta.get('arch')) for m in members)}; {', '.join(meta['labels'])}); "
                        f"input (N,1,{spec.size},{spec.size})")
    onnx.checker.check_model(proto)
    tmp = _write(proto, out)
    try:
        diff = _verify(tmp, members, spec, half_atol if half else atol)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"path": str(out), "bytes": out.stat().st_size, "members": [m.source for m in members],
            "weights": [m.weight for m in members], "half_tensors": converted, "max_abs_diff": diff,
            "metadata": meta}


def split_ensemble(model, out_dir: str | os.PathLike, *, atol: float = 1e-5, int8_atol: float = 1e-2) -> list[Path]:
    """Write each member of an ensemble ``.onnx`` as ``<out_dir>/<stem>_member<i>.onnx``; returns the paths.

    The members' weighted mean is checked against the ensemble's output before anything is written: within
    ``atol``, or ``int8_atol`` for an int8 ensemble (``ferkit export --quantize int8`` also quantizes the
    weighted sum of the members' probabilities, in steps of about 1/255, which the members alone do not
    have: the bundled ``accurate`` differs from its members' mean by 2.9e-3)."""
    source, proto, meta = _load(model)
    if meta.get("arch") != "ensemble":
        raise FerkitError(f"{source} is a single network ({meta.get('arch')}), not an ensemble")
    members = _expand(source, proto, meta, 1.0)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    _verify(proto, members, spec, int8_atol if is_quantized(proto) else atol)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FerkitError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    stem = resolve_model_path(model).stem
    paths = []
    for i, m in enumerate(members):
        path = out / f"{stem}_member{i}.onnx"
        os.replace(_write(m.proto, path), path)
        paths.append(path)
    return paths
