"""The inference path: image reading, sources, detection interface, cropping/alignment, the pipeline and
``ferkit predict`` on images. No camera needed.

Synthetic images use a fake detector that finds bright squares (a detector cannot be expected to find a
drawn cartoon); real detectors are tested on faces-dev photos when ../shared/data is present.
"""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import ferkit
from ferkit import pipeline
from ferkit.cli import main as cli_main
from ferkit.errors import FerkitError
from ferkit.faces import Detection, detect_faces, get_detector, iou
from ferkit.faces.align import CropSpec, crop_face, eye_angle
from ferkit.io import Source, decode_image, exif_orientation, expand_sources, read_image
from ferkit.labels import EMOTIONS

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "ferkit" / "assets" / "default.onnx"


# ------------------------------------------------------------------------------------------ helpers
class SquareDetector:
    """A stand-in face detector: every bright (>= 200) square blob of at least 8 px is a "face".

    Its score is the blob's mean brightness / 255; landmarks are two "eyes" in the blob's upper third.
    """

    name = "squares"
    wants = "gray"
    default_confidence = 0.5
    default_pad = 0.0
    default_crop = CropSpec()

    def __init__(self):
        self.calls = []

    def detect(self, image, confidence):
        self.calls.append(image.shape)
        n, _, stats, _ = cv2.connectedComponentsWithStats((image >= 200).astype(np.uint8), connectivity=4)
        out = []
        for x, y, w, h, area in stats[1:]:
            if w < 8 or h < 8:
                continue
            score = float(image[y:y + h, x:x + w].mean()) / 255.0
            if score < confidence:
                continue
            lm = ((x + w * 0.3, y + h * 0.35), (x + w * 0.7, y + h * 0.35), (x + w * 0.5, y + h * 0.55),
                  (x + w * 0.35, y + h * 0.75), (x + w * 0.65, y + h * 0.75))
            out.append(Detection(box=(int(x), int(y), int(w), int(h)), score=score, landmarks=lm))
        return out


def scene(h=240, w=320, squares=((60, 50, 80),), value=255, bg=40, channels=3):
    """A dark image with bright squares (x, y, side)."""
    img = np.full((h, w), bg, np.uint8)
    for x, y, s in squares:
        img[y:y + s, x:x + s] = value
        img[y + s // 3:y + s // 3 + 3, x + s // 4:x + 3 * s // 4] = value - 30  # a little texture
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if channels == 3 else img


def linear_model(path: Path) -> Path:
    """A tiny ferkit-format ONNX (logits = flatten(x) @ W.T + b) for tests when no bundled model exists."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from ferkit.preprocess import PreprocessSpec

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (7, 48 * 48)).astype(np.float32)
    b = rng.normal(0, 0.1, 7).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1)],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 48, 48])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 7])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"format": "ferkit-onnx-1", "labels": list(EMOTIONS), "label_set": "fer7", "input_size": 48,
            "preprocess": PreprocessSpec().to_dict(), "arch": "linear-test", "tta": "none", "provenance": {}}
    for k, v in meta.items():
        e = model.metadata_props.add()
        e.key, e.value = f"ferkit_{k}", json.dumps(v)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """The bundled default model when the package ships it, else a tiny linear test model."""
    if BUNDLED.is_file():
        return BUNDLED
    return linear_model(tmp_path_factory.mktemp("model") / "linear.onnx")


@pytest.fixture
def analyzer(model_path):
    return pipeline.Analyzer(str(model_path), detector=SquareDetector())


@pytest.fixture
def use_square_detector(monkeypatch, model_path):
    """Make ``ferkit predict`` / ``ferkit live`` build their analyzer with the square detector."""
    from ferkit.commands import predict as predict_cmd

    def build(args):
        return pipeline.Analyzer(args.model or str(model_path), detector=SquareDetector(), min_face=args.min_face,
                                 largest_only=args.largest, confidence=args.confidence)

    monkeypatch.setattr(predict_cmd, "build_analyzer", build)


def real_photos(faces_dev: Path, n: int) -> list[Path]:
    rows = list(csv.DictReader(open(faces_dev / "labels.csv")))
    return [faces_dev / r["file"] for r in rows[:: max(1, len(rows) // n)][:n]]


# ------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tiff"])
def test_read_image_formats(tmp_path, ext):
    img = scene()
    img[:, :, 2] = np.linspace(0, 255, img.shape[1], dtype=np.uint8)[None, :]  # some colour
    path = tmp_path / f"x{ext}"
    assert cv2.imwrite(str(path), img)
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == img.shape
    assert np.abs(got.astype(int) - img.astype(int)).mean() < 4  # lossy formats are close


def test_read_gray_16bit_and_rgba_png(tmp_path):
    gray = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (20, 1))
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    g = read_image(tmp_path / "g.png")
    assert g.shape == (20, 128, 3) and (g[:, :, 0] == gray).all() and (g[:, :, 2] == gray).all()

    deep = (np.tile(np.linspace(0, 65535, 64), (8, 1))).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    d = read_image(tmp_path / "d.png")
    assert d.dtype == np.uint8 and d.shape == (8, 64, 3)
    assert d[0, 0, 0] == 0 and d[0, -1, 0] == 255 and abs(int(d[0, 32, 0]) - 132) <= 2

    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (0, 0, 255, 255)  # opaque red (BGRA)
    rgba[:, 5:] = (0, 0, 0, 0)      # fully transparent black
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    a = read_image(tmp_path / "a.png")
    assert a.shape == (10, 10, 3)
    assert tuple(a[0, 0]) == (0, 0, 255) and tuple(a[0, 9]) == (255, 255, 255)


def test_array_conversions_share_one_dtype_rule():
    """ferkit.faces.as_gray is ferkit.preprocess.to_gray (one implementation for detection and the model's
    input); every dtype maps to uint8 the same way, and a bad shape is a FerkitError."""
    from ferkit.faces import as_bgr, as_gray
    from ferkit.preprocess import to_gray, to_uint8

    assert as_gray is to_gray
    assert to_uint8(np.array([0, 256, 65535], np.uint16)).tolist() == [0, 1, 255]  # 16-bit values
    assert to_uint8(np.array([0, 100, 255], np.uint16)).tolist() == [0, 100, 255]  # 8-bit values in uint16
    assert to_uint8(np.array([-0.5, 0.5, 1.0])).tolist() == [0, 128, 255]  # floats in 0..1
    assert to_uint8(np.array([-0.5, 0.5, 2.0, 300.0, np.nan])).tolist() == [0, 1, 2, 255, 0]  # floats in 0..255
    assert to_uint8(np.array([False, True])).tolist() == [0, 255]
    assert to_uint8(np.array([-3, 7, 255])).tolist() == [0, 7, 255]
    assert to_uint8(np.array([-3, 7, 300, 65535])).tolist() == [0, 0, 1, 255]  # int32 holding 16-bit values
    bgr = np.zeros((4, 5, 3), np.float32)
    bgr[..., 2] = 1.0  # pure red in BGR order
    assert to_gray(bgr).shape == (4, 5) and int(to_gray(bgr)[0, 0]) == 76  # 0.299 * 255
    assert as_bgr(np.full((4, 5), True)).shape == (4, 5, 3) and int(as_bgr(np.full((4, 5), True))[0, 0, 1]) == 255
    with pytest.raises(FerkitError, match="gray, BGR or BGRA"):
        to_gray(np.zeros((4, 5, 2), np.uint8))


def _exif_app1(orientation: int, big_endian: bool = False) -> bytes:
    e = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    tiff += struct.pack(e + "H", 1) + struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "HH", orientation, 0)
    tiff += struct.pack(e + "I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _asymmetric():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:20, :20] = (255, 255, 255)  # a white block in the top-left corner
    img[:, 60:] = (0, 0, 200)
    return img


@pytest.mark.parametrize("orientation,expect", [
    (1, lambda a: a),
    (3, lambda a: cv2.rotate(a, cv2.ROTATE_180)),
    (6, lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE)),
    (8, lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE)),
    (2, lambda a: a[:, ::-1]),
])
def test_exif_orientation_jpeg(tmp_path, orientation, expect):
    raw = _asymmetric()
    ok, enc = cv2.imencode(".jpg", raw, [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = enc.tobytes()
    data = data[:2] + _exif_app1(orientation, big_endian=orientation == 6) + data[2:]
    path = tmp_path / "o.jpg"
    path.write_bytes(data)
    assert exif_orientation(data) == orientation
    got = read_image(path)
    want = expect(cv2.imdecode(enc, cv2.IMREAD_COLOR))
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 3


def test_exif_orientation_png(tmp_path):
    raw = _asymmetric()
    data = cv2.imencode(".png", raw)[1].tobytes()
    tiff = _exif_app1(6)[10:]  # the TIFF part only
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    ihdr_end = 8 + 25
    data = data[:ihdr_end] + chunk + data[ihdr_end:]
    got = decode_image(data)
    assert got.shape == (80, 40, 3)
    assert (got == cv2.rotate(raw, cv2.ROTATE_90_CLOCKWISE)).all()


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_tiff_is_applied_once(orientation, mode):
    """OpenCV's TIFF decoder already turns a TIFF upright: ferkit must not turn it a second time."""
    from PIL import Image, ImageOps
    raw = _asymmetric()[:, :, ::-1]  # RGB for PIL
    pil = Image.fromarray(raw).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    pil.save(buf, format="TIFF", exif=exif.tobytes(), compression="tiff_lzw")
    data = buf.getvalue()
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))[:, :, ::-1]
    got = decode_image(data)
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_analyze_takes_pil_images_and_arrays_as_their_files_read(tmp_path, model_path):
    """A PIL image with an EXIF orientation, a 16-bit PIL image and float/uint16 arrays holding 0..255 values
    give the same faces as the file itself (they used to give none: sideways, or a white image)."""
    from PIL import Image

    img = scene(squares=((60, 50, 80),))
    a = pipeline.Analyzer(str(model_path), detector=SquareDetector())
    want = [(f.box, f.emotion) for f in a.analyze(img)]
    assert len(want) == 1
    stored = cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)  # stored sideways, orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored[:, :, ::-1]).save(tmp_path / "o6.jpg", exif=exif.tobytes(), quality=95)
    for source in (tmp_path / "o6.jpg", Image.open(tmp_path / "o6.jpg")):
        assert [f.box for f in a.analyze(source)] == [w[0] for w in want], source
    gray16 = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    from_file = [(f.box, f.emotion) for f in a.analyze(tmp_path / "g16.png")]
    assert from_file and [(f.box, f.emotion) for f in a.analyze(Image.open(tmp_path / "g16.png"))] == from_file
    for arr in (img.astype(np.float32), img.astype(np.float64) / 255.0, img.astype(np.uint16),
                img.astype(np.uint16) * 257):
        assert [(f.box, f.emotion) for f in a.analyze(arr)] == want, arr.dtype


def test_bad_image_files_are_clear_errors(tmp_path):
    good = cv2.imencode(".jpg", scene())[1].tobytes()
    cases = {
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "corrupt.jpg": (good[:20] + bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)), "corrupt"),
        "text.png": (b"this is not an image\n", "cannot decode"),
        "empty.jpg": (b"", "empty"),
    }
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FerkitError, match=msg):
            read_image(tmp_path / name)
    with pytest.raises(FerkitError, match="no such file"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(FerkitError, match="folder"):
        read_image(tmp_path)
    # trailing bytes after the end-of-image marker (e.g. a motion photo) are fine
    (tmp_path / "trailer.jpg").write_bytes(good + b"\x00" * 100 + b"ftypmp42" * 10)
    assert read_image(tmp_path / "trailer.jpg").shape == (240, 320, 3)


def test_expand_sources_kinds(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "d" / "b.png"), scene())
    cv2.imwrite(str(tmp_path / "d" / "sub" / "a.jpg"), scene())
    (tmp_path / "d" / "notes.txt").write_text("x")
    (tmp_path / "d" / "clip.mp4").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    exp = expand_sources([str(tmp_path / "d"), str(tmp_path / "d" / "*.png"), "0", 3,
                          str(tmp_path / "nope.jpg"), str(tmp_path / "empty"), str(tmp_path / "*.gif")])
    kinds = [(s.kind, Path(s.path).name if s.path else s.camera) for s in exp.sources]
    assert kinds == [("image", "b.png"), ("video", "clip.mp4"), ("image", "a.jpg"), ("image", "b.png"),
                     ("camera", 0), ("camera", 3)]
    assert exp.skipped == 1
    assert len(exp.errors) == 3 and "no such file" in exp.errors[0][1] and "no images" in exp.errors[1][1]
    flat = expand_sources([str(tmp_path / "d")], recursive=False)
    assert [Path(s.path).name for s in flat.sources] == ["b.png", "clip.mp4"]
    assert Source("camera", camera=2).name == "camera:2"


# ---------------------------------------------------------------------------------------- detection
def test_detect_faces_options_and_downscaling():
    det = SquareDetector()
    img = scene(squares=((20, 20, 30), (150, 60, 90)))
    found = detect_faces(img, det)
    assert [d.box for d in found] == [(150, 60, 90, 90), (20, 20, 30, 30)]  # largest first
    assert [d.box for d in detect_faces(img, det, largest_only=True)] == [(150, 60, 90, 90)]
    assert [d.box for d in detect_faces(img, det, min_size=40)] == [(150, 60, 90, 90)]
    dim = scene(squares=((20, 20, 30),), value=210)
    assert detect_faces(dim, det, confidence=0.9) == [] and len(detect_faces(dim, det, confidence=0.5)) == 1
    # a very large image is downscaled for detection, boxes come back in original pixels
    big = scene(h=3000, w=4000, squares=((1000, 800, 600),))
    det.calls.clear()
    (d,) = detect_faces(big, det, max_side=800)
    assert max(det.calls[-1]) == 800
    assert iou(d.box, (1000, 800, 600, 600)) > 0.97
    lm = np.asarray(d.landmarks)
    assert abs(lm[0, 0] - (1000 + 600 * 0.3)) < 8 and abs(lm[0, 1] - (800 + 600 * 0.35)) < 8
    # padding for detection does not shift boxes
    det.calls.clear()
    (p,) = detect_faces(scene(squares=((10, 12, 60),)), det, pad=0.25)
    assert p.box == (10, 12, 60, 60) and det.calls[-1] == (240 + 160, 320 + 160)
    with pytest.raises(FerkitError, match="confidence"):
        detect_faces(img, det, confidence=1.5)
    with pytest.raises(FerkitError, match="unknown face detector"):
        detect_faces(img, "mtcnn")
    assert detect_faces(np.zeros((50, 60), np.uint8), det) == []


def test_crop_framing_and_alignment():
    # an image whose pixel value encodes its coordinates lets us check exactly which region is cut
    xs = np.tile(np.arange(200, dtype=np.uint8), (200, 1))
    det = Detection(box=(60, 40, 80, 80), score=1.0)
    c = crop_face(xs, det, CropSpec(scale=1.0))
    assert c.shape == (80, 80) and c[0, 0] == 60 and c[0, -1] == 139
    c = crop_face(xs, det, CropSpec(scale=1.5, shift_x=0.25))
    assert c.shape == (120, 120) and c[0, 0] == 60 - 20 + 20 and c[0, -1] == 179
    # outside the image: edge pixels are replicated
    c = crop_face(xs, Detection(box=(-20, 0, 40, 40), score=1.0), CropSpec())
    assert c.shape == (40, 40) and (c[:, :20] == 0).all()
    # alignment: two dots on a tilted line end up level after the crop
    img = np.zeros((200, 200), np.uint8)
    e1, e2 = (70.0, 80.0), (130.0, 100.0)  # right eye lower: the face is rolled by ~18 degrees
    for (x, y) in (e1, e2):
        cv2.circle(img, (int(x), int(y)), 4, 255, -1)
    d = Detection(box=(50, 50, 100, 100), score=1.0, landmarks=(e1, e2, (100, 110), (80, 130), (120, 135)))
    assert eye_angle(d.landmarks) == pytest.approx(np.degrees(np.arctan2(20, 60)))
    plain = crop_face(img, d, CropSpec(align=False))
    aligned = crop_face(img, d, CropSpec(align=True))

    def dot_rows(a):
        n, _, _, cent = cv2.connectedComponentsWithStats((a > 128).astype(np.uint8))
        return sorted(cent[1:, 1])

    assert abs(np.diff(dot_rows(plain))[0]) > 15
    assert abs(np.diff(dot_rows(aligned))[0]) < 1.5
    with pytest.raises(FerkitError):
        CropSpec(scale=0)


@pytest.mark.realdata
def test_real_detectors_find_faces_in_photos(faces_dev):
    photos = real_photos(faces_dev, 6)
    for name in ("yunet", "haar"):
        try:
            get_detector(name)
        except FerkitError:
            pytest.skip(f"{name} not installed")
        hits = 0
        for p in photos:
            img = read_image(p)
            dets = detect_faces(img, name)
            if dets:
                hits += 1
                x, y, w, h = dets[0].clipped(img.shape[1], img.shape[0])
                assert w * h > 0.1 * img.shape[0] * img.shape[1]  # faces-dev photos are mostly face
        assert hits >= 5, f"{name} found a face in only {hits}/6 photos"
    # a blank image holds no face
    assert detect_faces(np.full((300, 300, 3), 127, np.uint8), "yunet") == []
    assert detect_faces(np.full((300, 300, 3), 127, np.uint8), "haar") == []


@pytest.mark.realdata
@pytest.mark.parametrize("detector", ["haar", "yunet"])
def test_analyze_from_several_threads_gives_the_one_thread_answers(faces_dev, detector):
    # OpenCV's Haar cascade is not thread-safe: before its lock, 6 threads got other boxes on most photos
    from concurrent.futures import ThreadPoolExecutor

    try:
        get_detector(detector)
    except FerkitError:
        pytest.skip(f"{detector} not installed")
    photos = [read_image(p) for p in real_photos(faces_dev, 24)]

    def run(img):
        return [(f.box, f.emotion, round(f.score, 5)) for f in ferkit.analyze(img, detector=detector)]

    alone = [run(img) for img in photos]
    assert sum(bool(r) for r in alone) >= 20
    for _ in range(2):
        with ThreadPoolExecutor(6) as ex:
            assert list(ex.map(run, photos)) == alone


# ----------------------------------------------------------------------------------------- pipeline
def test_analyze_api(analyzer, tmp_path):
    img = scene(squares=((200, 100, 60), (30, 40, 100)))
    faces = analyzer.analyze(img)
    assert [f.box for f in faces] == [(30, 40, 100, 100), (200, 100, 60, 60)]
    for f in faces:
        assert isinstance(f, ferkit.FaceResult)
        assert list(f.probabilities) == list(analyzer.labels)
        assert sum(f.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert f.emotion == max(f.probabilities, key=f.probabilities.get)
        assert f.score == pytest.approx(f.probabilities[f.emotion])
        d = json.loads(json.dumps(f.to_dict(source="x")))
        assert set(d) >= {"source", "box", "emotion", "score", "probabilities"} and d["box"] == list(f.box)
        assert "track" not in d
    # the same answer from a path, from RGB with channels='rgb', and from gray
    cv2.imwrite(str(tmp_path / "s.png"), img)
    for other in (analyzer.analyze(str(tmp_path / "s.png")), analyzer.analyze(img[:, :, ::-1].copy(), channels="rgb"),
                  analyzer.analyze(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))):
        assert [f.box for f in other] == [f.box for f in faces]
        assert [f.emotion for f in other] == [f.emotion for f in faces]
    # ... and from encoded bytes and PIL images (RGB, RGBA and gray), the forms web code and notebooks hold
    forms = [(tmp_path / "s.png").read_bytes()]
    Image = pytest.importorskip("PIL.Image")
    rgb = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))
    forms += [rgb, rgb.convert("RGBA"), rgb.convert("L")]
    for form in forms:
        other = analyzer.analyze(form)
        assert [f.box for f in other] == [f.box for f in faces]
        assert [f.emotion for f in other] == [f.emotion for f in faces]
        if form is not forms[-1]:  # the same pixels exactly (PIL's own gray conversion rounds its own way)
            for f, ref in zip(other, faces):
                assert f.probabilities == pytest.approx(ref.probabilities, abs=1e-6)
    # no face: an empty list, not an error
    assert analyzer.analyze(np.full((100, 100, 3), 30, np.uint8)) == []
    with pytest.raises(FerkitError):
        analyzer.analyze("definitely/missing.jpg")
    with pytest.raises(FerkitError, match="PIL image or a numpy image array, got list"):
        analyzer.analyze([1, 2, 3])
    with pytest.raises(FerkitError, match="cannot decode"):
        analyzer.analyze(b"not an image at all")


def test_module_level_analyze_and_lazy_exports(model_path, monkeypatch):
    assert ferkit.analyze is pipeline.analyze and ferkit.FaceResult is pipeline.FaceResult
    assert ferkit.EMOTIONS == EMOTIONS
    det = SquareDetector()
    a = pipeline.analyze(scene(), model=str(model_path), detector=det)
    b = pipeline.analyze(scene(), model=str(model_path), detector=det)
    assert len(a) == 1 and a[0].box == (60, 50, 80, 80) and a[0].probabilities == b[0].probabilities


class RecordingClassifier:
    """A classifier stand-in: records the crops it gets; says 'happy' for bright crops, else 'sad'."""

    labels = EMOTIONS

    def __init__(self):
        self.crops = []

    def predict_proba(self, crops):
        self.crops.extend(crops)
        out = np.full((len(crops), 7), 0.02)
        for i, c in enumerate(crops):
            out[i, 3 if c.mean() > 150 else 4] = 0.88
        return out


def test_pipeline_crops_follow_the_crop_spec():
    clf = RecordingClassifier()
    img = scene(squares=((100, 80, 60),))
    a = pipeline.Analyzer(clf, detector=SquareDetector(), crop=CropSpec(scale=1.0))
    (f,) = a.analyze(img)
    assert f.emotion == "happy" and clf.crops[-1].shape == (60, 60) and clf.crops[-1].ndim == 2
    b = pipeline.Analyzer(clf, detector=SquareDetector(), crop=CropSpec(scale=2.0))
    (g,) = b.analyze(img)
    assert clf.crops[-1].shape == (120, 120) and g.emotion == "sad"  # mostly background now
    assert g.box == f.box  # the reported box is the detection, not the crop


def test_draw_results(analyzer):
    img = scene(squares=((100, 80, 60),))
    before = img.copy()
    faces = analyzer.analyze(img)
    out = analyzer.draw(img, faces)
    assert (img == before).all() and out.shape == img.shape
    assert (out != img).any(axis=2)[80, 100:160].mean() > 0.9  # the box's top edge is drawn
    blank = analyzer.draw(img, [])
    assert (blank == img).all()


def test_analyzer_refuses_bad_detection_settings(model_path):
    for kw in ({"pad": -1}, {"pad": 3}, {"pad": "wide"}, {"max_side": 0}, {"max_side": 10}, {"max_side": 500.5}):
        with pytest.raises(FerkitError, match="pad is a border|max_side must be"):
            pipeline.Analyzer(str(model_path), detector=SquareDetector(), **kw)
    a = pipeline.Analyzer(str(model_path), detector=SquareDetector(), pad=0.25, max_side=640)
    assert (a.pad, a.max_side) == (0.25, 640)
    with pytest.raises(FerkitError, match="pad is a border"):  # the one check, in detection itself
        detect_faces(scene(), SquareDetector(), pad=-0.5)


def test_probability_panels_never_cover_another_face():
    """Two faces side by side with a small gap: each panel goes where it covers no other face (the first's
    used to land on the second), and a face with no free place gets no panel rather than a covering one."""
    probs = {e: 1.0 / len(EMOTIONS) for e in EMOTIONS}
    img = np.full((480, 640, 3), 200, np.uint8)
    boxes = [(100, 100, 120, 120), (240, 100, 120, 120)]
    faces = [pipeline.FaceResult(box=b, emotion="happy", score=0.5, probabilities=probs) for b in boxes]
    out = pipeline.draw_results(img, faces, marker=False)
    for x, y, w, h in boxes:
        inner = out[y + 6:y + h - 6, x + 6:x + w - 6]
        assert (inner == 200).all(), (x, y)  # nothing drawn over either face
    assert ((out == 200 * 2 // 5).all(axis=2)).sum() > 500  # both panels were drawn (darkened background)
    # two overlapping faces filling a small image: the first has no free place (None: no panel), the second's
    # place covers neither face
    a, b = (0, 0, 200, 200), (100, 100, 200, 200)
    rect = lambda x, y, w, h: (x, y, x + w, y + h)  # noqa: E731
    assert pipeline._panel_place(a, (120, 94), (300, 300), [rect(*b)], 3, 40) is None
    px, py = pipeline._panel_place(b, (120, 94), (300, 300), [rect(*a)], 3, 40)
    assert not pipeline._overlaps((px, py, px + 120, py + 94), rect(*a))


def test_server_annotation_numbers_the_faces_like_the_page():
    """The stored annotated image tags each face with its number (the page's "Face 1", "Face 2" cards)."""
    from ferkit.server.analysis import ServerAnalyzer

    seen = {}

    class Pipeline:
        def analyze(self, image):
            return []

        def draw(self, image, results, **kw):
            seen.update(kw)
            return image.copy()

    ServerAnalyzer(Pipeline()).annotate(np.zeros((20, 20, 3), np.uint8), [])
    assert seen == {"numbers": True}
    probs = {e: 1.0 / len(EMOTIONS) for e in EMOTIONS}
    faces = [pipeline.FaceResult(box=(20, 60, 80, 80), emotion="happy", score=0.5, probabilities=probs, track=7)]
    img = np.full((200, 300, 3), 200, np.uint8)
    numbered = pipeline.draw_results(img, faces, numbers=True)
    tracked = pipeline.draw_results(img, faces)
    assert not np.array_equal(numbered, tracked)  # "1. happy 50%" instead of "#7 happy 50%"


# ---------------------------------------------------------------------------------------------- CLI
def _write_set(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    cv2.imwrite(str(d / "one.jpg"), scene(squares=((60, 50, 80),)))
    cv2.imwrite(str(d / "two.png"), scene(squares=((20, 20, 50), (200, 120, 70))))
    cv2.imwrite(str(d / "none.png"), np.full((120, 160, 3), 30, np.uint8))
    return d


def test_predict_table_json_csv_save(tmp_path, capsys, use_square_detector, model_path):
    d = _write_set(tmp_path)
    rc = cli_main(["predict", str(d), "--model", str(model_path)])
    cap = capsys.readouterr()
    out = cap.out
    assert rc == 0
    lines = [l for l in out.splitlines() if l.strip()]
    emotions = [l.split()[-2] for l in lines[1:] if "(no face)" not in l]
    tally = {e: emotions.count(e) for e in set(emotions)}
    summary = cap.err.strip().splitlines()[-1]  # the closing line: counts per emotion, most frequent first
    assert summary.startswith("ferkit: 3 image(s), 3 face(s) (") and summary.endswith(", 1 image(s) without a face")
    listed = summary.split("face(s) (", 1)[1].split(")", 1)[0].split(", ")
    assert {x.split()[0]: int(x.split()[1]) for x in listed} == tally
    assert [int(x.split()[1]) for x in listed] == sorted(tally.values(), reverse=True)
    assert lines[0].split()[:2] == ["source", "face"]
    assert len(lines) == 1 + 1 + 1 + 2  # header, none.png (no face), one.jpg, two faces of two.png
    assert "(no face)" in out

    rc = cli_main(["predict", str(d), "--model", str(model_path), "--json", "--csv", str(tmp_path / "f.csv"),
                   "--save", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [json.loads(l) for l in out.splitlines()]
    assert len(rows) == 3
    for r in rows:
        assert set(r) >= {"source", "box", "emotion", "score", "probabilities"}
        assert len(r["box"]) == 4 and all(isinstance(v, int) for v in r["box"])
        assert r["emotion"] in r["probabilities"] and 0 <= r["score"] <= 1
        assert "frame" not in r and "track" not in r
    assert {Path(r["source"]).name for r in rows} == {"one.jpg", "two.png"}
    with open(tmp_path / "f.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and table[0]["frame"] == "" and {"x", "y", "w", "h", "p_happy"} <= set(table[0])
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert saved == ["none.png", "one.jpg", "two.png"]
    ann = cv2.imread(str(tmp_path / "out" / "one.jpg"))
    assert ann.shape == (240, 320, 3) and np.abs(ann.astype(int) - scene().astype(int)).mean() > 1

    rc = cli_main(["predict", str(d / "two.png"), "--model", str(model_path), "--json", "--largest"])
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert rc == 0 and len(rows) == 1 and rows[0]["box"] == [200, 120, 70, 70]


def test_predict_bad_files_among_good(tmp_path, capsys, use_square_detector, model_path):
    d = _write_set(tmp_path)
    (d / "broken.jpg").write_bytes(cv2.imencode(".jpg", scene())[1].tobytes()[:500])
    (d / "text.png").write_text("not an image")
    (d / "zero.jpg").write_bytes(b"")
    rc = cli_main(["predict", str(d), str(tmp_path / "missing.jpg"), "--model", str(model_path), "--json"])
    cap = capsys.readouterr()
    assert rc == 1
    errors = [l for l in cap.err.splitlines() if "error" in l]
    assert len(errors) == 4 and all(l.startswith("ferkit: error: ") for l in errors)
    assert any("broken.jpg" in l for l in errors) and any("missing.jpg" in l for l in errors)
    assert len(cap.out.splitlines()) == 3  # the good images were all processed


def test_predict_save_never_overwrites_a_source(tmp_path, capsys, use_square_detector, model_path):
    """--save into the photos' own folder: the annotated copies take new names, every original stays."""
    d = _write_set(tmp_path)
    (d / "sub").mkdir()
    cv2.imwrite(str(d / "sub" / "one.jpg"), scene(squares=((30, 30, 90),)))  # same name as d/one.jpg
    cv2.imwrite(str(d / "one-2.jpg"), scene(squares=((150, 60, 60),)))  # the name a clash would pick
    originals = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert cli_main(["predict", str(d), "--model", str(model_path), "--save", str(d), "--quiet"]) == 0
    capsys.readouterr()
    assert {p: p.read_bytes() for p in originals} == originals
    new = sorted(p.name for p in d.iterdir() if p.is_file() and p not in originals)
    assert len(new) == 5  # one annotated copy per source, none written over another


def test_predict_file_names_that_are_not_utf8(tmp_path, capsys, use_square_detector, model_path):
    """A Latin-1 file name (from an old archive) used to crash the process inside OpenCV (segmentation fault)."""
    d = tmp_path / "in"
    d.mkdir()
    latin1 = os.fsdecode(b"caf\xe9")
    try:
        cv2.imwrite(str(d / "plain.png"), scene(squares=((60, 50, 80),)))
        (d / f"{latin1}.png").write_bytes((d / "plain.png").read_bytes())
        (d / f"{latin1}.mp4").write_bytes(b"\x00" * 64)
    except (UnicodeEncodeError, OSError):
        pytest.skip("this file system does not take file names that are not UTF-8")
    code = (f"import sys; from ferkit.cli import main; "
            f"sys.exit(main(['predict', {str(d)!r}, '--model', {str(model_path)!r}, '--detector', 'none', "
            f"'--save', {str(tmp_path / 'out')!r}, '--json']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, errors="replace")
    assert proc.returncode == 1, proc.stderr[-2000:]  # the video fails with a message, no crash
    assert "not valid UTF-8" in proc.stderr and proc.stderr.count("ferkit: error:") == 1
    assert len(proc.stdout.splitlines()) == 2  # both images analysed
    assert sorted(os.fsencode(p.name) for p in (tmp_path / "out").iterdir()) == [b"caf\xe9.png", b"plain.png"]


def test_output_paths_that_cannot_be_written_are_usage_errors(tmp_path, capsys, model_path):
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), scene())
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for args, msg in [(["--save", str(afile)], "is a file"), (["--csv", str(tmp_path)], "is a folder"),
                      (["--csv", str(afile / "x.csv")], "afile is a file"),
                      (["--save", str(afile / "sub")], "cannot create the folder")]:
        assert cli_main(["predict", str(img), "--model", str(model_path), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("ferkit: error: ") and msg in err and "Traceback" not in err, err
    assert cli_main(["anonymize", str(img), "--save", str(tmp_path / "o"), "--csv", str(tmp_path)]) == 2
    assert cli_main(["anonymize", str(img), "--save", str(afile / "sub")]) == 2
    assert cli_main(["predict", str(img), "--max-frames", "0", "--model", str(model_path)]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert afile.read_text() == "keep me"


def test_predict_usage_errors(tmp_path, capsys, model_path):
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), scene())
    assert cli_main(["predict", str(img), "--confidence", "3", "--model", str(model_path)]) == 2
    assert cli_main(["predict", str(img), "--model", str(tmp_path / "nope.onnx")]) == 2
    with pytest.raises(SystemExit) as e:
        cli_main(["predict", str(img), "--detector", "mtcnn"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--confidence must be between 0 and 1" in err and "nope.onnx" in err


@pytest.mark.realdata
def test_predict_real_photos_end_to_end(faces_dev, tmp_path, capsys, model_path):
    photos = real_photos(faces_dev, 4)
    rc = cli_main(["predict", *map(str, photos), "--json", "--model", str(model_path)])
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert rc == 0 and len({r["source"] for r in rows}) >= 3
    for r in rows:
        assert r["emotion"] in EMOTIONS and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-3)


def test_inference_never_imports_torch(tmp_path, model_path):
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), scene())
    code = f"""
import sys
import ferkit, ferkit.io, ferkit.faces, ferkit.faces.align, ferkit.faces.haar, ferkit.pipeline, ferkit.video
import ferkit.commands.predict, ferkit.commands.live
from ferkit.cli import main
faces = ferkit.analyze({str(img)!r}, model={str(model_path)!r}, detector="haar")
rc = main(["predict", {str(img)!r}, "--json", "--model", {str(model_path)!r}, "--detector", "haar"])
try:
    import ferkit.faces.yunet
    ferkit.faces.get_detector("yunet")
except ferkit.FerkitError:
    pass
bad = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
assert not bad, bad
print("ok", rc)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok 0")


# ----------------------------------------------------------------------- detector "none": face crops
def test_detector_none_takes_the_whole_image_as_the_face(model_path):
    """--detector none: for images that are face crops already, each image is one face, classified exactly
    as the classifier classifies that crop (no detection, no rescaling of the box, no alignment)."""
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    (d,) = detect_faces(crops[0], "none")
    assert d.box == (0, 0, 48, 48) and d.score == 1.0 and d.landmarks is None
    assert detect_faces(crops[0], "none", min_size=49) == []  # the image is smaller than asked for
    wide = rng.integers(0, 256, (40, 3000), dtype=np.uint8)  # not downscaled: the box is the image
    assert [x.box for x in detect_faces(wide, "none", max_side=800)] == [(0, 0, 3000, 40)]
    clf = ferkit.EmotionClassifier(str(model_path))
    expect = clf.predict_proba(crops)
    a = pipeline.Analyzer(str(model_path), detector="none")
    assert a.crop == CropSpec(scale=1.0, align=False)
    for crop, p in zip(crops, expect):
        (r,) = a.analyze(crop)
        assert r.box == (0, 0, 48, 48)
        assert np.allclose([r.probabilities[k] for k in a.labels], p, atol=1e-6)
        (b,) = a.analyze(cv2.cvtColor(cv2.resize(crop, (96, 96), interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR))
        assert b.box == (0, 0, 96, 96)  # a larger colour crop of the same face: the same box, scaled
    tall = rng.integers(0, 256, (70, 50), dtype=np.uint8)  # not square: resized as it is, like a folder's crops
    (t,) = a.analyze(tall)
    assert t.box == (0, 0, 50, 70)
    assert np.allclose([t.probabilities[k] for k in a.labels], clf.predict_proba([tall])[0], atol=1e-6)


def test_predict_cli_with_detector_none(tmp_path, capsys, model_path):
    rng = np.random.default_rng(4)
    d = tmp_path / "crops"
    d.mkdir()
    for i in range(3):
        cv2.imwrite(str(d / f"c{i}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
    (d / "notes.txt").write_text("not an image")
    rc = cli_main(["predict", str(d), "--model", str(model_path), "--detector", "none", "--json", "--quiet"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert rc == 0 and len(rows) == 3
    assert all(r["box"] == [0, 0, 48, 48] for r in rows)
    assert {Path(r["source"]).name for r in rows} == {"c0.png", "c1.png", "c2.png"}


# ------------------------------------------------------------------------------------- images by URL
@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www (a thread; stopped after the test)."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield www, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_images_by_url(http_folder, monkeypatch, capsys, use_square_detector, model_path):
    from ferkit import io as fio

    www, base = http_folder
    img = scene(squares=((60, 50, 80),))
    cv2.imwrite(str(www / "face.png"), img)
    (www / "notes.txt").write_text("not an image")
    assert np.array_equal(read_image(f"{base}/face.png"), img)
    assert expand_sources([f"{base}/face.png"]).sources == [Source("image", path=f"{base}/face.png")]
    with pytest.raises(FerkitError, match="HTTP 404"):
        read_image(f"{base}/missing.jpg")
    with pytest.raises(FerkitError, match="cannot decode"):
        read_image(f"{base}/notes.txt")
    with monkeypatch.context() as mp:
        mp.setattr(fio, "URL_MAX_BYTES", 100)
        with pytest.raises(FerkitError, match="over the"):
            read_image(f"{base}/face.png")
    with pytest.raises(FerkitError, match="cannot fetch"):
        read_image("http://127.0.0.1:9/nothing-listens-here.jpg")
    # the CLI and the Python API take the address like a path; a bad one is one error among good sources
    rc = cli_main(["predict", f"{base}/face.png", f"{base}/missing.jpg", "--model", str(model_path), "--json"])
    cap = capsys.readouterr()
    rows = [json.loads(line) for line in cap.out.splitlines()]
    assert rc == 1 and len(rows) == 1 and rows[0]["source"] == f"{base}/face.png" and rows[0]["box"] == [60, 50, 80, 80]
    assert "HTTP 404" in cap.err
    (r,) = pipeline.Analyzer(str(model_path), detector=SquareDetector()).analyze(f"{base}/face.png")
    assert r.box == (60, 50, 80, 80)
