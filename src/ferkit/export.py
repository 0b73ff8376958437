"""Checkpoint -> one self-describing ``.onnx`` for the torch-free runtime (needs the ``train`` extra).

The file has one input ``input`` float32 (N, 1, S, S) with a dynamic batch axis N, and one output
``logits`` float32 (N, C). Its ``metadata_props`` hold JSON values (read back by :mod:`ferkit.runtime`):

  ferkit_format       "ferkit-onnx-1"
  ferkit_labels       label names, in output order
  ferkit_label_set    e.g. "fer7"
  ferkit_input_size   S (pixels)
  ferkit_preprocess   PreprocessSpec.to_dict(): what :func:`ferkit.preprocess.prepare_faces` must do
  ferkit_arch         architecture name (and ferkit_arch_kwargs)
  ferkit_tta          the model's default test-time augmentation ("none", "flip", "tencrop")
  ferkit_provenance   data sha256 and split info, training config/recipe, best epoch and its metrics,
                      the last epoch's metrics, ferkit and torch versions, exporter, opset, export date (UTC)

Exporter choice: the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the default in torch 2.13)
with the onnxscript optimiser. On ferkit's networks it gives a clean graph: BatchNorm folded into the
preceding Conv/Gemm, no shape-computation subgraphs, opset 18 (it does not emit below 18, which meets
the >= 17 requirement). The legacy TorchScript exporter (``dynamo=False``) leaves Shape/Gather/If chains
(e.g. around LocalResponseNorm) and unfolded BatchNorm after Linear layers; it is kept as a fallback for
a model the dynamo exporter cannot trace (``exporter="auto"``, the default, tries dynamo first).

The model is exported in float32, in eval mode. After writing, the file is loaded with onnxruntime and
its logits are compared with the torch model's on random faces at batch sizes 1 and 37 (the dynamic axis);
a difference above ``atol`` (1e-4) is an error and no file is left behind.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FerkitError
from .preprocess import PreprocessSpec, prepare_faces
from .runtime import METADATA_FORMAT
from .tta import normalize_tta

EXPORTERS = ("auto", "dynamo", "torchscript")


def _jsonable(x: Any) -> Any:
    """Best-effort conversion of config/history values to JSON types."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def checkpoint_data_info(ckpt: dict) -> dict:
    """The splits' info recorded with a checkpoint (data path, data_sha256, label set, split, seed, ...)."""
    info = ckpt.get("data")
    if not isinstance(info, dict):
        info = (ckpt.get("config") or {}).get("data")
    if not isinstance(info, dict):
        info = {}
    return info


def checkpoint_provenance(ckpt: dict) -> dict[str, Any]:
    """Provenance of a checkpoint as a JSON-ready dict (also used by ``ferkit evaluate``)."""
    from . import __version__

    history = ckpt.get("history") or []
    best_epoch = ckpt.get("best_epoch")
    best_record = None
    if best_epoch is not None:
        for rec in history:
            if isinstance(rec, dict) and rec.get("epoch") == best_epoch:
                best_record = rec
    data = checkpoint_data_info(ckpt)
    return _jsonable({
        "data_sha256": data.get("data_sha256"),
        "data": data,
        "config": ckpt.get("config") or {},
        "epochs_completed": ckpt.get("epoch"),
        "best_epoch": best_epoch,
        "best_val_acc": ckpt.get("best_val_acc"),
        "best_metrics": best_record,
        "last_metrics": history[-1] if history else None,
        "train_time_s": round(sum(float(r.get("epoch_time_s") or 0) for r in history if isinstance(r, dict)), 1)
        if history else None,
        "checkpoint": os.path.basename(str(ckpt.get("path", ""))) or None,
        "ferkit_version": __version__,
    })


def _load(run_or_checkpoint) -> dict:
    from .checkpoint import load_checkpoint

    if isinstance(run_or_checkpoint, dict):
        return run_or_checkpoint
    return load_checkpoint(run_or_checkpoint)


@contextmanager
def _quiet_loggers(*names: str):
    """Silence the exporters' informational logging (torchvision-missing notes, version-conversion chatter)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export_graph(model, example, path: Path, opset: int, exporter: str) -> str:
    """Write the bare graph to ``path``; returns the exporter actually used."""
    import torch

    def dynamo():
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()), _quiet_loggers("torch.onnx", "torch.export", "onnxscript"):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(  # the dynamo exporter has no opset below 18: ask for 18 rather than down-convert
                model, (example,), None, input_names=["input"], output_names=["logits"], opset_version=max(opset, 18),
                dynamo=True, dynamic_shapes=({0: batch},), optimize=True, verbose=False, external_data=False,
            )
        prog.save(str(path), external_data=False)
        return "dynamo"

    def torchscript():
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(path), input_names=["input"], output_names=["logits"], opset_version=opset,
                dynamo=False, do_constant_folding=True,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        return "torchscript"

    if exporter == "dynamo":
        return dynamo()
    if exporter == "torchscript":
        return torchscript()
    try:
        return dynamo()
    except Exception as e:  # noqa: BLE001 - any tracing failure: fall back to the legacy exporter
        warnings.warn(f"dynamo ONNX export failed ({type(e).__name__}: {str(e)[:200]}); using the TorchScript exporter")
        return torchscript()


def verify_onnx(model, onnx_path: str | os.PathLike, spec: PreprocessSpec, *, atol: float = 1e-4,
                batch_sizes=(1, 37), seed: int = 0) -> float:
    """Max |onnxruntime logits - torch logits| over random faces at each batch size; raises if above ``atol``."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in batch_sizes:
        faces = rng.integers(0, 256, size=(n, spec.size, spec.size), dtype=np.uint8)
        x = prepare_faces(faces, spec)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).float().numpy()
        out = sess.run(["logits"], {"input": x})[0]
        if out.shape != ref.shape:
            raise FerkitError(f"ONNX export check failed: output shape {out.shape} != torch {ref.shape} at batch {n}")
        worst = max(worst, float(np.abs(out - ref).max()))
    if not worst <= atol:
        raise FerkitError(f"ONNX export check failed: onnxruntime and torch logits differ by {worst:.3g} > {atol:g}")
    return worst


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def onnx_opset(proto, default: int = 0) -> int:
    """The default-domain opset an ONNX model imports (``default`` if none)."""
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=default)


def set_ferkit_metadata(proto, meta: dict[str, Any]) -> None:
    """Replace ``proto``'s metadata_props by ``ferkit_<key>`` = JSON of each value (read by the runtime)."""
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key = f"ferkit_{k}"
        entry.value = json.dumps(v, sort_keys=True)


def give_file_mode(path) -> None:
    """mkstemp makes a file private (0600); give it a normal file's mode (0666 less the umask)."""
    os.chmod(path, 0o666 & ~_umask())


def _check_export_args(out_path, opset: int, exporter: str) -> Path:
    if exporter not in EXPORTERS:
        raise FerkitError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if opset < 17:
        raise FerkitError(f"opset must be at least 17, got {opset}")
    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise FerkitError(f"the output file should end in .onnx, got {out_path}")
    return out_path


def _load_complete(run_or_checkpoint) -> dict:
    ckpt = _load(run_or_checkpoint)
    for key in ("arch", "num_classes", "labels", "model"):
        if key not in ckpt:
            raise FerkitError(f"checkpoint lacks {key!r}; is it a complete ferkit checkpoint?")
    if len(ckpt["labels"]) != int(ckpt["num_classes"]):
        raise FerkitError(f"checkpoint names {len(ckpt['labels'])} labels for {ckpt['num_classes']} classes")
    return ckpt


def export_onnx(
    run_or_checkpoint,
    out_path: str | os.PathLike,
    opset: int = 17,
    *,
    tta: str | bool | None = None,
    exporter: str = "auto",
    atol: float = 1e-4,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a run directory / checkpoint file / loaded checkpoint dict to one ``.onnx`` file.

    opset: the minimum opset requested (the dynamo exporter writes >= 18).
    tta: the model's default test-time augmentation stored as ``ferkit_tta`` (None: the checkpoint's
        ``config['tta']`` if any, else ``"none"``).
    exporter: ``auto`` (dynamo, falling back to TorchScript), ``dynamo`` or ``torchscript``.
    extra_metadata: more JSON-able values stored as ``ferkit_<key>`` (e.g. a model card summary).

    Returns a summary: path, size in bytes, exporter, opset, max_abs_diff, node op counts, metadata.
    """
    from .checkpoint import build_model

    out_path = _check_export_args(out_path, opset, exporter)
    ckpt = _load_complete(run_or_checkpoint)
    spec = PreprocessSpec.from_dict(ckpt.get("preprocess"))
    labels = [str(x) for x in ckpt["labels"]]
    if tta is None:
        tta = (ckpt.get("config") or {}).get("tta")
    tta = normalize_tta(tta)

    model = build_model(ckpt).float().eval()
    meta = {
        "format": METADATA_FORMAT,
        "labels": labels,
        "label_set": ckpt.get("label_set"),
        "input_size": spec.size,
        "preprocess": spec.to_dict(),
        "arch": ckpt["arch"],
        "arch_kwargs": _jsonable(ckpt.get("arch_kwargs") or {}),
        "tta": tta,
        "provenance": checkpoint_provenance(ckpt),
    }
    doc = f"ferkit {ckpt['arch']} emotion classifier ({', '.join(labels)}); input (N,1,{spec.size},{spec.size})"
    return _write_verified(model, spec, out_path, meta, doc, opset=opset, exporter=exporter, atol=atol,
                           extra_metadata=extra_metadata)


def _write_verified(model, spec: PreprocessSpec, out_path: Path, meta: dict[str, Any], doc: str, *, opset: int,
                    exporter: str, atol: float, extra_metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Export ``model`` to a temporary file, add ``meta`` as ``ferkit_*`` metadata, check the file against
    the torch model with onnxruntime, then move it to ``out_path`` (nothing is left behind on failure)."""
    import onnx
    import torch

    example = torch.from_numpy(prepare_faces(np.zeros((2, spec.size, spec.size), np.uint8) + 128, spec))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", prefix=out_path.stem + ".", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        used = _export_graph(model, example, tmp, opset, exporter)
        proto = onnx.load(str(tmp))
        actual_opset = onnx_opset(proto, default=opset)
        meta["provenance"].update({
            "torch_version": torch.__version__,
            "exporter": used,
            "opset": actual_opset,
            "export_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
        for k, v in (extra_metadata or {}).items():
            k = k[len("ferkit_"):] if k.startswith("ferkit_") else k
            if k in meta:
                raise FerkitError(f"extra metadata key {k!r} would overwrite ferkit's own")
            meta[k] = _jsonable(v)
        set_ferkit_metadata(proto, meta)
        proto.doc_string = doc
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        diff = verify_onnx(model, tmp, spec, atol=atol)
        give_file_mode(tmp)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "path": str(out_path), "bytes": out_path.stat().st_size, "exporter": used, "opset": actual_opset,
        "max_abs_diff": diff, "ops": ops, "metadata": meta,
    }


def check_ensemble_members(members: list[tuple[str, list, dict | None, dict | None]]) -> None:
    """Refuse members (name, labels, preprocess dict, training-data info) that cannot be averaged: other
    labels or preprocessing than the first member's, or another data file or split (then one member's
    training images may be another's test images)."""
    from .data.splits import training_data_mismatch

    _, first_labels, first_pre, first_data = members[0]
    for i, (name, labels, pre, data) in enumerate(members):
        if not isinstance(data, dict):
            raise FerkitError(f"ensemble member {name} has no record of its training data, so it cannot be "
                              "checked that the members share one data file and split")
        if i == 0:
            continue
        if [str(x) for x in labels] != [str(x) for x in first_labels]:
            raise FerkitError(f"ensemble member {name} predicts {list(labels)}, the first member {list(first_labels)}")
        if PreprocessSpec.from_dict(pre) != PreprocessSpec.from_dict(first_pre):
            raise FerkitError(f"ensemble member {name} uses other preprocessing than the first member")
        key = training_data_mismatch(data, first_data)
        if key is not None:
            raise FerkitError(
                f"ensemble member {name} was trained with {key} {data.get(key)!r}, the first member with "
                f"{first_data.get(key)!r}: members must share the data file and split, or one member's "
                "training images may be another's test images")


def export_ensemble(
    runs_or_checkpoints: list,
    out_path: str | os.PathLike,
    opset: int = 17,
    *,
    weights: list[float] | None = None,
    tta: str | bool | None = None,
    exporter: str = "auto",
    atol: float = 1e-4,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export several trained models as one ``.onnx`` whose softmax is the weighted mean of theirs.

    The members must predict the same labels from the same preprocessing, and must have been trained on
    the same data file with the same split (a member trained on a random split has seen the other
    members' test images). ``ferkit_arch`` is ``"ensemble"``; ``ferkit_arch_kwargs`` lists the members'
    architectures and weights, and ``ferkit_provenance["members"]`` holds each member's full provenance.
    ``tta`` is the ensemble's default test-time augmentation (None: ``"none"``).
    """
    from .checkpoint import build_model
    from .models.ensemble import EnsembleNet

    out_path = _check_export_args(out_path, opset, exporter)
    if len(runs_or_checkpoints) < 2:
        raise FerkitError("an ensemble needs at least two members")
    ckpts = [_load_complete(r) for r in runs_or_checkpoints]
    names = [str(r) if not isinstance(r, dict) else str(c.get("path", f"member {i}"))
             for i, (r, c) in enumerate(zip(runs_or_checkpoints, ckpts))]
    first = ckpts[0]
    first_data = checkpoint_data_info(first)
    check_ensemble_members([(name, c["labels"], c.get("preprocess"), checkpoint_data_info(c))
                            for name, c in zip(names, ckpts)])
    spec = PreprocessSpec.from_dict(first.get("preprocess"))
    labels = [str(x) for x in first["labels"]]
    net = EnsembleNet([build_model(c).float().eval() for c in ckpts], weights).eval()
    members = [checkpoint_provenance(c) for c in ckpts]
    for name, m in zip(names, members):
        m["source"] = name
    meta = {
        "format": METADATA_FORMAT,
        "labels": labels,
        "label_set": first.get("label_set"),
        "input_size": spec.size,
        "preprocess": spec.to_dict(),
        "arch": "ensemble",
        "arch_kwargs": {"members": [{"arch": c["arch"], "arch_kwargs": _jsonable(c.get("arch_kwargs") or {}),
                                     "weight": w} for c, w in zip(ckpts, net.weights)]},
        "tta": normalize_tta(tta),
        "provenance": {
            "data_sha256": first_data.get("data_sha256"), "data": _jsonable(first_data), "members": members,
            "train_time_s": round(sum(m.get("train_time_s") or 0 for m in members), 1),
            "ferkit_version": members[0].get("ferkit_version"),
        },
    }
    doc = (f"ferkit ensemble of {len(ckpts)} emotion classifiers ({', '.join(c['arch'] for c in ckpts)}; "
           f"{', '.join(labels)}); input (N,1,{spec.size},{spec.size})")
    return _write_verified(net, spec, out_path, meta, doc, opset=opset, exporter=exporter, atol=atol,
                           extra_metadata=extra_metadata)
