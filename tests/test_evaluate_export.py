"""Metrics, evaluation (torch and ONNX), ONNX export and the `ferkit evaluate` / `ferkit export` commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402
from torch import nn  # noqa: E402

from conftest import FER_TO_FERPLUS_COLUMN, make_fer_csv, write_ferplus_csv  # noqa: E402
from ferkit import metrics  # noqa: E402
from ferkit.checkpoint import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from ferkit.cli import main as cli_main  # noqa: E402
from ferkit.data import prepare_splits  # noqa: E402
from ferkit.errors import FerkitError  # noqa: E402
from ferkit.evaluate import evaluate, save_report  # noqa: E402
from ferkit.export import export_onnx  # noqa: E402
from ferkit.models import register_model  # noqa: E402
from ferkit.preprocess import PreprocessSpec, prepare_faces  # noqa: E402
from ferkit.runtime import EmotionClassifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVAL_KEYS = {"accuracy", "loss", "macro_f1", "per_class", "confusion_matrix", "confusion_matrix_normalized",
             "true_counts", "pred_counts", "labels", "n", "split", "model", "data_sha256", "tta"}


@register_model("_test_tiny_bn", family="test", source="tests", label_set="fer7", optimizer="adam", lr=3e-3,
                momentum=None, nesterov=False, weight_decay=0.0, batch_size=32, epochs=1, schedule="constant",
                schedule_params=None, clean=None, split="usage", augment="none", tta=None,
                reported_accuracy="n/a", description="tiny conv net with BatchNorm, for tests")
def _tiny_bn(num_classes: int = 7, width: int = 8):
    """Small conv net with BatchNorm (2-D and 1-D) and dropout, fast to train (no LRN: its backward is slow)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(4),
        nn.Conv2d(width, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 6 * 6, 32), nn.BatchNorm1d(32), nn.ReLU(),
        nn.Linear(32, num_classes),
    )


def train_tiny_run(csv: Path, run_dir: Path, *, steps: int = 40, label_set: str = "fer7", limit=None,
                   spec: PreprocessSpec = PreprocessSpec(), seed: int = 0) -> Path:
    """Train _test_tiny_bn a few Adam steps on the Training split; write best.pt like `ferkit train` would."""
    torch.manual_seed(seed)
    splits = prepare_splits(str(csv), label_set=label_set, limit=limit)
    model = _tiny_bn(num_classes=len(splits.labels))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(prepare_faces(splits.train.images, spec))
    y = torch.from_numpy(splits.train.labels)
    g = torch.Generator().manual_seed(seed)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: one thread is fastest, and the CPU is shared with other tests
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(y), (min(64, len(y)),), generator=g)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    history = [{"epoch": 1, "train_loss": float(loss.detach()), "val_acc": 0.5}]
    save_checkpoint({
        "arch": "_test_tiny_bn", "arch_kwargs": {"width": 8}, "num_classes": len(splits.labels),
        "labels": list(splits.labels), "label_set": splits.label_set, "preprocess": spec.to_dict(),
        "model": model.state_dict(), "epoch": 1, "best_epoch": 1, "best_val_acc": 0.5, "history": history,
        "config": {"arch": "_test_tiny_bn", "optimizer": "adam", "lr": 3e-3, "steps": steps, "seed": seed},
        "data": splits.info,
    }, run_dir / "best.pt")
    return run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(csv, run_dir, onnx_path): a tiny model trained on the synthetic CSV, exported once per module."""
    base = tmp_path_factory.mktemp("tiny_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERKIT_CACHE", str(base / "cache"))
        csv = make_fer_csv(base / "tiny.csv", n_per_split=(140, 35, 42))
        run = train_tiny_run(csv, base / "run")
        onnx_path = base / "tiny.onnx"
        info = export_onnx(run, onnx_path)
    return csv, run, onnx_path, info


# -- metrics ------------------------------------------------------------------------------------------

def test_metrics_against_hand_computed_example():
    # 3 classes; true / predicted worked out by hand:
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 2, 0, 1]
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 1, 3]]
    p, r, f1, support = metrics.precision_recall_f1(cm)
    # class 0: tp 2, predicted 3, true 3 -> P 2/3, R 2/3; class 1: tp 1, pred 3, true 2 -> P 1/3, R 1/2
    # class 2: tp 3, pred 4, true 5 -> P 3/4, R 3/5
    np.testing.assert_allclose(p, [2 / 3, 1 / 3, 3 / 4])
    np.testing.assert_allclose(r, [2 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(f1, [2 / 3, 2 / 5, 2 / 3])
    assert support.tolist() == [3, 2, 5]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(0.6)
    assert metrics.macro_f1(y_true, y_pred, 3) == pytest.approx((2 / 3 + 2 / 5 + 2 / 3) / 3)
    probs = np.full((10, 3), 0.25)
    probs[np.arange(10), y_true] = 0.5
    rep = metrics.classification_report(y_true, y_pred, ["a", "b", "c"], probs=probs)
    assert rep["loss"] == pytest.approx(np.log(2))
    assert rep["per_class"]["b"] == {"precision": pytest.approx(1 / 3), "recall": 0.5, "f1": pytest.approx(0.4),
                                     "support": 2}
    assert rep["true_counts"] == {"a": 3, "b": 2, "c": 5}
    assert rep["pred_counts"] == {"a": 3, "b": 3, "c": 4}
    np.testing.assert_allclose(rep["confusion_matrix_normalized"][2], [0.2, 0.2, 0.6])
    logits = np.log(probs)
    assert metrics.cross_entropy(logits, y_true, from_logits=True) == pytest.approx(np.log(2))
    json.dumps(rep)  # JSON-ready


def test_metrics_edge_cases():
    # a class never predicted and a class with no samples: zeros, not NaN
    rep = metrics.classification_report([0, 0, 1], [0, 0, 0], ["a", "b", "c"])
    assert rep["per_class"]["b"]["precision"] == 0.0 and rep["per_class"]["c"]["recall"] == 0.0
    assert rep["confusion_matrix_normalized"][2] == [0.0, 0.0, 0.0]
    assert rep["loss"] is None
    with pytest.raises(FerkitError, match="differ in length"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(FerkitError, match="outside"):
        metrics.confusion_matrix([0, 3], [0, 1], 3)
    np.testing.assert_allclose(metrics.softmax(np.array([[1000.0, 1000.0]])), [[0.5, 0.5]])


# -- export -------------------------------------------------------------------------------------------

def test_export_round_trip(tiny_run):
    csv, run, onnx_path, info = tiny_run
    proto = onnx.load(str(onnx_path))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    ckpt = load_checkpoint(run)
    assert meta["ferkit_labels"] == ckpt["labels"]
    assert meta["ferkit_input_size"] == 48
    assert meta["ferkit_preprocess"] == PreprocessSpec().to_dict()
    assert meta["ferkit_arch"] == "_test_tiny_bn" and meta["ferkit_label_set"] == "fer7"
    assert meta["ferkit_tta"] == "none"
    prov = meta["ferkit_provenance"]
    assert prov["data_sha256"] == ckpt["data"]["data_sha256"] and len(prov["data_sha256"]) == 64
    assert prov["config"]["optimizer"] == "adam" and prov["best_epoch"] == 1
    assert prov["best_metrics"]["epoch"] == 1 and prov["ferkit_version"] and prov["export_date"]
    # graph: one input "input" (batch, 1, 48, 48) with a symbolic batch axis, output "logits"; opset >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "logits"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 48, 48]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops, f"BN should be folded: {ops}"
    assert info["max_abs_diff"] <= 1e-4
    mask = os.umask(0)
    os.umask(mask)
    assert onnx_path.stat().st_mode & 0o777 == 0o666 & ~mask  # a normal file, not mkstemp's private 0600
    # independent check: onnxruntime vs torch at batch 1 and 37
    model = build_model(ckpt)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for n in (1, 37):
        x = prepare_faces(rng.integers(0, 256, (n, 48, 48), dtype=np.uint8))
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = sess.run(["logits"], {"input": x})[0]
        assert got.shape == (n, 7)
        assert np.abs(got - ref).max() <= 1e-4


def test_export_errors(tmp_path, tiny_run):
    with pytest.raises(FerkitError, match="no such checkpoint"):
        export_onnx(tmp_path / "nope", tmp_path / "x.onnx")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FerkitError, match="best.pt"):
        export_onnx(tmp_path / "empty_run", tmp_path / "x.onnx")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FerkitError, match="cannot read checkpoint"):
        export_onnx(junk, tmp_path / "x.onnx")
    with pytest.raises(FerkitError, match=".onnx"):
        export_onnx(tiny_run[1], tmp_path / "x.bin")
    assert not (tmp_path / "x.onnx").exists()


def test_export_verification_failure_leaves_no_file(tmp_path, tiny_run, monkeypatch):
    import ferkit.export as ex

    class Drift(nn.Module):  # a torch reference that no longer matches what was exported
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x) + 1e-2

    real_verify = ex.verify_onnx
    monkeypatch.setattr(ex, "verify_onnx", lambda model, *a, **kw: real_verify(Drift(model), *a, **kw))
    with pytest.raises(FerkitError, match="differ by"):
        export_onnx(tiny_run[1], tmp_path / "drift.onnx", exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


# -- evaluate -----------------------------------------------------------------------------------------

def test_evaluate_checkpoint_metrics_are_correct(tiny_run):
    csv, run, onnx_path, _ = tiny_run
    res = evaluate(run, csv, split="PrivateTest")
    assert EVAL_KEYS <= set(res)
    assert res["model_kind"] == "torch" and res["split"] == "PrivateTest" and res["tta"] == "none"
    import torch
    assert res["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # torch scores on a GPU when there is one
    # recompute independently from the torch model
    ckpt = load_checkpoint(run)
    model = build_model(ckpt)
    test = prepare_splits(str(csv)).get("PrivateTest")
    with torch.no_grad():
        logits = model(torch.from_numpy(prepare_faces(test.images))).double()
    pred = logits.argmax(1).numpy()
    assert res["n"] == len(test) == 42
    assert res["accuracy"] == pytest.approx(float((pred == test.labels).mean()))
    assert res["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, torch.from_numpy(test.labels))),
                                        rel=1e-5)
    cm = np.asarray(res["confusion_matrix"])
    assert cm.sum() == 42 and np.trace(cm) == int((pred == test.labels).sum())
    assert [res["true_counts"][lab] for lab in res["labels"]] == np.bincount(test.labels, minlength=7).tolist()
    assert [res["pred_counts"][lab] for lab in res["labels"]] == np.bincount(pred, minlength=7).tolist()
    assert res["data_sha256"] == ckpt["data"]["data_sha256"]
    assert res["accuracy"] > 0.4, "the tiny model should have learned the synthetic classes (chance is 1/7)"


def test_must_show_onnx_runtime_and_evaluate_agree(tiny_run):
    """EmotionClassifier(x.onnx).predict_proba argmax accuracy == evaluate(x.onnx) == evaluate(run dir)."""
    csv, run, onnx_path, _ = tiny_run
    test = prepare_splits(str(csv)).get("PrivateTest")
    probs = EmotionClassifier(onnx_path).predict_proba(test.images)
    assert probs.shape == (42, 7)
    runtime_acc = float((probs.argmax(1) == test.labels).mean())
    res_onnx = evaluate(onnx_path, csv, split="PrivateTest")
    res_torch = evaluate(run, csv, split="PrivateTest")
    assert res_onnx["model_kind"] == "onnx" and res_onnx["device"] == "cpu"
    assert res_onnx["accuracy"] == runtime_acc == res_torch["accuracy"]
    assert res_onnx["confusion_matrix"] == res_torch["confusion_matrix"]
    assert res_onnx["loss"] == pytest.approx(res_torch["loss"], abs=1e-5)
    assert res_onnx["data_sha256"] == res_torch["data_sha256"]


def test_evaluate_tta_same_on_torch_and_onnx(tiny_run):
    csv, run, onnx_path, _ = tiny_run
    a = evaluate(run, csv, split="PublicTest", tta=True, return_probs=True)
    b = evaluate(onnx_path, csv, split="PublicTest", tta="tencrop", return_probs=True)
    plain = evaluate(onnx_path, csv, split="PublicTest", return_probs=True)
    assert a["tta"] == b["tta"] == "tencrop" and plain["tta"] == "none"
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
    assert not np.allclose(b["probs"], plain["probs"], atol=1e-4)
    valset = prepare_splits(str(csv)).get("PublicTest")
    clf = EmotionClassifier(onnx_path, tta="tencrop")
    np.testing.assert_allclose(clf.predict_proba(valset.images), b["probs"], atol=1e-6)


def test_evaluate_errors(tiny_run, tmp_path):
    csv, run, onnx_path, _ = tiny_run
    with pytest.raises(FerkitError, match="unknown split"):
        evaluate(onnx_path, csv, split="Holdout")
    with pytest.raises(FerkitError, match="label"):
        evaluate(onnx_path, prepare_splits(str(csv), label_set="fer6"))
    with pytest.raises(FerkitError, match="not found"):
        evaluate(tmp_path / "missing.onnx", csv)
    with pytest.raises(FerkitError, match="--limit must be at least 1"):  # 0 used to score the whole split
        evaluate(onnx_path, csv, limit=0)
    with pytest.raises(FerkitError, match="split seed must be a whole number >= 0"):
        evaluate(onnx_path, csv, split="test", split_method="random", seed=-1)


def test_evaluate_follows_the_models_split_method(tiny_run):
    """A model trained on a random 80/10/10 split is tested on that split's test part, not on PrivateTest."""
    csv, run, _, _ = tiny_run
    ckpt = load_checkpoint(run)
    ckpt["data"] = {**ckpt["data"], "split": "random", "seed": 3}
    res = evaluate(ckpt, csv, split="test")
    expected = prepare_splits(str(csv), split="random", seed=3).test
    assert res["split_method"] == "random" and res["seed"] == 3
    assert res["n"] == len(expected) != 42
    assert [res["true_counts"][lab] for lab in res["labels"]] == np.bincount(expected.labels, minlength=7).tolist()
    assert evaluate(ckpt, csv, split="test", split_method="usage")["n"] == 42
    # on other data the model's random split means nothing: that data's own splits are scored
    other = {**ckpt, "data": {**ckpt["data"], "data_sha256": "0" * 64}}
    res = evaluate(other, csv, split="test")
    assert res["split_method"] == "usage" and res["n"] == 42


def test_evaluate_split_all_scores_other_data_whole_and_refuses_the_models_own(tiny_run, tmp_path, monkeypatch):
    """--split all: every image of a data set the model was not trained on; a <root>/<class>/ folder (someone
    else's labelled photos) is scored whole by default; on the model's own training data 'all' is refused,
    since it contains the training images."""
    import cv2

    csv, run, onnx_path, _ = tiny_run
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FerkitError, match="trained on"):
        evaluate(onnx_path, csv, split="all")
    assert evaluate(onnx_path, csv)["split"] == "PrivateTest"  # the default on the model's own data
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    counts = {"happy": 12, "sad": 9, "neutral": 10}
    for name, n in counts.items():
        (folder / name).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(folder / name / f"{i}.png"), rng.integers(0, 256, (60, 60), dtype=np.uint8))
    res = evaluate(onnx_path, str(folder))
    assert res["split"] == "all" and res["n"] == sum(counts.values())
    assert {lab: res["true_counts"][lab] for lab in counts} == counts
    part = evaluate(onnx_path, str(folder), split="PrivateTest")  # the random 80/10/10 split's test part
    assert part["split"] == "PrivateTest" and 0 < part["n"] < res["n"]
    whole = prepare_splits(str(folder))
    assert len(whole.get("all")) == res["n"] == len(whole.train) + len(whole.val) + len(whole.test)


def test_evaluate_unseen_leaves_out_test_images_that_occur_in_training(tiny_run, tmp_path, capfd):
    """--unseen: the test images that are pixel-for-pixel copies of Training images are left out and counted."""
    from dataclasses import replace

    from ferkit.data import Subset

    csv, run, onnx_path, _ = tiny_run
    sp = prepare_splits(str(csv))
    copies = sp.train.take(np.array([0, 5, 9]))
    leaky = replace(sp, test=Subset.concat([sp.test, copies]))
    full = evaluate(onnx_path, leaky, split="PrivateTest")
    res = evaluate(onnx_path, leaky, split="PrivateTest", unseen=True)
    assert full["n"] == len(sp.test) + 3 and full["unseen"] is None
    assert res["n"] == len(sp.test) and res["unseen"] == {"left_out_also_in_training": 3, "scored": len(sp.test)}
    assert res["accuracy"] == pytest.approx(evaluate(onnx_path, sp, split="PrivateTest")["accuracy"])
    with pytest.raises(FerkitError, match="test split"):
        evaluate(onnx_path, leaky, split="Training", unseen=True)
    with pytest.raises(FerkitError, match="Subset"):
        evaluate(onnx_path, sp.test, unseen=True)
    assert cli_main(["evaluate", str(onnx_path), "--data", str(csv), "--unseen", "--json"]) == 0
    out = json.loads(capfd.readouterr().out)
    assert out["unseen"] == {"left_out_also_in_training": 0, "scored": out["n"]} and out["n"] == len(sp.test)


def test_unseen_checks_the_whole_training_split_whatever_limit_or_clean_say(tiny_run, tmp_path):
    """--unseen compares with Training as the file holds it: not with its first --limit rows, and not with what
    --clean duplicates left of it (that rule removes exactly Training's copies of test images)."""
    csv, _, onnx_path, _ = tiny_run
    header, *rows = csv.read_text().splitlines()
    training = [r for r in rows if r.endswith(",Training")]
    copies = [r.rsplit(",", 1)[0] + ",PrivateTest" for r in training[-2:]]  # the LAST Training images
    leaky = tmp_path / "leaky.csv"
    leaky.write_text("\n".join([header, *copies, *rows]) + "\n")  # the copies are the first PrivateTest rows
    for extra in ({}, {"limit": 5}, {"clean": ["duplicates"]}):
        res = evaluate(onnx_path, leaky, split="PrivateTest", unseen=True, **extra)
        assert res["unseen"]["left_out_also_in_training"] == 2, extra


def test_save_report_writes_plots_and_json(tiny_run, tmp_path):
    csv, run, onnx_path, _ = tiny_run
    res = evaluate(onnx_path, csv, split="PrivateTest")
    paths = save_report(res, tmp_path / "rep")
    names = {p.name for p in paths}
    assert names == {"metrics.json", "confusion_matrix.png", "class_counts.png", "reliability.png"}
    for p in paths:
        assert p.stat().st_size > 200
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert saved["accuracy"] == res["accuracy"] and saved["calibration"]["ece"] == res["calibration"]["ece"]
    assert sum(b["n"] for b in saved["calibration"]["bins"]) == res["n"]
    for name in ("confusion_matrix.png", "reliability.png"):
        assert (tmp_path / "rep" / name).read_bytes()[:4] == b"\x89PNG"
    # no probabilities, no reliability diagram
    names = {p.name for p in save_report({**res, "calibration": None}, tmp_path / "rep2")}
    assert names == {"metrics.json", "confusion_matrix.png", "class_counts.png"}


# -- CLI ----------------------------------------------------------------------------------------------

def test_cli_evaluate_json_is_one_object(tiny_run, capfd):
    csv, run, onnx_path, _ = tiny_run
    rc = cli_main(["evaluate", str(run), "--data", str(csv), "--split", "PrivateTest", "--json"])
    out = capfd.readouterr().out
    assert rc == 0
    res = json.loads(out)  # the whole of stdout is exactly one JSON object
    assert isinstance(res, dict) and EVAL_KEYS <= set(res)
    assert out.count("\n") == 1


def test_cli_evaluate_onnx_json_in_subprocess_without_torch(tiny_run, tmp_path):
    csv, run, onnx_path, _ = tiny_run
    code = (
        "import sys, json\n"
        "from ferkit.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'evaluating an .onnx imported torch'\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "evaluate", str(onnx_path), "--data", str(csv), "--json", "--out",
         str(tmp_path / "ev")], capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**__import__("os").environ, "FERKIT_CACHE": str(tmp_path / "cache")},
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["model_kind"] == "onnx" and res["n"] == 42
    assert (tmp_path / "ev" / "confusion_matrix.png").is_file()
    assert (tmp_path / "ev" / "class_counts.png").is_file()


def test_cli_table_export_and_errors(tiny_run, tmp_path, capfd):
    csv, run, onnx_path, _ = tiny_run
    rc = cli_main(["evaluate", str(onnx_path), "--data", str(csv), "--split", "PublicTest", "--tta"])
    out = capfd.readouterr().out
    assert rc == 0 and "accuracy" in out and "tta=tencrop" in out and "confusion matrix" in out
    rc = cli_main(["export", str(run), "--out", str(tmp_path / "m.onnx"), "--tta", "flip", "--exporter", "torchscript"])
    out = capfd.readouterr().out
    assert rc == 0 and "wrote" in out
    assert EmotionClassifier(tmp_path / "m.onnx").tta == "flip"
    rc = cli_main(["evaluate", str(tmp_path / "nope"), "--data", str(csv)])
    err = capfd.readouterr().err
    assert rc == 2 and err.startswith("ferkit: error:") and err.count("\n") == 1
    before = (tmp_path / "m.onnx").read_bytes()  # an existing model is replaced only when asked
    rc = cli_main(["export", str(run), "--out", str(tmp_path / "m.onnx"), "--exporter", "torchscript"])
    err = capfd.readouterr().err
    assert rc == 2 and "--overwrite" in err and (tmp_path / "m.onnx").read_bytes() == before
    rc = cli_main(["export", str(run), "--out", str(tmp_path / "m.onnx"), "--exporter", "torchscript", "--overwrite"])
    assert rc == 0 and EmotionClassifier(tmp_path / "m.onnx").tta == "none"
    capfd.readouterr()
    (tmp_path / "a_file").write_text("keep")
    rc = cli_main(["model-card", str(onnx_path), "--data", str(csv), "--out", str(tmp_path / "a_file")])
    err = capfd.readouterr().err
    assert rc == 2 and "is a file" in err and "Traceback" not in err and (tmp_path / "a_file").read_text() == "keep"


# -- ensembles ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def second_run(tiny_run, tmp_path_factory):
    """Another tiny model on the same CSV and split, other seed (a second ensemble member)."""
    csv = tiny_run[0]
    base = tmp_path_factory.mktemp("second_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERKIT_CACHE", str(base / "cache"))
        return train_tiny_run(csv, base / "run", steps=30, seed=1)


def test_cli_compare_pairs_each_model_with_the_first(tiny_run, second_run, capfd):
    """ferkit compare A B A@flip: every row equals a direct evaluation; the paired figures are direct counts."""
    import math

    from ferkit.commands.compare import parse_entry

    csv, run, onnx_path, _ = tiny_run
    assert cli_main(["compare", str(onnx_path), str(second_run), f"{onnx_path}@flip", "--data", str(csv),
                     "--json"]) == 0
    out = json.loads(capfd.readouterr().out)
    rows = out["rows"]
    assert out["split"] == "PublicTest" and [r["tta"] for r in rows] == ["none", "none", "flip"]
    ref = evaluate(onnx_path, str(csv), split="PublicTest", return_probs=True)
    y, p0 = ref["y_true"], ref["probs"].argmax(1)
    assert "vs_first" not in rows[0] and rows[0]["accuracy"] == pytest.approx(ref["accuracy"])
    for r, (model, tta) in zip(rows[1:], [(second_run, None), (onnx_path, "flip")]):
        d = evaluate(model, str(csv), split="PublicTest", tta=tta, return_probs=True)
        p = d["probs"].argmax(1)
        c = r["vs_first"]
        assert r["accuracy"] == pytest.approx(d["accuracy"]) and r["n"] == d["n"] == len(y)
        assert (c["a_only"], c["b_only"]) == (int(np.sum((p0 == y) & (p != y))), int(np.sum((p == y) & (p0 != y))))
        assert c["paired_se"] == pytest.approx(math.sqrt(c["a_only"] + c["b_only"]) / len(y))
    assert cli_main(["compare", str(onnx_path), str(second_run), "--data", str(csv), "--split", "PrivateTest"]) == 0
    table = capfd.readouterr().out
    assert table.startswith("## PrivateTest") and "paired SE" in table and str(second_run) in table
    assert cli_main(["compare", str(onnx_path), "--data", str(csv)]) == 2
    assert "two or more models" in capfd.readouterr().err
    assert parse_entry("runs/a@b/x.onnx") == ("runs/a@b/x.onnx", None)
    assert parse_entry("x.onnx@tencrop") == ("x.onnx", "tencrop")


def test_export_ensemble_is_the_weighted_mean_of_its_members(tiny_run, second_run, tmp_path):
    from ferkit.export import export_ensemble

    csv, run, onnx_path, _ = tiny_run
    member2 = tmp_path / "member2.onnx"
    export_onnx(second_run, member2)
    info = export_ensemble([run, second_run], tmp_path / "ens.onnx", weights=[1, 3], tta="flip")
    assert info["max_abs_diff"] <= 1e-4
    ens = EmotionClassifier(tmp_path / "ens.onnx")
    assert ens.tta == "flip" and ens.labels == EmotionClassifier(onnx_path).labels
    meta = ens.metadata
    assert meta["arch"] == "ensemble"
    assert [m["weight"] for m in meta["arch_kwargs"]["members"]] == [0.25, 0.75]
    members = meta["provenance"]["members"]
    assert [m["source"] for m in members] == [str(run), str(second_run)]
    assert members[1]["config"]["seed"] == 1 and meta["provenance"]["data_sha256"] == members[0]["data_sha256"]
    faces = np.random.default_rng(3).integers(0, 256, (9, 48, 48), dtype=np.uint8)
    p1 = EmotionClassifier(onnx_path).predict_proba(faces, tta="none")
    p2 = EmotionClassifier(member2).predict_proba(faces, tta="none")
    got = ens.predict_proba(faces, tta="none")
    assert not np.allclose(p1, p2, atol=1e-3)  # the members differ, so the weights matter
    np.testing.assert_allclose(got, 0.25 * p1 + 0.75 * p2, atol=1e-5)
    # the default TTA (flip) averages the ensemble over the mirrored faces too
    mirrored = ens.predict_proba(faces[:, :, ::-1].copy(), tta="none")
    np.testing.assert_allclose(ens.predict_proba(faces), (got + mirrored) / 2, atol=1e-5)


def test_export_ensemble_refuses_members_that_do_not_fit(tiny_run, second_run, tmp_path):
    from ferkit.export import export_ensemble

    csv, run, _, _ = tiny_run
    out = tmp_path / "ens.onnx"
    with pytest.raises(FerkitError, match="at least two"):
        export_ensemble([run], out)
    with pytest.raises(FerkitError, match="2 weights for 3"):
        export_ensemble([run, second_run, run], out, weights=[1, 1])
    with pytest.raises(FerkitError, match="positive"):
        export_ensemble([run, second_run], out, weights=[1, 0])
    fer6 = train_tiny_run(csv, tmp_path / "fer6", steps=2, label_set="fer6")
    with pytest.raises(FerkitError, match="predicts"):
        export_ensemble([run, fer6], out)
    other_data = train_tiny_run(make_fer_csv(tmp_path / "other.csv", n_per_split=(70, 14, 14), seed=5),
                                tmp_path / "other_run", steps=2)
    with pytest.raises(FerkitError, match="data_sha256"):
        export_ensemble([run, other_data], out)
    ckpt = load_checkpoint(second_run)
    ckpt["data"] = {**ckpt["data"], "split": "random"}  # a member trained on a random split saw test images
    with pytest.raises(FerkitError, match="split"):
        export_ensemble([run, ckpt], out)
    assert not out.exists() and not list(tmp_path.glob("ens.*"))


def test_cli_export_several_runs_writes_an_ensemble(tiny_run, second_run, tmp_path, capfd):
    csv, run, _, _ = tiny_run
    rc = cli_main(["export", str(run), str(second_run), "--out", str(tmp_path / "e.onnx"), "--weights", "2", "1"])
    out = capfd.readouterr().out
    assert rc == 0 and "ensemble" in out
    assert [m["weight"] for m in EmotionClassifier(tmp_path / "e.onnx").metadata["arch_kwargs"]["members"]] == \
        pytest.approx([2 / 3, 1 / 3])
    rc = cli_main(["export", str(run), "--out", str(tmp_path / "single.onnx"), "--weights", "1"])
    err = capfd.readouterr().err
    assert rc == 2 and "--weights is for an ensemble" in err and not (tmp_path / "single.onnx").exists()


def test_models_bundled_lists_single_models_and_ensembles(tiny_run, second_run, tmp_path, monkeypatch, capfd):
    import ferkit.runtime as runtime
    from ferkit.checkpoint import load_checkpoint
    from ferkit.export import export_ensemble, export_onnx

    csv, run, onnx_path, _ = tiny_run
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "default.onnx").write_bytes(onnx_path.read_bytes())
    export_ensemble([run, second_run], assets / "accurate.onnx", tta="flip")
    for name, mode in (("blend", "blend"), ("soft", "soft")):  # how FER+ was used shows in "trained on"
        ckpt = load_checkpoint(run / "best.pt")
        ckpt["config"] = {**ckpt["config"], "ferplus": "fer2013new.csv", "ferplus_mode": mode}
        export_onnx(ckpt, assets / f"{name}.onnx")
    from ferkit.quantize import quantize_onnx

    quantize_onnx(onnx_path, assets / "small.onnx", data=csv, n_images=40)
    from ferkit.calibrate import calibrate_onnx

    t = calibrate_onnx(onnx_path, assets / "calibrated.onnx", data=csv)["temperature"]
    monkeypatch.setattr(runtime, "ASSETS_DIR", assets)
    assert cli_main(["models", "--bundled", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capfd.readouterr().out)}
    assert sorted(rows) == ["accurate", "blend", "calibrated", "default", "small", "soft"]
    assert rows["small"]["weights"] == "int8" and rows["default"]["weights"] == "float32"
    assert rows["calibrated"]["temperature"] == t != 1.0 and rows["default"]["temperature"] == 1.0
    assert rows["blend"]["training"] == "FER2013 + FER+ votes" and rows["soft"]["training"] == "FER+ votes"
    assert rows["accurate"]["arch"] == "ensemble of 2: _test_tiny_bn, _test_tiny_bn" and rows["accurate"]["tta"] == "flip"
    assert rows["default"]["arch"] == "_test_tiny_bn" and rows["default"]["tta"] == "none"
    assert rows["default"]["training"] == "FER2013 labels" and rows["default"]["label_set"] == "fer7"
    assert cli_main(["models", "--bundled"]) == 0
    out = capfd.readouterr().out
    assert out.split("\naccurate ")[1].lstrip().startswith("ensemble of 2") and "--model NAME" in out
    assert f"{t:g}" in next(line for line in out.splitlines() if line.startswith("calibrated "))


@pytest.fixture(scope="module")
def exported_pair(tiny_run, second_run, tmp_path_factory):
    """(a.onnx, b.onnx, ens.onnx): the two tiny runs exported, and their ensemble (weights 1:3) from checkpoints."""
    from ferkit.export import export_ensemble

    base = tmp_path_factory.mktemp("exported_pair")
    b = base / "b.onnx"
    export_onnx(second_run, b)
    export_ensemble([tiny_run[1], second_run], base / "ens.onnx", weights=[1, 3])
    return tiny_run[2], b, base / "ens.onnx"


def test_combine_onnx_is_the_weighted_mean_and_opens_nested_ensembles(exported_pair, tiny_run, second_run, tmp_path):
    from ferkit.onnx_ensemble import combine_onnx

    a, b, ens = exported_pair
    # ens (= 1/4 a + 3/4 b) weighted 2, a weighted 1: 1/6 a + 1/2 b + 1/3 a
    info = combine_onnx([ens, a], tmp_path / "c.onnx", weights=[2, 1], tta="flip")
    assert info["max_abs_diff"] <= 1e-5 and info["weights"] == pytest.approx([1 / 6, 1 / 2, 1 / 3])
    clf = EmotionClassifier(tmp_path / "c.onnx")
    meta = clf.metadata
    assert clf.tta == "flip" and meta["arch"] == "ensemble" and meta["provenance"]["weights_dtype"] == "float32"
    assert [m["arch"] for m in meta["arch_kwargs"]["members"]] == ["_test_tiny_bn"] * 3
    assert [m["weight"] for m in meta["arch_kwargs"]["members"]] == pytest.approx([1 / 6, 1 / 2, 1 / 3])
    assert [m["source"] for m in meta["provenance"]["members"]] == [str(tiny_run[1]), str(second_run), str(a)]
    assert meta["provenance"]["members"][1]["config"]["seed"] == 1
    assert meta["provenance"]["data_sha256"] == EmotionClassifier(a).metadata["provenance"]["data_sha256"]
    faces = np.random.default_rng(5).integers(0, 256, (11, 48, 48), dtype=np.uint8)
    pa = EmotionClassifier(a).predict_proba(faces, tta="none")
    pb = EmotionClassifier(b).predict_proba(faces, tta="none")
    assert not np.allclose(pa, pb, atol=1e-3)
    np.testing.assert_allclose(clf.predict_proba(faces, tta="none"), 0.5 * pa + 0.5 * pb, atol=1e-5)
    # the graph has one Softmax per member network, so the result can be split again (into a, b, a)
    assert sum(n.op_type == "Softmax" for n in onnx.load(str(tmp_path / "c.onnx")).graph.node) == 3
    from ferkit.onnx_ensemble import split_ensemble
    parts = split_ensemble(tmp_path / "c.onnx", tmp_path / "parts")
    for part, original in zip(parts, (a, b, a)):
        np.testing.assert_allclose(EmotionClassifier(part).predict_proba(faces, tta="none"),
                                   EmotionClassifier(original).predict_proba(faces, tta="none"), atol=1e-5)


def test_combine_onnx_half_stores_float16_weights_with_the_same_predictions(exported_pair, tmp_path):
    from ferkit.onnx_ensemble import combine_onnx, split_ensemble

    a, b, _ = exported_pair
    full = combine_onnx([a, b], tmp_path / "full.onnx")
    half = combine_onnx([a, b], tmp_path / "half.onnx", half=True)
    assert half["bytes"] < 0.65 * full["bytes"]
    proto = onnx.load(str(tmp_path / "half.onnx"))
    dtypes = {t.data_type for t in proto.graph.initializer if int(np.prod(t.dims)) >= 16}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    assert sum(n.op_type == "Cast" for n in proto.graph.node) == half["half_tensors"] > 0
    assert EmotionClassifier(tmp_path / "half.onnx").metadata["provenance"]["weights_dtype"] == "float16"
    # a float16 file splits too, and its networks give the float16 file's probabilities back
    halves = split_ensemble(tmp_path / "half.onnx", tmp_path / "half_parts")
    assert len(halves) == 2
    faces = np.random.default_rng(6).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    p_full = EmotionClassifier(tmp_path / "full.onnx").predict_proba(faces, tta="none")
    p_half = EmotionClassifier(tmp_path / "half.onnx").predict_proba(faces, tta="none")
    assert 0 < np.abs(p_full - p_half).max() < 2e-3  # rounded weights: close, not identical
    # a verification that fails leaves nothing behind
    with pytest.raises(FerkitError, match="differ from the mean"):
        combine_onnx([a, b], tmp_path / "strict.onnx", half=True, half_atol=1e-12)
    assert not list(tmp_path.glob("strict*"))


def test_split_ensemble_gives_back_its_members(exported_pair, tiny_run, tmp_path):
    from ferkit.onnx_ensemble import split_ensemble

    a, b, ens = exported_pair
    paths = split_ensemble(ens, tmp_path / "members")
    assert [p.name for p in paths] == ["ens_member0.onnx", "ens_member1.onnx"]
    faces = np.random.default_rng(7).integers(0, 256, (9, 48, 48), dtype=np.uint8)
    for path, original in zip(paths, (a, b)):
        clf = EmotionClassifier(path)
        assert clf.metadata["arch"] == "_test_tiny_bn" and clf.tta == "none"
        np.testing.assert_allclose(clf.predict_proba(faces), EmotionClassifier(original).predict_proba(faces),
                                   atol=1e-5)
    assert EmotionClassifier(paths[0]).metadata["provenance"]["source"] == str(tiny_run[1])
    with pytest.raises(FerkitError, match="single network"):
        split_ensemble(a, tmp_path / "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FerkitError, match="not a directory"):
        split_ensemble(ens, tmp_path / "file")


def test_combine_onnx_refuses_what_does_not_fit(exported_pair, tiny_run, tmp_path):
    from ferkit.onnx_ensemble import combine_onnx

    a, b, ens = exported_pair
    csv, run, _, _ = tiny_run
    out = tmp_path / "e.onnx"
    with pytest.raises(FerkitError, match="at least two member networks"):
        combine_onnx([a], out)
    with pytest.raises(FerkitError, match="2 weights for 3"):
        combine_onnx([a, b, ens], out, weights=[1, 1])
    with pytest.raises(FerkitError, match="positive"):
        combine_onnx([a, b], out, weights=[1, -1])
    with pytest.raises(FerkitError, match="must be an .onnx"):
        combine_onnx([a, b], tmp_path / "e.txt")
    fer6 = tmp_path / "fer6.onnx"
    export_onnx(train_tiny_run(csv, tmp_path / "fer6", steps=2, label_set="fer6"), fer6)
    with pytest.raises(FerkitError, match="predicts"):
        combine_onnx([a, fer6], out)
    other = tmp_path / "other.onnx"
    export_onnx(train_tiny_run(make_fer_csv(tmp_path / "other.csv", n_per_split=(70, 14, 14), seed=5),
                               tmp_path / "other_run", steps=2), other)
    with pytest.raises(FerkitError, match="data_sha256"):
        combine_onnx([a, other], out)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(FerkitError, match="not a readable ONNX"):
        combine_onnx([a, garbage], out)
    plain = onnx.load(str(a))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(FerkitError, match="not one exported by ferkit"):
        combine_onnx([a, tmp_path / "plain.onnx"], out)
    with pytest.raises(FerkitError, match="not found"):
        combine_onnx([a, tmp_path / "missing.onnx"], out)
    assert not out.exists() and not list(tmp_path.glob("e.*"))


def test_cli_export_combines_onnx_models_and_splits_ensembles(exported_pair, tiny_run, tmp_path, monkeypatch, capfd):
    import ferkit.runtime as runtime

    a, b, ens = exported_pair
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "accurate.onnx").write_bytes(ens.read_bytes())
    monkeypatch.setattr(runtime, "ASSETS_DIR", assets)
    out = tmp_path / "e.onnx"
    assert cli_main(["export", "accurate", str(a), "--out", str(out), "--half", "--tta", "flip"]) == 0
    text = capfd.readouterr().out
    assert "ensemble of 3" in text and "float16" in text and "tta flip" in text
    assert EmotionClassifier(out).metadata["provenance"]["sources"] == ["accurate", str(a)]
    assert cli_main(["export", "accurate", "--split", str(tmp_path / "m")]) == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["accurate_member0.onnx", "accurate_member1.onnx"]
    capfd.readouterr()
    for argv, message in (
        (["export", str(tiny_run[1]), str(a), "--out", str(tmp_path / "x.onnx")], "not both"),
        (["export", str(tiny_run[1]), "--out", str(tmp_path / "x.onnx"), "--half"], "--half is for combining"),
        (["export", str(a), str(b)], "give --out"),
        (["export", str(a), str(b), "--split", str(tmp_path / "s")], "--split takes one ensemble"),
        (["export", str(a), str(b), "--out", str(tmp_path / "x.onnx"), "--exporter", "torchscript"], "keep their graphs"),
    ):
        assert cli_main(argv) == 2, argv
        assert message in capfd.readouterr().err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "s").exists()



# -- int8 quantization ---------------------------------------------------------------------------------

def test_quantize_int8_keeps_the_metadata_calibrates_on_training_and_agrees_with_the_source(tiny_run, tmp_path,
                                                                                          capfd):
    from ferkit.data.fer2013 import load_fer2013
    from ferkit.quantize import calibration_faces

    csv, _, source, _ = tiny_run
    out = tmp_path / "q.onnx"
    rc = cli_main(["export", str(source), "--quantize", "int8", "--data", str(csv), "--calibration-images", "100",
                   "--out", str(out), "--json"])
    info = json.loads(capfd.readouterr().out)
    assert rc == 0 and out.is_file() and info["path"] == str(out)
    graph_ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= graph_ops
    src_clf, q_clf = EmotionClassifier(source), EmotionClassifier(out)
    for key in ("labels", "label_set", "preprocess", "input_size", "tta", "arch", "arch_kwargs"):
        assert q_clf.metadata[key] == src_clf.metadata[key], key
    quant = q_clf.metadata["provenance"]["quantization"]
    data = load_fer2013(csv)
    assert quant["mode"] == "int8" and quant["calibration"]["split"] == "Training"
    assert quant["calibration"]["images"] == 100 and quant["calibration"]["data_sha256"] == data.sha256
    assert q_clf.metadata["provenance"]["data"] == src_clf.metadata["provenance"]["data"]
    # the int8 model answers like its source on faces it was not calibrated on
    faces = data.images[data.split("PublicTest")]
    agree = float((q_clf.predict(faces) == src_clf.predict(faces)).mean())
    assert agree >= 0.85 and info["agreement"] >= 0.97
    # calibration draws from the Training rows only, never from a test split (asking for more takes them all)
    calib, meta = calibration_faces(csv, 10_000, seed=3)
    train = data.images[data.split("Training")]
    assert meta["images"] == len(train) == len(calib)
    assert sorted(map(bytes, calib)) == sorted(map(bytes, train))


def test_quantize_widens_a_float16_ensemble_exactly_before_quantizing(exported_pair, tiny_run, tmp_path):
    from ferkit.onnx_ensemble import _session, combine_onnx, float_weights
    from ferkit.quantize import quantize_onnx

    csv = tiny_run[0]
    half = combine_onnx(list(exported_pair[:2]), tmp_path / "half.onnx", half=True, tta="flip")["path"]
    proto = onnx.load(half)
    n_casts = sum(1 for n in proto.graph.node if n.op_type == "Cast")
    assert float_weights(proto) == n_casts > 0
    assert not any(n.op_type == "Cast" for n in proto.graph.node)
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    x = prepare_faces(np.random.default_rng(5).integers(0, 256, (23, 48, 48), dtype=np.uint8), PreprocessSpec())
    # the widened graph computes exactly what the float16 file computes (float16 values are float32 values)
    np.testing.assert_array_equal(_session(proto)(x), _session(half)(x))
    assert float_weights(proto) == 0  # nothing left to widen
    info = quantize_onnx(half, tmp_path / "q.onnx", data=csv, n_images=60)
    q = EmotionClassifier(tmp_path / "q.onnx")
    record = q.metadata["provenance"]["quantization"]
    assert record["source_weights"].startswith(f"float16, {n_casts} tensors widened")
    assert q.metadata["provenance"]["weights_dtype"] == "int8" and q.tta == "flip"
    assert q.metadata["arch_kwargs"] == EmotionClassifier(half).metadata["arch_kwargs"]
    assert info["agreement"] >= 0.97
    from ferkit.data.fer2013 import load_fer2013

    data = load_fer2013(csv)
    faces = data.images[data.split("PublicTest")]  # faces it was not calibrated on
    assert (q.predict(faces) == EmotionClassifier(half).predict(faces)).mean() >= 0.85


def test_half_keeps_the_int8_scales_of_quantized_members(tmp_path):
    """--half on an ensemble with int8 members (the bundled accurate) converts their float weights only: the
    quantization scales stay float32 (rounded to float16 they moved the answers by 7e-3 and the export failed)."""
    from onnx import TensorProto

    from ferkit.onnx_ensemble import combine_onnx

    info = combine_onnx(["accurate"], tmp_path / "half.onnx", half=True)
    assert info["max_abs_diff"] <= 2e-3
    graph = onnx.load(str(tmp_path / "half.onnx")).graph
    dtypes = {t.name: t.data_type for t in graph.initializer}
    scales = [n.input[1] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[1] in dtypes]
    assert scales and all(dtypes[name] == TensorProto.FLOAT for name in scales)


def test_an_int8_ensemble_splits_into_int8_members_that_combine_back(exported_pair, tiny_run, tmp_path):
    """`ferkit export accurate --split` on the bundled int8 files: the int8 export also quantizes the weighted sum
    of the members' probabilities, so the members' mean differs from the file by up to a few 1/255 steps; the
    split accepts that (and only for a quantized file), and the members, combined again, give the file's answers."""
    from ferkit.onnx_ensemble import combine_onnx, split_ensemble
    from ferkit.quantize import quantize_onnx

    csv = tiny_run[0]
    ens = combine_onnx(list(exported_pair[:2]), tmp_path / "ens.onnx", tta="flip")["path"]
    quantize_onnx(ens, tmp_path / "q.onnx", data=csv, n_images=60)
    parts = split_ensemble(tmp_path / "q.onnx", tmp_path / "parts")
    assert len(parts) == 2
    for part in parts:
        assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(part)).graph.node}
        # each member keeps the ensemble's quantization record, marked as done with the whole ensemble
        record = EmotionClassifier(part).metadata["provenance"]["quantization"]
        assert record["mode"] == "int8" and "all members at once" in record["scope"]
    again = combine_onnx(parts, tmp_path / "again.onnx", tta="flip")["path"]
    assert EmotionClassifier(again).metadata["provenance"]["weights_dtype"] == "int8"  # not "float32"
    with pytest.raises(FerkitError, match="already quantized"):  # int8 inside, though the file has no record of its own
        quantize_onnx(again, tmp_path / "twice.onnx", data=csv, n_images=60)
    assert not (tmp_path / "twice.onnx").exists()
    mixed = combine_onnx([parts[0], exported_pair[1]], tmp_path / "mixed.onnx")["metadata"]["provenance"]
    assert mixed["weights_dtype"] == "mixed: int8, float32"
    assert "quantization" not in EmotionClassifier(exported_pair[1]).metadata["provenance"]
    from ferkit.modelcard import _quantization_lines

    (line,) = _quantization_lines(mixed)  # the model card names the int8 member and where it was quantized
    assert line.startswith("- Weights: 1 of the 2 member networks are int8") and "q.onnx, all members at once" in line
    assert _quantization_lines(EmotionClassifier(exported_pair[1]).metadata["provenance"]) == []
    faces = np.random.default_rng(8).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    p_q, p_again = EmotionClassifier(tmp_path / "q.onnx").predict_proba(faces), EmotionClassifier(again).predict_proba(faces)
    assert np.abs(p_q - p_again).max() < 1e-2
    assert (p_q.argmax(1) == p_again.argmax(1)).mean() >= 0.95
    # the looser tolerance is for quantized files only: a float file held to 1e-2 would pass anything
    with pytest.raises(FerkitError, match="differ from the mean"):
        split_ensemble(tmp_path / "q.onnx", tmp_path / "strict", int8_atol=1e-5)  # the float tolerance: refused


def test_quantize_refuses_bad_input_and_leaves_nothing_behind(tiny_run, exported_pair, tmp_path, capfd):
    from ferkit.quantize import quantize_onnx

    csv, _, source, _ = tiny_run
    out = tmp_path / "q.onnx"
    # another data file than the model's: its Training faces are not the ones the model learnt from
    other = make_fer_csv(tmp_path / "other.csv", n_per_split=(30, 5, 5), seed=9)
    with pytest.raises(FerkitError, match="not the data file"):
        quantize_onnx(source, out, data=other)
    # a check the int8 file cannot pass: nothing is written, no temporary file is left
    with pytest.raises(FerkitError, match="agrees with"):
        quantize_onnx(source, out, data=csv, n_images=50, min_agreement=1.01)
    assert not out.exists() and list(tmp_path.glob("*.onnx")) == []
    quantize_onnx(source, out, data=csv, n_images=50)
    with pytest.raises(FerkitError, match="already quantized"):
        quantize_onnx(out, tmp_path / "qq.onnx", data=csv)
    with pytest.raises(FerkitError, match="positive integer"):
        quantize_onnx(source, tmp_path / "q0.onnx", data=csv, n_images=0)
    capfd.readouterr()
    x = str(tmp_path / "x.onnx")
    for argv, message in (
        (["export", str(source), "--quantize", "int8", "--out", x], "needs --data"),
        (["export", str(source), "--quantize", "int8", "--data", str(csv), "--out", x, "--half"], "no --half"),
        (["export", str(tiny_run[1]), "--quantize", "int8", "--data", str(csv), "--out", x], "one exported model"),
        (["export", str(source), str(source), "--quantize", "int8", "--data", str(csv), "--out", x],
         "one exported model"),
        (["export", str(source), "--data", str(csv), "--out", x], "--data is for --quantize and --calibrate"),
        (["export", str(source), "--seed", "0", "--out", x], "are for --quantize"),
        (["export", str(source), "--quantize", "int8", "--data", str(csv), "--calibration-images", "0", "--out", x],
         "positive integer"),
        (["export", str(source), "--quantize", "int8", "--data", str(tmp_path / "missing.csv"), "--out", x],
         "missing.csv"),
    ):
        assert cli_main(argv) == 2, argv
        assert message in capfd.readouterr().err, argv
    assert not Path(x).exists()


# -- calibration (temperature scaling) -----------------------------------------------------------------

def test_calibration_metrics_against_a_hand_computed_example():
    # top probabilities 0.9 (right), 0.8 (wrong), 0.6 and 0.55 (both right)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    y = np.array([0, 0, 0, 1])
    cal = metrics.calibration(probs, y, n_bins=10)
    # bins (0.8, 0.9]: |1 - 0.9|; (0.7, 0.8]: |0 - 0.8|; (0.5, 0.6]: 0.6 and 0.55, both right: |1 - 0.575|
    assert cal["ece"] == pytest.approx(0.25 * 0.1 + 0.25 * 0.8 + 0.5 * 0.425)
    assert cal["mce"] == pytest.approx(0.8)
    assert [(b["n"], b["accuracy"]) for b in cal["bins"]] == [(2, 1.0), (1, 0.0), (1, 1.0)]
    assert cal["brier"] == pytest.approx((0.02 + 2 * 0.64 + 0.32 + 2 * 0.45 ** 2) / 4)
    assert cal["confidence"] == pytest.approx(0.7125)
    assert metrics.calibration(probs, y, n_bins=1)["ece"] == pytest.approx(abs(0.75 - 0.7125))
    rep = metrics.classification_report(y, probs.argmax(1), ["a", "b"], probs=probs)
    assert rep["calibration"]["ece"] == pytest.approx(cal["ece"])
    assert metrics.classification_report(y, probs.argmax(1), ["a", "b"])["calibration"] is None
    with pytest.raises(FerkitError, match="classes"):
        metrics.calibration(probs, [0, 0, 0, 2])
    with pytest.raises(FerkitError, match="shape"):
        metrics.calibration(probs[:3], y)
    with pytest.raises(FerkitError, match="n_bins"):
        metrics.calibration(probs, y, n_bins=0)


def _sampled(n=20000, c=7, sharpen=2.0, seed=0):
    """Labels drawn from softmax(z) (so softmax(z) is calibrated) and a model that reports softmax(sharpen * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, c))
    truth = metrics.softmax(z).astype(np.float64)
    y = np.array([rng.choice(c, p=row / row.sum()) for row in truth])
    return metrics.softmax(sharpen * z), truth, y


def test_temperature_scaling_keeps_every_prediction_and_fitting_recovers_the_true_temperature():
    from ferkit.calibrate import fit_temperature, temperature_nll

    over, truth, y = _sampled(sharpen=2.0)
    # calibrated probabilities have a small ECE, over-confident ones a large one
    assert metrics.calibration(truth, y)["ece"] < 0.02 < 0.1 < metrics.calibration(over, y)["ece"]
    t = fit_temperature(over, y)
    assert t == pytest.approx(2.0, rel=0.05)
    fixed = metrics.scale_temperature(over, t)
    np.testing.assert_allclose(fixed, truth, atol=0.03)
    assert metrics.calibration(fixed, y)["ece"] < 0.02
    assert temperature_nll(over, y, t) < temperature_nll(over, y, 1.0)
    under, _, y2 = _sampled(sharpen=0.5, seed=1)
    assert fit_temperature(under, y2) == pytest.approx(0.5, rel=0.05)
    # softmax(log p / T) of one network's softmax is softmax(logits / T); the order of the classes never changes
    z = np.random.default_rng(2).normal(0, 3, (50, 7))
    np.testing.assert_allclose(metrics.scale_temperature(metrics.softmax(z), 0.7), metrics.softmax(z / 0.7), atol=1e-6)
    for temp in (0.1, 0.5, 3.0, 15.0):
        assert (metrics.scale_temperature(over, temp).argmax(1) == over.argmax(1)).all()
    np.testing.assert_array_equal(metrics.scale_temperature(over, 1.0), over.astype(np.float32))
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(FerkitError, match="positive"):
            metrics.scale_temperature(over, bad)
    with pytest.raises(FerkitError, match="classes"):
        fit_temperature(over[:3], [0, 1, 9])
    with pytest.raises(FerkitError, match="N >= 1"):
        fit_temperature(over[:0], [])


def test_calibrate_writes_the_temperature_that_every_reader_applies(tiny_run, tmp_path, capfd):
    from ferkit.calibrate import fit_temperature
    from ferkit.data.fer2013 import load_fer2013

    csv, _, source, _ = tiny_run
    out = tmp_path / "cal.onnx"
    rc = cli_main(["export", str(source), "--calibrate", "--data", str(csv), "--out", str(out)])
    text = capfd.readouterr().out
    assert rc == 0 and out.is_file() and "fitted on PublicTest" in text
    raw, cal = EmotionClassifier(source), EmotionClassifier(out)
    # the fit: PublicTest of the model's data, from the raw softmax
    public = evaluate(source, str(csv), split="PublicTest", return_probs=True)
    t = float(f"{fit_temperature(public['probs'], public['y_true']):.4g}")
    assert cal.temperature == cal.default_temperature == t != 1.0 and raw.temperature == 1.0
    record = cal.metadata["provenance"]["temperature_scaling"]
    assert record["split"] == "PublicTest" and record["n"] == public["n"] and record["temperature"] == t
    assert record["data_sha256"] == load_fer2013(csv).sha256
    assert record["after"]["nll"] <= record["before"]["nll"]
    for key in ("labels", "preprocess", "tta", "arch", "arch_kwargs"):
        assert cal.metadata[key] == raw.metadata[key], key
    # the classifier, evaluate and the CLI use it; predictions never change
    faces = load_fer2013(csv).images[:40]
    p_raw, p_cal = raw.predict_proba(faces), cal.predict_proba(faces)
    np.testing.assert_allclose(p_cal, metrics.scale_temperature(p_raw, t), atol=1e-6)
    assert (p_cal.argmax(1) == p_raw.argmax(1)).all() and not np.allclose(p_cal, p_raw, atol=1e-3)
    np.testing.assert_allclose(cal.predict_logits(faces), raw.predict_logits(faces) / t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(EmotionClassifier(out, temperature=1.0).predict_proba(faces), p_raw, atol=1e-6)
    r_raw = evaluate(source, str(csv), split="PrivateTest", return_probs=True)
    r_cal = evaluate(out, str(csv), split="PrivateTest", return_probs=True)
    assert r_cal["accuracy"] == r_raw["accuracy"] and r_cal["confusion_matrix"] == r_raw["confusion_matrix"]
    assert r_cal["temperature"] == t and r_raw["temperature"] == 1.0
    assert r_cal["loss"] == pytest.approx(metrics.cross_entropy(metrics.scale_temperature(r_raw["probs"], t),
                                                                r_raw["y_true"]), abs=1e-4)
    assert r_cal["calibration"]["ece"] == pytest.approx(metrics.calibration(r_cal["probs"], r_cal["y_true"])["ece"])
    assert evaluate(out, str(csv), split="PrivateTest", temperature=1.0)["loss"] == pytest.approx(r_raw["loss"])
    # a classifier passed in keeps its own temperature unless one is given
    assert evaluate(cal, str(csv), split="PrivateTest")["temperature"] == t
    assert evaluate(cal, str(csv), split="PrivateTest", temperature=1.0)["loss"] == pytest.approx(r_raw["loss"])
    assert cli_main(["evaluate", str(out), "--data", str(csv)]) == 0
    assert f"temperature {t:g}" in capfd.readouterr().out
    # the model card says so
    from ferkit.modelcard import write_model_card

    card = write_model_card(out, csv, tmp_path / "card").read_text()
    assert f"- Probabilities: softmax at temperature {t:g}, fitted on PublicTest ({public['n']} faces)" in card
    assert f"| PrivateTest | {r_cal['n']} | {100 * r_cal['accuracy']:.2f}% |" in card and "| ECE | Brier |" in card
    # calibrating again starts from the raw softmax: the same temperature, not its square
    again = tmp_path / "again.onnx"
    cli_main(["export", str(out), "--calibrate", "--data", str(csv), "--out", str(again)])
    assert EmotionClassifier(again).temperature == t
    # a training run in one step: exported, then calibrated; its origin is the run
    from_run = tmp_path / "from_run.onnx"
    assert cli_main(["export", str(tiny_run[1]), "--calibrate", "--data", str(csv), "--out", str(from_run)]) == 0
    capfd.readouterr()
    one_step = EmotionClassifier(from_run)
    assert one_step.temperature == t and one_step.metadata["arch"] == raw.metadata["arch"]
    record = one_step.metadata["provenance"]["temperature_scaling"]
    assert record["source"] == str(tiny_run[1]) and record["source_sha256"] is None
    np.testing.assert_allclose(one_step.predict_proba(faces), p_cal, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("from_run")] == ["from_run.onnx"]


def test_calibrate_refuses_the_test_split_bad_temperatures_and_misuse(tiny_run, exported_pair, tmp_path, capfd):
    from ferkit.calibrate import calibrate_onnx
    from ferkit.onnx_ensemble import split_ensemble

    csv, _, source, _ = tiny_run
    out = tmp_path / "cal.onnx"
    with pytest.raises(FerkitError, match="PrivateTest is the final test"):
        calibrate_onnx(source, out, data=csv, split="PrivateTest")
    assert not out.exists()
    with pytest.raises(FerkitError, match="positive"):
        EmotionClassifier(source, temperature=0)
    with pytest.raises(FerkitError, match="positive"):
        evaluate(source, str(csv), split="PublicTest", temperature=-2.0)
    # a model whose metadata holds a bad temperature is refused when it loads
    proto = onnx.load(str(source))
    for bad in ("-1", "\"warm\"", "0"):
        for prop in proto.metadata_props:
            if prop.key == "ferkit_temperature":
                prop.value = bad
                break
        else:
            prop = proto.metadata_props.add()
            prop.key, prop.value = "ferkit_temperature", bad
        onnx.save(proto, str(tmp_path / "bad.onnx"))
        with pytest.raises(FerkitError, match="ferkit_temperature"):
            EmotionClassifier(tmp_path / "bad.onnx")
    # an ensemble's temperature belongs to the ensemble, not to the members split out of it
    calibrate_onnx(exported_pair[2], tmp_path / "ens_cal.onnx", data=csv)
    members = split_ensemble(tmp_path / "ens_cal.onnx", tmp_path / "members")
    assert EmotionClassifier(tmp_path / "ens_cal.onnx").temperature != 1.0
    assert all(EmotionClassifier(m).temperature == 1.0 for m in members)
    capfd.readouterr()
    x = str(tmp_path / "x.onnx")
    for argv, message in (
        (["export", str(source), "--calibrate", "--out", x], "--calibrate needs --data"),
        (["export", str(source), str(source), "--calibrate", "--data", str(csv), "--out", x], "one exported model"),
        (["export", str(tiny_run[1]), str(tiny_run[1]), "--calibrate", "--data", str(csv), "--out", x],
         "one exported model"),
        (["export", str(tiny_run[1]), "--calibrate", "--data", str(csv), "--half", "--out", x], "no --half"),
        (["export", str(tiny_run[1]), "--calibrate", "--out", x], "--calibrate needs --data"),
        (["export", str(tiny_run[1]), "--calibrate", "--data", str(csv), "--out", str(tmp_path / "x.txt")],
         "must be an .onnx"),
        (["export", str(source), "--calibrate", "--quantize", "int8", "--data", str(csv), "--out", x], "two steps"),
        (["export", str(source), "--calibrate", "--data", str(csv), "--tta", "flip", "--out", x], "no --half"),
        (["export", str(source), "--ferplus", str(csv), "--out", x], "--ferplus is for --calibrate"),
        (["export", str(source), "--calibrate", "--data", str(tmp_path / "missing.csv"), "--out", x], "missing.csv"),
        (["evaluate", str(source), "--data", str(csv), "--temperature", "0"], "positive"),
    ):
        assert cli_main(argv) == 2, argv
        assert message in capfd.readouterr().err, argv
    assert not Path(x).exists()


def test_greedy_select_adds_members_only_while_publictest_improves():
    from ferkit.ensemble import greedy_select

    y = np.array([0, 0, 0, 1, 1, 1])
    def onehot(pred, conf=0.6):
        p = np.full((len(pred), 2), 1 - conf)
        p[np.arange(len(pred)), pred] = conf
        return p
    probs = {
        "a": onehot([0, 0, 0, 1, 0, 0], 0.6),        # 4/6
        "b": onehot([0, 1, 0, 1, 1, 1], 0.9),        # 5/6, confident
        "c": onehot([1, 0, 0, 1, 1, 1], 0.55),       # 5/6, its error differs from b's
        "d": onehot([1, 1, 1, 0, 0, 0], 0.99),       # 0/6: never helps
    }
    steps = greedy_select(probs, y)
    assert steps[0] == {"members": ["b"], "accuracy": pytest.approx(5 / 6), "added": "b"}  # tie with c: b listed first
    # b + a and b + c are 5/6 as well: a tie is not an improvement, so nothing is added
    assert [st["members"] for st in steps] == [["b"]]
    steps = greedy_select({"d": probs["d"], **probs}, y)
    assert steps[0]["members"] == ["b"]  # the most accurate single model starts, wherever it is listed
    assert greedy_select(probs, y, max_members=1)[-1]["members"] == ["b"]
    with pytest.raises(FerkitError, match="shape"):
        greedy_select({"a": np.ones((5, 2))}, y)
    with pytest.raises(FerkitError, match="number of classes"):
        greedy_select({"a": np.ones((6, 2)), "b": np.ones((6, 3))}, y)
    with pytest.raises(FerkitError, match="no candidate"):
        greedy_select({}, y)


def test_greedy_select_finds_a_complementary_pair():
    from ferkit.ensemble import greedy_select

    y = np.array([0, 1, 0, 1])
    probs = {
        "x": np.array([[0.9, 0.1], [0.6, 0.4], [0.9, 0.1], [0.7, 0.3]]),  # 2/4
        "y": np.array([[0.4, 0.6], [0.1, 0.9], [0.45, 0.55], [0.1, 0.9]]),  # 2/4, right where x is wrong
        "z": np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]]),   # 2/4
    }
    steps = greedy_select(probs, y)
    assert [s["members"] for s in steps] == [["x"], ["x", "y"]]
    assert steps[-1]["accuracy"] == 1.0


def test_select_ensemble_script_chooses_on_publictest_and_reports_privatetest_after(tiny_run, second_run, tmp_path,
                                                                                     load_benchmark, capsys):
    from ferkit.ensemble import greedy_select

    csv, run, _, _ = tiny_run
    mod = load_benchmark("select_ensemble")
    out_json = tmp_path / "sel.json"
    assert mod.main([str(run), str(second_run), "--data", str(csv), "--tta", "flip", "--test", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out_json.read_text())
    val = {r: evaluate(r, str(csv), split="PublicTest", tta="flip", return_probs=True) for r in (str(run), str(second_run))}
    y_val = val[str(run)]["y_true"]
    expected = greedy_select({r: v["probs"] for r, v in val.items()}, y_val)
    assert res["chosen"] == expected[-1]["members"] and res["steps"][-1]["accuracy"] == pytest.approx(expected[-1]["accuracy"])
    test = {r: evaluate(r, str(csv), split="PrivateTest", tta="flip", return_probs=True) for r in res["chosen"]}
    mean = sum(t["probs"] for t in test.values()) / len(test)
    y_test = next(iter(test.values()))["y_true"]
    assert res["privatetest"]["chosen"] == pytest.approx(float((mean.argmax(1) == y_test).mean()))
    assert "Greedy forward selection on PublicTest" in printed and "ferkit export " + " ".join(res["chosen"]) in printed
    with pytest.raises(SystemExit, match="listed twice"):
        mod.main([str(run), str(run), "--data", str(csv)])


def test_select_ensemble_over_exported_files_and_its_export_line(exported_pair, tiny_run, tmp_path,
                                                                load_benchmark, capsys):
    """The workflow without checkpoints: split an ensemble, choose among its networks and other .onnx files
    on PublicTest, then run the export line the script prints: the file scores what the selection said."""
    import shlex

    from ferkit.onnx_ensemble import split_ensemble

    a, b, ens = exported_pair
    csv = str(tiny_run[0])
    members = [str(p) for p in split_ensemble(ens, tmp_path / "m")]
    mod = load_benchmark("select_ensemble")
    assert mod.main([*members, str(a), "--data", csv, "--tta", "flip", "--json", str(tmp_path / "sel.json")]) == 0
    printed = capsys.readouterr().out
    res = json.loads((tmp_path / "sel.json").read_text())
    assert set(res["candidates_publictest"]) == {*members, str(a)}
    # these tiny networks do not complement each other: one network is chosen, and nothing needs combining
    assert len(res["chosen"]) == 1 and f"use {res['chosen'][0]} as it is" in printed
    # a choice of several .onnx files: the printed line is a working command (float16, the selection's TTA)
    line = mod.export_hint(members, "flip")
    argv = shlex.split(line[len("export: ferkit "):])
    assert argv[-1] == "--half" and argv[argv.index("--tta") + 1] == "flip"
    argv[argv.index("--out") + 1] = str(tmp_path / "chosen.onnx")
    assert cli_main(argv) == 0
    got = evaluate(tmp_path / "chosen.onnx", csv, split="PublicTest", return_probs=True)
    want = [evaluate(m, csv, split="PublicTest", tta="flip", return_probs=True) for m in members]
    mean = sum(w["probs"] for w in want) / len(want)  # the line weighs the chosen files equally
    assert got["tta"] == "flip"
    np.testing.assert_allclose(got["probs"], mean, atol=2e-3)
    assert mod.export_hint([str(tiny_run[1])], "none") == f"export: ferkit export {tiny_run[1]} --out ensemble.onnx"


def test_select_ensemble_scores_ferplus_models_with_the_given_votes_file(tiny_run, tmp_path, load_benchmark):
    """An exported 8-class FER+ model whose recorded fer2013new.csv has moved: the script says what is missing,
    and with --ferplus it scores PublicTest against that file's majority votes."""
    from ferkit.train import TrainConfig, train

    csv = tiny_run[0]

    def votes_for(i, label):
        votes = [0] * 10
        votes[FER_TO_FERPLUS_COLUMN[label] if i % 4 else 7] = 8  # every 4th image: contempt
        return votes

    fp = write_ferplus_csv(csv, tmp_path / "fer2013new.csv", votes_for)
    run = train(TrainConfig(data=str(csv), ferplus=str(fp), ferplus_mode="soft", label_set="ferplus8",
                            out=str(tmp_path / "run"), arch="_test_tiny_bn", epochs=1, augment="none",
                            progress=False, threads=1))
    onnx_path = tmp_path / "fp8.onnx"
    export_onnx(run, onnx_path)
    moved = fp.rename(tmp_path / "moved.csv")
    mod = load_benchmark("select_ensemble")
    with pytest.raises(SystemExit, match="needs FER\\+ votes"):
        mod.main([str(onnx_path), "--data", str(csv)])
    assert mod.main([str(onnx_path), "--data", str(csv), "--ferplus", str(moved), "--json", str(tmp_path / "s.json")]) == 0
    res = json.loads((tmp_path / "s.json").read_text())
    want = evaluate(onnx_path, str(csv), split="PublicTest", tta="none", ferplus=str(moved))
    assert want["labels"][7] == "contempt" and want["true_counts"]["contempt"] > 0  # scored on the FER+ labels
    assert res["candidates_publictest"][str(onnx_path)] == pytest.approx(want["accuracy"])


def test_ferplus_reference_protocol_in_train_evaluate_and_card(tiny_run, tmp_path, capfd):
    """--ferplus-protocol reference: training, evaluation and the model card use the FER+ authors' rule, which
    leaves out the images without a majority (here every third one: 4 votes against 3 + 3)."""
    from ferkit.modelcard import write_model_card
    from ferkit.train import TrainConfig, train

    csv, _, fer7_onnx, _ = tiny_run

    def votes_for(i, label):
        votes = [0] * 10
        col = FER_TO_FERPLUS_COLUMN[label]
        if i % 3:
            votes[col] = 8
        else:  # a plurality, no majority
            votes[col], votes[(col + 1) % 8], votes[(col + 2) % 8] = 4, 3, 3
        return votes

    fp = write_ferplus_csv(csv, tmp_path / "fer2013new.csv", votes_for)
    run = train(TrainConfig(data=str(csv), ferplus=str(fp), ferplus_mode="soft", label_set="ferplus8",
                            ferplus_protocol="reference", out=str(tmp_path / "run"), arch="_test_tiny_bn", epochs=1,
                            augment="none", progress=False, threads=1))
    assert load_checkpoint(run / "best.pt")["config"]["ferplus_protocol"] == "reference"
    onnx_path = tmp_path / "ref.onnx"
    export_onnx(run, onnx_path)
    plural = evaluate(onnx_path, str(csv), split="PublicTest", tta="none", return_probs=True)
    ref = evaluate(onnx_path, str(csv), split="PublicTest", tta="none", ferplus_protocol="reference",
                   return_probs=True)
    public = [i for i, row in enumerate(csv.read_text().splitlines()[1:]) if row.endswith("PublicTest")]
    keep = np.array([i % 3 != 0 for i in public])
    assert plural["n"] == len(public) and ref["n"] == keep.sum() < len(public)
    assert plural["ferplus"]["protocol"] == "plurality" and ref["ferplus"]["protocol"] == "reference"
    np.testing.assert_allclose(ref["probs"], plural["probs"][keep], atol=1e-6)
    np.testing.assert_array_equal(ref["y_true"], plural["y_true"][keep])  # the same labels where both keep
    rc = cli_main(["evaluate", str(onnx_path), "--data", str(csv), "--split", "PublicTest", "--no-tta",
                   "--ferplus-protocol", "reference"])
    out = capfd.readouterr().out
    assert rc == 0 and "FER+ votes, reference protocol" in out and f"n={ref['n']} " in out
    rc = cli_main(["evaluate", str(fer7_onnx), "--data", str(csv), "--ferplus-protocol", "reference"])
    assert rc == 2 and "a FER+ protocol applies to FER+ labels" in capfd.readouterr().err
    card = write_model_card(onnx_path, csv, tmp_path / "card").read_text()
    assert "soft targets, reference protocol" in card and "FER+ authors' protocol" in card
    test_ref = evaluate(onnx_path, str(csv), split="PrivateTest", ferplus_protocol="reference")
    assert f"| PrivateTest | {test_ref['n']} | {100 * test_ref['accuracy']:.2f}% |" in card


def test_model_cards_of_a_single_model_and_an_ensemble(tiny_run, second_run, tmp_path):
    from ferkit.export import export_ensemble
    from ferkit.modelcard import write_model_card

    csv, run, onnx_path, _ = tiny_run
    card = write_model_card(onnx_path, csv, tmp_path / "single", train_command="ferkit train ...").read_text()
    metrics_json = json.loads((tmp_path / "single" / "metrics.json").read_text())
    expected = evaluate(onnx_path, str(csv), split="PrivateTest")
    assert metrics_json["PrivateTest"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert f"| PrivateTest | {expected['n']} | {100 * expected['accuracy']:.2f}% |" in card
    assert "epoch 1 of" in card and "ferkit train ..." in card and "PrivateTest was not used" in card
    assert (tmp_path / "single" / "privatetest" / "confusion_matrix.png").is_file()
    assert "- Weights: int8" not in card
    assert metrics_json["unseen"]["PrivateTest"]["unseen"]["left_out_also_in_training"] == 0
    assert "not in Training" not in card  # no test image occurs in this CSV's Training split
    # a CSV whose PrivateTest holds two copies of Training images: the card adds the rows without them
    rows = csv.read_text().splitlines()
    train_rows = [r for r in rows[1:] if r.endswith(",Training")][:2]
    leaky = tmp_path / "leaky.csv"
    leaky.write_text("\n".join(rows + [r.replace(",Training", ",PrivateTest") for r in train_rows]) + "\n")
    card = write_model_card(onnx_path, leaky, tmp_path / "leaky").read_text()
    clean = evaluate(onnx_path, str(leaky), split="PrivateTest", unseen=True)
    assert clean["n"] == expected["n"] and clean["accuracy"] == pytest.approx(expected["accuracy"])
    assert f"| PrivateTest (not in Training; 2 left out) | {expected['n']} | {100 * expected['accuracy']:.2f}% |" in card
    assert f"| PrivateTest | {expected['n'] + 2} |" in card
    # an int8 model's card says what it was quantized from and on which faces, and scores the int8 model
    from ferkit.quantize import quantize_onnx

    quantize_onnx(onnx_path, tmp_path / "q.onnx", data=csv, n_images=60, seed=2)
    card = write_model_card(tmp_path / "q.onnx", csv, tmp_path / "q").read_text()
    assert f"- Weights: int8 (QDQ: uint8 activations, int8 per channel, 7-bit range weights), quantized from `{onnx_path}`" in card
    assert "scales from 60 random Training faces (seed 2)" in card
    q_eval = evaluate(tmp_path / "q.onnx", str(csv), split="PrivateTest")
    assert f"| PrivateTest | {q_eval['n']} | {100 * q_eval['accuracy']:.2f}% |" in card

    export_ensemble([run, second_run], tmp_path / "ens.onnx")
    card = write_model_card(tmp_path / "ens.onnx", csv, tmp_path / "ens").read_text()
    assert "An ensemble of 2 networks" in card
    assert f"| {run} | `_test_tiny_bn` | 0.5 | 1 of None |" in card and f"| {second_run} |" in card
    ens = evaluate(tmp_path / "ens.onnx", str(csv), split="PrivateTest")
    assert f"| PrivateTest | {ens['n']} | {100 * ens['accuracy']:.2f}% |" in card
    with pytest.raises(FerkitError, match=".onnx"):
        write_model_card(run, csv, tmp_path / "x")
    from ferkit.modelcard import _shown
    from ferkit.runtime import ASSETS_DIR

    assert _shown(str(ASSETS_DIR / "default.onnx")) == "default"  # the card's command names a bundled model
    assert _shown(str(onnx_path)) == str(onnx_path)
    # a member's recipe says whether it kept a weight average, and its seed (members differ by seed)
    from ferkit.modelcard import _recipe_line

    cfg = {"optimizer": "sgd", "lr": 0.1, "epochs": 100, "label_smoothing": 0.1, "seed": 1, "recipe": "cpu-fast"}
    assert "weight average (EMA) 0.999, seed 1," in _recipe_line({**cfg, "ema": 0.999})
    assert "weight average" not in _recipe_line({**cfg, "ema": None}) and "seed 1," in _recipe_line(cfg)


# -- real data ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.realdata
def test_must_show_on_real_fer2013(fer2013_csv, tmp_path):
    """A small checkpoint trained a few steps on 2,000 real training rows: runtime == evaluate(onnx) == evaluate(run)."""
    run = train_tiny_run(fer2013_csv, tmp_path / "run", steps=60, limit=2000)
    onnx_path = tmp_path / "real.onnx"
    info = export_onnx(run, onnx_path)
    assert info["max_abs_diff"] <= 1e-4
    test = prepare_splits(str(fer2013_csv)).get("PrivateTest")
    assert len(test) == 3589
    probs = EmotionClassifier(onnx_path).predict_proba(test.images)
    runtime_acc = float((probs.argmax(1) == test.labels).mean())
    res_onnx = evaluate(onnx_path, fer2013_csv, split="PrivateTest")
    res_torch = evaluate(run, fer2013_csv, split="PrivateTest")
    assert res_onnx["n"] == res_torch["n"] == 3589
    assert res_onnx["accuracy"] == pytest.approx(runtime_acc, abs=0)
    # torch and onnxruntime logits differ by ~1e-6; allow at most one near-tie to flip
    assert abs(res_torch["accuracy"] - runtime_acc) <= 1 / 3589 + 1e-12
    assert res_onnx["data_sha256"] == res_torch["data_sha256"]


def test_evaluate_fer7_model_against_ferplus_majority(tiny_run, tmp_path):
    """--ferplus on a FER2013 model: the same images scored against the FER+ majority vote instead."""
    csv, _, onnx_path, _ = tiny_run

    def votes_for(i, label):
        votes = [0] * 10
        if i % 3 == 0:
            votes[0] = 8            # FER+ says neutral
        elif i % 3 == 1:
            votes[FER_TO_FERPLUS_COLUMN[label]] = 8  # FER+ agrees with FER2013
        else:
            votes[9] = 8            # FER+: not a face -> left out
        return votes

    fp = write_ferplus_csv(csv, tmp_path / "fer2013new.csv", votes_for)

    res = evaluate(onnx_path, csv, split="PrivateTest", ferplus=str(fp), return_probs=True)
    test = prepare_splits(str(csv)).get("PrivateTest")
    keep = test.rows % 3 != 2
    want = np.where(test.rows[keep] % 3 == 0, 6, test.labels[keep])  # 6 = neutral in fer7
    assert res["n"] == int(keep.sum()) and res["y_true"].tolist() == want.tolist()
    pred = res["probs"].argmax(1)
    assert res["accuracy"] == pytest.approx(float((pred == want).mean()))
    plain = evaluate(onnx_path, csv, split="PrivateTest")
    assert plain["n"] == len(test) and plain["accuracy"] != pytest.approx(res["accuracy"])
