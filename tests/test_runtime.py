"""The torch-free runtime: EmotionClassifier on hand-built ONNX models (no torch needed for these tests)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ferkit import runtime  # noqa: E402
from ferkit.errors import FerkitError  # noqa: E402
from ferkit.labels import EMOTIONS  # noqa: E402
from ferkit.preprocess import PreprocessSpec, prepare_faces  # noqa: E402
from ferkit.runtime import EmotionClassifier  # noqa: E402
from ferkit.tta import tta_views  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def linear_onnx(path: Path, *, c: int = 7, size: int = 48, seed: int = 0, metadata: dict | None = None,
                ferkit_meta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Write a linear classifier logits = flatten(x) @ W.T + b as ONNX; returns (W, b)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (c, size * size)).astype(np.float32)
    b = rng.normal(0, 0.1, c).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1)],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if ferkit_meta:
        meta = {
            "format": "ferkit-onnx-1", "labels": list(EMOTIONS[:c]) if c <= 7 else [f"c{i}" for i in range(c)],
            "label_set": "fer7", "input_size": size, "preprocess": PreprocessSpec(size=size).to_dict(),
            "arch": "linear-test", "tta": "none", "provenance": {"data_sha256": None},
        }
        meta.update(metadata or {})
        for k, v in meta.items():
            e = model.metadata_props.add()
            e.key, e.value = f"ferkit_{k}", json.dumps(v)
    onnx.save(model, str(path))
    return w, b


def ref_probs(faces, w, b, spec=PreprocessSpec()):
    x = prepare_faces(faces, spec).reshape(len(faces), -1).astype(np.float64)
    z = x @ w.T.astype(np.float64) + b
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


@pytest.fixture
def linear_model(tmp_path):
    path = tmp_path / "linear.onnx"
    w, b = linear_onnx(path)
    return path, w, b


@pytest.fixture
def faces():
    return np.random.default_rng(1).integers(0, 256, (23, 48, 48), dtype=np.uint8)


def test_predict_proba_matches_reference_and_metadata(linear_model, faces):
    path, w, b = linear_model
    clf = EmotionClassifier(path, threads=1)
    assert clf.labels == EMOTIONS
    assert clf.spec == PreprocessSpec()
    assert clf.metadata["arch"] == "linear-test"
    assert clf.threads == 1 and clf.tta == "none"
    p = clf.predict_proba(faces)
    assert p.shape == (23, 7) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p, ref_probs(faces, w, b), atol=1e-5)
    np.testing.assert_array_equal(clf.predict(faces), ref_probs(faces, w, b).argmax(1))
    assert clf.predict_labels(faces[:2]) == [EMOTIONS[i] for i in ref_probs(faces[:2], w, b).argmax(1)]


def test_batching_lists_and_sizes(linear_model, faces):
    path, w, b = linear_model
    full = EmotionClassifier(path).predict_proba(faces)
    small_batches = EmotionClassifier(path, batch_size=4).predict_proba(faces)
    np.testing.assert_allclose(small_batches, full, atol=1e-6)
    as_list = EmotionClassifier(path).predict_proba(list(faces))
    np.testing.assert_allclose(as_list, full, atol=1e-6)
    # crops of any size go through the same resize as prepare_faces
    crops = [np.random.default_rng(i).integers(0, 256, (30 + 7 * i, 41 + 3 * i), dtype=np.uint8) for i in range(5)]
    np.testing.assert_allclose(EmotionClassifier(path).predict_proba(crops), ref_probs(crops, w, b), atol=1e-5)
    assert EmotionClassifier(path).predict_proba(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)
    assert EmotionClassifier(path).predict_proba([]).shape == (0, 7)


def test_preprocess_spec_comes_from_metadata(tmp_path, faces):
    path = tmp_path / "eq.onnx"
    spec = PreprocessSpec(mean=0.4, std=0.3, equalize=True)
    w, b = linear_onnx(path, metadata={"preprocess": spec.to_dict()})
    clf = EmotionClassifier(path)
    assert clf.spec == spec
    np.testing.assert_allclose(clf.predict_proba(faces), ref_probs(faces, w, b, spec), atol=1e-5)
    assert not np.allclose(ref_probs(faces, w, b, spec), ref_probs(faces, w, b), atol=1e-3)


def test_tta_default_from_metadata_and_override(tmp_path, faces):
    path = tmp_path / "tta.onnx"
    w, b = linear_onnx(path, metadata={"tta": "tencrop"})
    clf = EmotionClassifier(path)
    assert clf.tta == "tencrop" and clf.default_tta == "tencrop"
    x = prepare_faces(faces)
    views = list(tta_views(x, "tencrop"))
    assert len(views) == 10
    expected = np.mean([ref_probs_from_x(v, w, b) for v in views], axis=0)
    np.testing.assert_allclose(clf.predict_proba(faces), expected, atol=1e-5)
    np.testing.assert_allclose(clf.predict_proba(faces, tta="none"), ref_probs(faces, w, b), atol=1e-5)
    assert EmotionClassifier(path, tta=False).tta == "none"
    assert not np.allclose(clf.predict_proba(faces), ref_probs(faces, w, b), atol=1e-4)


def ref_probs_from_x(x, w, b):
    z = x.reshape(len(x), -1).astype(np.float64) @ w.T.astype(np.float64) + b
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def test_tta_views_geometry():
    x = np.arange(2 * 48 * 48, dtype=np.float32).reshape(2, 1, 48, 48)
    flip = list(tta_views(x, "flip"))
    assert len(flip) == 2
    np.testing.assert_array_equal(flip[1][0, 0, :, 0], x[0, 0, :, -1])
    ten = list(tta_views(x, "tencrop"))
    assert all(v.shape == x.shape and v.dtype == np.float32 for v in ten)
    # views come in (crop, mirror) pairs
    for a, m in zip(ten[0::2], ten[1::2]):
        np.testing.assert_array_equal(m, a[..., ::-1])
    # the top-left crop starts at the image's top-left pixel, the bottom-right one ends at its last pixel
    assert ten[0][0, 0, 0, 0] == pytest.approx(x[0, 0, 0, 0], abs=1e-3)
    assert ten[6][0, 0, -1, -1] == pytest.approx(x[0, 0, -1, -1], abs=1e-3)
    # the five crops differ from each other and from the original
    assert len({v.tobytes() for v in ten[0::2]}) == 5
    with pytest.raises(FerkitError, match="unknown test-time"):
        list(tta_views(x, "twentycrop"))


@pytest.mark.parametrize("n, crop, size", [(3, 44, 48), (600, 44, 48), (5, 60, 48), (2, 40, 64)])
def test_tencrop_resize_matches_opencv_per_image(n, crop, size):
    """The ten-crop resize (two matrix products for the whole batch; OpenCV 5 refused the earlier
    many-channel cv2 call) equals cv2.resize INTER_LINEAR image by image, up- and downscaling, more than 512
    images too."""
    import cv2

    from ferkit.tta import _resize_stack
    imgs = np.random.default_rng(n).random((n, crop, crop), dtype=np.float32)
    want = np.stack([cv2.resize(i, (size, size), interpolation=cv2.INTER_LINEAR) for i in imgs])
    got = _resize_stack(imgs, size)
    assert got.shape == (n, size, size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((3, 48, 48), np.float32), "uint8"),
    (np.zeros((48, 48), np.uint8), "faces\\[None\\]"),
    (np.zeros((2, 1, 48, 48), np.uint8), "shape"),
    (np.zeros((2, 0, 48), np.uint8), "empty"),
    ([np.zeros((48, 48), np.uint8), "face.png"], "face 1"),
    ([np.zeros((48, 48), np.int64)], "dtype"),
    ([np.zeros((4, 48, 48, 2), np.uint8)], "shape"),
    ("face.png", "got str"),
])
def test_bad_face_input_is_a_clear_error(linear_model, bad, msg):
    clf = EmotionClassifier(linear_model[0])
    with pytest.raises(FerkitError, match=msg):
        clf.predict_proba(bad)


def test_bad_model_files(tmp_path):
    with pytest.raises(FerkitError, match="not found"):
        EmotionClassifier(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \x00\xff" * 50)
    with pytest.raises(FerkitError, match="cannot load"):
        EmotionClassifier(junk)
    plain = tmp_path / "plain.onnx"
    linear_onnx(plain, ferkit_meta=False)
    with pytest.raises(FerkitError, match="not one exported by ferkit"):
        EmotionClassifier(plain)
    good = tmp_path / "good.onnx"
    linear_onnx(good)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FerkitError):
        EmotionClassifier(truncated)
    mismatch = tmp_path / "mismatch.onnx"
    linear_onnx(mismatch, c=5)  # 5 outputs, but metadata below names 7 labels
    m = onnx.load(str(mismatch))
    for e in m.metadata_props:
        if e.key == "ferkit_labels":
            e.value = json.dumps(list(EMOTIONS))
    onnx.save(m, str(mismatch))
    with pytest.raises(FerkitError, match="5 outputs"):
        EmotionClassifier(mismatch)
    with pytest.raises(FerkitError, match="directory"):
        EmotionClassifier(tmp_path)
    with pytest.raises(FerkitError, match="threads"):
        EmotionClassifier(good, threads=0)


def test_bundled_models_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "ASSETS_DIR", tmp_path / "assets")
    with pytest.raises(FerkitError, match="no bundled model named 'default'"):
        EmotionClassifier()
    (tmp_path / "assets").mkdir()
    linear_onnx(tmp_path / "assets" / "accurate.onnx", seed=3)
    assert runtime.bundled_models() == ["accurate"]
    clf = EmotionClassifier("accurate")
    assert clf.path == tmp_path / "assets" / "accurate.onnx"
    with pytest.raises(FerkitError, match="bundled models: accurate"):
        EmotionClassifier("default")


def test_real_bundled_default_model_if_shipped():
    path = runtime.ASSETS_DIR / "default.onnx"
    if not path.is_file():
        with pytest.raises(FerkitError, match="no bundled model"):
            EmotionClassifier()
        return
    clf = EmotionClassifier()
    p = clf.predict_proba(np.full((3, 48, 48), 128, np.uint8))
    assert p.shape == (3, len(clf.labels))
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def run_fresh_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet); its stdout, stripped; it must exit 0."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_runtime_never_imports_torch(linear_model):
    path = linear_model[0]
    code = (
        "import sys, numpy as np\n"
        "import ferkit, ferkit.runtime, ferkit.tta, ferkit.metrics\n"
        f"clf = ferkit.EmotionClassifier({str(path)!r})\n"
        "p = clf.predict_proba(np.zeros((2, 48, 48), np.uint8), tta='tencrop')\n"
        "assert p.shape == (2, 7)\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "print('TORCH' if bad else 'NO-TORCH')\n"
    )
    assert run_fresh_python(code) == "NO-TORCH"


def test_predict_proba_prepared_takes_the_same_steps_as_predict_proba():
    faces = np.random.default_rng(5).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    for clf in (EmotionClassifier(), EmotionClassifier(tta="flip"), EmotionClassifier(temperature=1.0)):
        # the default model carries a calibration temperature; flip TTA averages two views
        got = clf.predict_proba_prepared(prepare_faces(faces, clf.spec))
        np.testing.assert_allclose(got, clf.predict_proba(faces), atol=1e-6)
    calibrated = EmotionClassifier()
    assert calibrated.temperature != 1.0
    assert not np.allclose(calibrated.predict_proba_prepared(prepare_faces(faces, calibrated.spec)),
                           EmotionClassifier(temperature=1.0).predict_proba(faces), atol=1e-4)


def test_public_names_are_listed_and_star_import_gives_the_lazy_ones():
    code = (
        "import sys, ferkit\n"
        "assert 'ferkit.pipeline' not in sys.modules  # import ferkit stays light\n"
        "listed = dir(ferkit)\n"
        "assert {'analyze', 'FaceResult', 'EmotionClassifier', 'EMOTIONS'} <= set(listed), listed\n"
        "ns = {}\n"
        "exec('from ferkit import *', ns)\n"
        "assert callable(ns['analyze']) and ns['FaceResult'].__name__ == 'FaceResult'\n"
        "assert ns['EmotionClassifier'].__name__ == 'EmotionClassifier'\n"
        "assert ns['EMOTIONS'][0] == 'angry'\n"
        "print('OK')\n"
    )
    assert run_fresh_python(code) == "OK"


def test_commands_without_their_extra_say_which_to_install(tmp_path):
    """On the base install (no torch, no matplotlib) the training commands answer with the extra to install,
    not a traceback; simulated here by hiding the modules in a fresh interpreter."""
    code = (
        "import sys\n"
        "for m in ('torch', 'matplotlib'): sys.modules[m] = None  # as if not installed\n"
        "from ferkit.cli import main\n"
        f"rc = main(['train', '--data', 'x.csv', '--arch', 'fastres_s', '--out', {str(tmp_path / 'r')!r}])\n"
        "rc2 = main(['models'])\n"
        "print(rc, rc2)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["2", "2"], out.stderr[-1500:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("ferkit: error:")]
    assert len(lines) == 2 and all("pip install 'ferkit[train]'" in line for line in lines), out.stderr
    assert "Traceback" not in out.stderr
