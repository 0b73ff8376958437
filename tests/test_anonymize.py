"""``ferkit anonymize`` and ``ferkit.privacy.anonymize``: every face hidden, videos keep their frames, bad
input is a clear error, sources are never overwritten. Images and clips are generated here; the real-face
tests paste faces-dev photos onto a canvas (skipped when faces-dev is absent)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit.cli import main as cli_main
from ferkit.commands.anonymize import MANIFEST
from ferkit.errors import FerkitError
from ferkit.faces import Detection
from ferkit.io import read_image
from ferkit.privacy.anonymize import (ANONYMIZE_CONFIDENCE, Anonymizer, anonymize_image, expand_box)
from ferkit.video import FrameReader, VideoSink


# --------------------------------------------------------------------------------------------- helpers
class BlobDetector:
    """A stand-in detector: every bright (>= 200) blob of at least 8 px is a "face" with score 0.9."""

    name = "blobs"
    wants = "gray"
    default_confidence = 0.5
    default_pad = 0.0

    def detect(self, image, confidence):
        _, _, stats, _ = cv2.connectedComponentsWithStats((image >= 200).astype(np.uint8), connectivity=4)
        return [Detection(box=(int(x), int(y), int(w), int(h)), score=0.9)
                for x, y, w, h, _ in stats[1:] if w >= 8 and h >= 8]


class ScriptedDetector:
    """Returns ``script[i]`` (a list of boxes) on its i-th call, whatever the image: a detector that misses."""

    name = "scripted"
    wants = "bgr"
    default_confidence = 0.5
    default_pad = 0.0

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def detect(self, image, confidence):
        boxes = self.script[self.calls] if self.calls < len(self.script) else []
        self.calls += 1
        return [Detection(box=b, score=0.9) for b in boxes]


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A BGR background with fine texture (so any change to it shows), values 20..150 (never a 'blob')."""
    rng = np.random.default_rng(seed)
    return rng.integers(20, 150, (h, w, 3), dtype=np.uint8)


def equal_neighbour_share(patch: np.ndarray) -> float:
    """Share of horizontally adjacent pixel pairs with the same value: ~1 for a mosaic, low for a photo."""
    g = patch if patch.ndim == 2 else patch.mean(axis=2)
    return float((g[:, 1:] == g[:, :-1]).mean())


def detail(image: np.ndarray) -> float:
    """Mean absolute difference between an image and its Gaussian blur of sigma 3 px (fine detail)."""
    f = image.astype(np.float32)
    return float(np.abs(f - cv2.GaussianBlur(f, (0, 0), 3)).mean())


def real_faces(faces_dev: Path, n: int) -> list[np.ndarray]:
    rows = list(csv.DictReader(open(faces_dev / "labels.csv", newline="")))
    return [read_image(faces_dev / r["file"]) for r in rows[:n]]


# faces pasted at (x, y, size) on a 480 x 960 canvas: sizes from 90 to 220 px, well apart
LAYOUT = [(20, 30, 200), (300, 60, 150), (540, 20, 220), (820, 300, 90), (120, 300, 130)]


@pytest.fixture(scope="module")
def multi_face(request):
    faces_dev = request.getfixturevalue("faces_dev")
    canvas = textured(480, 960)
    for (x, y, s), face in zip(LAYOUT, real_faces(faces_dev, len(LAYOUT))):
        canvas[y:y + s, x:x + s] = cv2.resize(face, (s, s), interpolation=cv2.INTER_AREA)
    return canvas


@pytest.fixture(scope="module")
def faces_dev():  # module-scoped twin of conftest's fixture, for the module-scoped canvas
    from conftest import FACES_DEV

    if not (FACES_DEV / "labels.csv").is_file():
        pytest.skip(f"faces-dev not found at {FACES_DEV}")
    return FACES_DEV


def face_core(x, y, s):
    """The middle of a pasted faces-dev photo (eyes, nose, mouth: the photos are centred face crops)."""
    m = int(s * 0.2)
    return x + m, y + m, s - 2 * m, s - 2 * m


# ------------------------------------------------------------------------- 1. every face is hidden
@pytest.mark.realdata
def test_every_face_in_a_multi_face_image_is_pixelated(multi_face):
    original = multi_face.copy()
    anon = Anonymizer("pixelate", 8)
    result = anon.anonymize(multi_face)
    out = result.image
    assert result.faces >= len(LAYOUT)
    for x, y, s in LAYOUT:
        cx, cy, cw, ch = face_core(x, y, s)
        before, after = original[cy:cy + ch, cx:cx + cw], out[cy:cy + ch, cx:cx + cw]
        # a real change ...
        assert np.abs(after.astype(int) - before.astype(int)).mean() > 8, (x, y, s)
        # ... that is a mosaic: most neighbouring pixels are equal, unlike in the photo
        assert equal_neighbour_share(before) < 0.5
        assert equal_neighbour_share(after) > 0.8, (x, y, s)
        # and a hidden box covers the whole face core
        assert any(bx <= cx and by <= cy and bx + bw >= cx + cw and by + bh >= cy + ch
                   for bx, by, bw, bh in result.boxes), (x, y, s)
    # "pixelate 8" = 6 cells across each face: the cell size follows the face size
    sizes = sorted(r.strength for r in result.regions)
    assert sizes[-1] > 1.8 * sizes[0]
    for r in result.regions:
        face_width = anon.crop_scale * math.sqrt(r.face_box[2] * r.face_box[3])  # FER2013 framing (YuNet 1.12)
        assert face_width / r.strength == pytest.approx(6.0, rel=0.05)
    # the background away from the faces is untouched
    assert np.array_equal(out[440:480, 300:700], original[440:480, 300:700])
    assert np.array_equal(multi_face, original)  # the input was not modified


@pytest.mark.realdata
@pytest.mark.parametrize("method,strength", [("blur", 4), ("fill", 0)])
def test_every_face_is_hidden_by_blur_and_fill(multi_face, method, strength):
    result = Anonymizer(method, strength).anonymize(multi_face)
    for x, y, s in LAYOUT:
        cx, cy, cw, ch = face_core(x, y, s)
        after = result.image[cy:cy + ch, cx:cx + cw].astype(int)
        before = multi_face[cy:cy + ch, cx:cx + cw].astype(int)
        if method == "fill":
            assert (after == 0).all(), (x, y, s)
        else:  # blurred: the detail (image minus its own 3-px blur) is gone
            assert detail(after) < 0.25 * detail(before), (x, y, s, detail(after), detail(before))


# ------------------------------------------------------------------------------ geometry, strength
def test_margins_and_relative_strength():
    assert expand_box((100, 100, 40, 80), 0.25, 0.15) == pytest.approx((90, 68, 60, 132))
    img = textured(300, 300)
    img[100:160, 100:160] = 255  # a 60-px "face"
    rel = Anonymizer("pixelate", 8, detector=BlobDetector(), margin=0.25, margin_top=0.1).anonymize(img)
    assert len(rel.regions) == 1
    r = rel.regions[0]
    assert r.face_box == (100, 100, 60, 60)
    assert r.strength == pytest.approx(8 * 60 / 48)          # 6 cells across the face
    assert rel.boxes == [(85, 79, 90, 96)]                   # 15 px each side, 6 px more above
    x, y, w, h = rel.boxes[0]
    assert not np.array_equal(rel.image[y:y + h, x:x + w], img[y:y + h, x:x + w])
    assert np.array_equal(rel.image[:y], img[:y]) and np.array_equal(rel.image[y + h:], img[y + h:])
    absolute = Anonymizer("pixelate", 8, detector=BlobDetector(), relative_strength=False).anonymize(img)
    assert absolute.regions[0].strength == 8
    # a lower threshold than the emotion pipeline's for the real detectors
    assert ANONYMIZE_CONFIDENCE["yunet"] < 0.5 and ANONYMIZE_CONFIDENCE["haar"] < 0.5


def test_detection_passes_are_merged_and_upscaling_finds_small_faces():
    img = textured(300, 400)
    img[100:160, 100:160] = 255   # a face every pass finds
    img[50:56, 300:306] = 255     # 6 px: too small for BlobDetector (8 px) unless the image is enlarged
    two = Anonymizer("fill", detector=BlobDetector(), pad=(0.0, 0.25))
    assert two.pads == (0.0, 0.25) and [len(p) for p in two.detection_passes(img)] == [1, 1]
    assert two.anonymize(img).faces == 1  # the same face from both passes counts once
    up = Anonymizer("fill", detector=BlobDetector(), pad=0.0, upscale=2).anonymize(img)
    assert up.faces == 2
    small = [r for r in up.regions if r.face_box[2] < 20]
    assert len(small) == 1 and abs(small[0].face_box[0] - 300) <= 1 and abs(small[0].face_box[2] - 6) <= 1
    assert (up.image[50:56, 300:306] == 0).all()


def test_input_array_is_not_modified_unless_asked():
    img = textured(240, 320)
    img[50:130, 60:140] = 250
    keep = img.copy()
    new, boxes = anonymize_image(img, "pixelate", 8, detector=BlobDetector())
    assert boxes and not np.array_equal(new, keep)
    assert np.array_equal(img, keep)
    new2, _ = anonymize_image(img, "fill", detector=BlobDetector(), inplace=True)
    assert new2 is img and not np.array_equal(img, keep)


# ------------------------------------------------------------------------------------------ videos
def write_clip(path: Path, n: int, fps: float = 10.0, face=None) -> Path:
    """n frames of 320x240: a square (or the given face image, 100 px) drifting right on a textured background."""
    with VideoSink(path, fps) as sink:
        for i in range(n):
            frame = textured(240, 320, seed=i)
            x = 20 + 6 * i
            if face is None:
                frame[70:150, x:x + 80] = 250
            else:
                frame[60:160, x:x + 100] = cv2.resize(face, (100, 100), interpolation=cv2.INTER_AREA)
            sink.write(frame)
    return path


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def test_video_keeps_frame_count_and_fps(tmp_path):
    src = write_clip(tmp_path / "clip.mp4", 17, fps=12.0)
    assert count_frames(src) == 17
    anon = Anonymizer("fill", 0, detector=BlobDetector(), hold_frames=3)
    report = anon.anonymize_video(src, tmp_path / "out" / "clip.mp4")
    out = tmp_path / "out" / "clip.mp4"
    assert report.frames == 17 and report.output == str(out)
    assert count_frames(out) == 17
    reader = FrameReader(out)
    assert reader.fps == pytest.approx(12.0) and (reader.width, reader.height) == (320, 240)
    frames = [f for _, _, f in reader]
    assert report.frames_with_faces == 17 and report.faces_detected == 17 and report.max_per_frame >= 1
    # the bright square is blacked out in every frame (up to mp4 compression)
    for i, f in enumerate(frames):
        x = 20 + 6 * i
        assert f[70:150, x:x + 80].mean() < 30, i


def test_video_hides_a_face_the_detector_misses_for_a_few_frames():
    frames = [textured(200, 200, seed=i) for i in range(10)]
    box = (60, 60, 50, 50)
    # the detector finds the face in frames 2, 3, 7, 8 only
    script = [[], [], [box], [box], [], [], [], [box], [box], []]
    anon = Anonymizer("fill", 0, detector=ScriptedDetector(script), hold_frames=3)
    out = list(anon.stream(frames))
    assert [f.index for f in out] == list(range(10))
    inner = (slice(70, 100), slice(70, 100))
    hidden = [bool((f.image[inner] == 0).all()) for f in out]
    # frames 0, 1: hidden ahead of the first detection; 4, 5, 6: held after it; 9: held after the last
    assert hidden == [True] * 10
    kinds = [sorted({r.kind for r in f.regions}) for f in out]
    assert kinds[0] == ["ahead"] and kinds[2] == ["detected"] and kinds[5] == ["held"]
    assert all(np.array_equal(a, b) for a, b in zip(frames, [textured(200, 200, seed=i) for i in range(10)]))
    # without holding, the missed frames leak
    leak = Anonymizer("fill", 0, detector=ScriptedDetector(script), hold_frames=0)
    assert [bool((f.image[inner] == 0).all()) for f in leak.stream(frames)] == [bool(s) for s in script]


@pytest.mark.realdata
def test_video_with_a_real_face_through_the_cli(tmp_path, faces_dev, capsys):
    face = real_faces(faces_dev, 1)[0]
    src = write_clip(tmp_path / "clip.mp4", 12, face=face)
    rc = cli_main(["anonymize", str(src), "--save", str(tmp_path / "out"), "--json", "--quiet"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["frames"] == 12 and rep["frames_with_faces"] == 12 and rep["faces_detected"] >= 10
    assert count_frames(tmp_path / "out" / "clip.mp4") == 12
    for i, (_, _, f) in enumerate(FrameReader(tmp_path / "out" / "clip.mp4")):
        x = 20 + 6 * i
        core = f[80:140, x + 20:x + 80]
        orig = cv2.resize(face, (100, 100), interpolation=cv2.INTER_AREA)[20:80, 20:80]
        assert np.abs(core.astype(int) - orig.astype(int)).mean() > 8, i


# --------------------------------------------------------------------------------------- bad input
def test_bad_input_is_a_clear_error(tmp_path):
    anon = Anonymizer("pixelate", 8, detector=BlobDetector())
    with pytest.raises(FerkitError, match="no such file"):
        anon.anonymize_file(tmp_path / "missing.jpg", tmp_path / "out.jpg")
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(FerkitError, match="corrupt"):
        anon.anonymize_file(bad, tmp_path / "out.jpg")
    (tmp_path / "text.png").write_bytes(b"hello, not an image")
    with pytest.raises(FerkitError, match="cannot decode"):
        anon.anonymize_file(tmp_path / "text.png", tmp_path / "out.png")
    with pytest.raises(FerkitError, match="unknown obfuscation method 'swirl'"):
        Anonymizer("swirl")
    for method, strength in [("pixelate", -3), ("blur", -1), ("blur", 0), ("fill", 300), ("pixelate", float("nan"))]:
        with pytest.raises(FerkitError, match=method):
            Anonymizer(method, strength)
    with pytest.raises(FerkitError, match="margin"):
        Anonymizer(margin=-0.1)
    with pytest.raises(FerkitError, match="pad"):
        Anonymizer(detector=BlobDetector(), pad=(0.0, 1.5))
    with pytest.raises(FerkitError, match="upscale"):
        Anonymizer(detector=BlobDetector(), upscale=0.5)
    with pytest.raises(FerkitError, match="confidence"):
        Anonymizer(detector=BlobDetector(), confidence=1.5)
    with pytest.raises(FerkitError, match="numpy array"):
        anon.anonymize("photo.jpg")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage" * 10)
    with pytest.raises(FerkitError, match="broken.mp4"):
        anon.anonymize_video(tmp_path / "broken.mp4", tmp_path / "o.mp4")
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), textured(64, 64))
    with pytest.raises(FerkitError, match="overwrite"):
        anon.anonymize_file(img, img)


def test_cli_bad_input(tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), textured(64, 64))
    before = (src / "a.png").read_bytes()
    cases = [
        (["anonymize", str(src), "--save", str(src)], "source folder"),
        (["anonymize", str(src / "a.png"), "--save", str(src)], "folder of the source"),
        (["anonymize", str(src), "--save", str(tmp_path / "o"), "--method", "swirl"], "unknown --method 'swirl'"),
        (["anonymize", str(src), "--save", str(tmp_path / "o"), "--strength", "-2"], "pixelate strength"),
        (["anonymize", str(src), "--save", str(tmp_path / "o"), "--method", "blur", "--strength", "0"], "blur strength"),
        (["anonymize", str(src)], "--save DIR"),
        (["anonymize", str(src), "--save", str(tmp_path / "o"), "--confidence", "2"], "--confidence"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert (src / "a.png").read_bytes() == before and sorted(p.name for p in src.iterdir()) == ["a.png"]
    assert not (tmp_path / "o").exists()
    assert cli_main(["anonymize", str(tmp_path / "missing.jpg"), "--save", str(tmp_path / "o")]) == 1
    assert "missing.jpg: no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- CLI end to end
@pytest.mark.realdata
def test_cli_folder_with_a_corrupt_file(tmp_path, faces_dev, capsys):
    src = tmp_path / "photos"
    (src / "trip").mkdir(parents=True)
    faces = real_faces(faces_dev, 3)
    cv2.imwrite(str(src / "one.jpg"), faces[0])
    cv2.imwrite(str(src / "trip" / "two.png"), faces[1])
    group = textured(300, 600)
    group[40:240, 30:230] = cv2.resize(faces[2], (200, 200))
    group[60:220, 380:540] = cv2.resize(faces[0], (160, 160))
    cv2.imwrite(str(src / "trip" / "group.png"), group)
    (src / "trip" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    (src / "notes.txt").write_text("not an image")
    originals = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "anon"

    rc = cli_main(["anonymize", str(src), "--save", str(out), "--method", "pixelate", "--strength", "8",
                   "--json", "--csv", str(tmp_path / "report.csv")])
    cap = capsys.readouterr()
    assert rc == 1  # one file failed; the others were done
    assert "broken.jpg" in cap.err and "1 failed" in cap.err and "3 image(s), 3 with a face" in cap.err
    rows = {Path(r["source"]).name: r for r in map(json.loads, cap.out.strip().splitlines())}
    assert set(rows) == {"one.jpg", "two.png", "group.png"}
    assert rows["group.png"]["faces"] >= 2 and rows["one.jpg"]["faces"] >= 1 and rows["two.png"]["faces"] >= 1
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["one.jpg", "trip/group.png", "trip/two.png"]  # same relative paths and names
    for rel in written:
        a, b = read_image(src / rel), read_image(out / rel)
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 3, rel
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == originals  # sources untouched
    with open(tmp_path / "report.csv", newline="") as f:
        regions = list(csv.DictReader(f))
    assert len(regions) == sum(r["faces"] for r in rows.values())
    # --save inside the source folder: a second run skips the first run's outputs instead of re-reading them
    for _ in range(2):
        assert cli_main(["anonymize", str(src), "--save", str(src / "anon"), "--quiet"]) == 1
    assert sorted(str(p.relative_to(src / "anon")) for p in (src / "anon").rglob("*")
                  if p.is_file() and p.name != MANIFEST) == written
    assert set(written) <= set((src / "anon" / MANIFEST).read_text().splitlines())
    # ... but a sub-folder of originals is refused as --save: they would be skipped and could be overwritten
    capsys.readouterr()
    trip_before = {p: p.read_bytes() for p in (src / "trip").rglob("*") if p.is_file()}
    assert cli_main(["anonymize", str(src), "--save", str(src / "trip"), "--quiet"]) == 2
    assert "did not write there" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (src / "trip").rglob("*") if p.is_file()} == trip_before


def test_cli_folder_without_real_data(tmp_path, capsys, monkeypatch):
    """The folder run of the CLI with the stand-in detector (runs where faces-dev is absent)."""
    from ferkit.commands import anonymize as cmd

    real_build = cmd.build_anonymizer
    monkeypatch.setattr(cmd, "build_anonymizer", lambda args: _with_blobs(real_build, args))
    src = tmp_path / "in"
    (src / "deep").mkdir(parents=True)
    for rel, n in [("a.png", 1), ("deep/b.jpg", 2), ("deep/none.png", 0)]:
        img = textured(200, 300, seed=n)
        for k in range(n):
            img[40:100, 20 + 120 * k:80 + 120 * k] = 255
        cv2.imwrite(str(src / rel), img)
    (src / "deep" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rc = cli_main(["anonymize", str(src), "--save", str(tmp_path / "out"), "--method", "fill"])
    cap = capsys.readouterr()
    assert rc == 1 and "bad.png" in cap.err and "3 image(s), 2 with a face, 3 face(s) hidden, 1 failed" in cap.err
    counts = {Path(line.split()[0]).name: int(line.split()[1]) for line in cap.out.strip().splitlines()[1:]}
    assert counts == {"a.png": 1, "b.jpg": 2, "none.png": 0}
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")
                  if p.is_file()) == ["a.png", "deep/b.jpg", "deep/none.png"]
    assert (read_image(tmp_path / "out" / "a.png")[40:100, 20:80] == 0).all()
    assert np.array_equal(read_image(tmp_path / "out" / "deep" / "none.png"), read_image(src / "deep" / "none.png"))


def _with_blobs(build, args):
    anon = build(args)
    anon.detector, anon.detector_name, anon.pads = BlobDetector(), "blobs", (0.0,)
    return anon
