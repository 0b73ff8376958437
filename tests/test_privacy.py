"""Obfuscation primitives, the recovery U-Net, image-quality measures and the privacy-report pipeline."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ferkit.errors import FerkitError
from ferkit.privacy.obfuscate import (
    Obfuscation, blur, fill, obfuscate, obfuscate_batch, obfuscate_region, parse_obfuscation, pixelate,
    strength_for_region,
)

from conftest import make_fer_csv


def _img(h=48, w=48, seed=0, channels=None):
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------- obfuscation
def test_pixelate_cells_are_block_means():
    img = _img()
    out = pixelate(img, 8)
    assert out.shape == img.shape and out.dtype == np.uint8
    for by in range(0, 48, 8):
        for bx in range(0, 48, 8):
            cell = out[by:by + 8, bx:bx + 8]
            assert (cell == cell[0, 0]).all()
            assert abs(int(cell[0, 0]) - img[by:by + 8, bx:bx + 8].mean()) <= 0.5
    assert not np.array_equal(out, img)


def test_pixelate_uneven_edges_and_colour():
    img = _img(50, 37, channels=3)
    out = pixelate(img, 8)
    assert out.shape == img.shape
    # the last, partial cell is the mean of its own pixels only (no padding in the mean)
    edge = img[48:50, 32:37].reshape(-1, 3).mean(0)
    assert np.abs(out[49, 36].astype(float) - edge).max() <= 0.5
    assert np.array_equal(pixelate(img, 1), img)


def test_blur_and_fill():
    img = _img()
    b = blur(img, 2)
    assert b.shape == img.shape and b.std() < img.std() / 2
    assert abs(float(b.mean()) - float(img.mean())) < 3
    assert (fill(img) == 0).all() and (fill(img, 128) == 128).all()
    assert np.array_equal(obfuscate(img, "blur", 2), b)


def test_batch_equals_per_image():
    faces = np.stack([_img(seed=s) for s in range(5)])
    for method, strength in (("pixelate", 6), ("pixelate", 5), ("blur", 1.5), ("fill", 0)):
        batch = obfuscate_batch(faces, method, strength)
        single = np.stack([obfuscate(f, method, strength) for f in faces])
        assert np.array_equal(batch, single), method
    assert obfuscate_batch(faces[:0], "pixelate", 4).shape == (0, 48, 48)


def test_region_is_clipped_and_in_place():
    img = _img(60, 80, channels=3)
    before = img.copy()
    box = obfuscate_region(img, (-10, 50, 30, 40), "fill", 0)
    assert box == (0, 50, 20, 10)
    assert (img[50:60, 0:20] == 0).all()
    assert np.array_equal(img[:50], before[:50]) and np.array_equal(img[50:, 20:], before[50:, 20:])
    assert obfuscate_region(img, (100, 100, 5, 5), "blur", 2) is None


def test_parse_and_names():
    assert parse_obfuscation("pixelate-8") == Obfuscation("pixelate", 8)
    assert parse_obfuscation("Blur:2.5").name == "blur-2.5"
    assert parse_obfuscation("fill").name == "fill"
    assert strength_for_region("pixelate", 8, 96) == 16
    assert strength_for_region("fill", 0, 96) == 0


@pytest.mark.parametrize("call", [
    lambda: parse_obfuscation("smudge-3"),
    lambda: parse_obfuscation("pixelate-x"),
    lambda: pixelate(_img(), 0),
    lambda: blur(_img(), -1),
    lambda: fill(_img(), 300),
    lambda: obfuscate(_img().astype(np.float32), "blur", 1),
    lambda: obfuscate(np.zeros((0, 5), np.uint8), "pixelate", 2),
    lambda: obfuscate_batch(_img(), "pixelate", 2),
])
def test_bad_obfuscation_input_is_a_clear_error(call):
    with pytest.raises(FerkitError):
        call()


# ------------------------------------------------------------------------------ recovery + quality
def test_image_quality_measures():
    from ferkit.privacy.recovery import image_quality

    faces = np.stack([_img(seed=s) for s in range(3)])
    same = image_quality(faces, faces)
    assert same["mae_pct"] == 0 and same["psnr_db"] == 100 and same["ssim"] == pytest.approx(1.0)
    black = image_quality(np.zeros_like(faces), faces)
    assert black["mae_pct"] == pytest.approx(faces.mean() / 255 * 100)
    assert black["ssim"] < 0.05 and black["psnr_db"] < 10
    with pytest.raises(FerkitError):
        image_quality(faces[:2], faces)


def test_recovery_unet_learns_to_undo_a_blur():
    import torch

    from ferkit.privacy.recovery import RecoveryUNet, image_quality, recover, train_recovery

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16]
    # Sharp-edged squares: a blur hides their edges, and the mapping back is learnable.
    def faces(n):
        out = np.full((n, 16, 16), 40, np.uint8)
        for i in range(n):
            x0, y0 = rng.integers(1, 9, 2)
            out[i, y0:y0 + 6, x0:x0 + 6] = 220
        return out

    tr, va = faces(768), faces(128)
    blur_b = obfuscate_batch(tr, "blur", 1.5)
    res = train_recovery(blur_b, tr, obfuscate_batch(va, "blur", 1.5), va,
                         epochs=4, batch_size=64, base=8, log=None)
    assert isinstance(res.model, RecoveryUNet) and 1 <= res.best_epoch <= 4 and len(res.history) == 4
    assert blur_b.shape == tr.shape
    rec = recover(res.model, obfuscate_batch(va, "blur", 1.5))
    before = image_quality(obfuscate_batch(va, "blur", 1.5), va)
    after = image_quality(rec, va)
    assert after["mae_pct"] < 0.7 * before["mae_pct"], (before, after)
    with pytest.raises(FerkitError):
        recover(res.model, va.astype(np.float32))


# ---------------------------------------------------------------------------------------- report
@pytest.mark.slow
def test_privacy_report_short_run_and_resume(tmp_path):
    from ferkit.cli import main

    csv = make_fer_csv(tmp_path / "fer.csv", n_per_split=(140, 28, 28))
    out = tmp_path / "report"
    args = ["privacy-report", "--data", str(csv), "--out", str(out), "--methods", "pixelate-8,fill",
            "--classifier-epochs", "1", "--recovery-epochs", "1", "--threads", "1", "--grid-faces", "2"]
    assert main(args) == 0
    rep = json.loads((out / "privacy_report.json").read_text())
    assert [r["method"] for r in rep["rows"]] == ["none", "pixelate-8", "fill"]
    assert rep["counts"] == {"train": 140, "val": 28, "test": 28}
    for r in rep["rows"]:
        for key in ("default_on_obfuscated", "trained_on_obfuscated"):
            assert 0.0 <= r[key]["accuracy"] <= 1.0
    fill_row = rep["rows"][2]
    # A black box leaves nothing: its MAE is the mean grey level of the faces, and no better than chance.
    assert fill_row["quality_obfuscated"]["ssim"] < 0.05
    assert fill_row["quality_obfuscated"]["mae_pct"] > 15
    assert 0 <= fill_row["quality_recovered"]["mae_pct"] <= 100 and fill_row["recovery"]["best_epoch"] == 1
    md = (out / "privacy_report.md").read_text()
    assert "| pixelate-8 |" in md and "| fill |" in md and "ferkit privacy-report" in md
    assert (out / "privacy_grid.png").stat().st_size > 1000
    mtime = (out / "runs" / "cls-fill" / "best.pt").stat().st_mtime

    # Same settings: everything is done already, nothing is retrained, and the numbers stay.
    assert main(args) == 0
    again = json.loads((out / "privacy_report.json").read_text())
    assert again["rows"] == rep["rows"]
    assert (out / "runs" / "cls-fill" / "best.pt").stat().st_mtime == mtime


def test_privacy_report_bad_input(tmp_path):
    from ferkit.cli import main

    csv = make_fer_csv(tmp_path / "fer.csv", n_per_split=(20, 7, 7))
    base = ["privacy-report", "--data", str(csv), "--out", str(tmp_path / "r")]
    assert main(base + ["--methods", "smudge-2"]) == 2
    assert main(base + ["--methods", "pixelate-0"]) == 2
    assert main(base + ["--methods", "blur-2,blur-2"]) == 2
    assert main(["privacy-report", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r" / "privacy_report.json").exists()


def test_obfuscation_edge_cases_hide_the_face_quickly():
    """Huge strengths give one flat block at once (pixelate used to allocate 47 GiB, blur to run for minutes);
    blur keeps a (H, W, 1) image's shape; fill makes an alpha channel opaque (a box, not a hole); strengths
    that would change nothing are refused by the anonymizer."""
    import importlib
    import time

    from ferkit.privacy.anonymize import Anonymizer

    ob = importlib.import_module("ferkit.privacy.obfuscate")  # the module (the package also exports a function)

    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (900, 700, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    flat = ob.pixelate(face, 20000)
    wide = ob.blur(face, 100000)
    assert time.perf_counter() - t0 < 5
    assert flat.shape == face.shape and len(np.unique(flat.reshape(-1, 3), axis=0)) == 1
    assert wide.shape == face.shape and wide.std() < 3  # flat to within a few grey levels
    big = ob.blur(face, 40)  # the downscaled path looks like a true Gaussian blur of that sigma
    assert np.abs(big.astype(int) - ob.cv2.GaussianBlur(face, (241, 241), 40).astype(int)).mean() < 2
    assert ob.blur(face[:, :, :1], 2).shape == (900, 700, 1)
    bgra = np.dstack([face, np.full((900, 700), 255, np.uint8)])
    filled = ob.fill(bgra, 0)
    assert (filled[..., :3] == 0).all() and (filled[..., 3] == 255).all()
    for method, strength in (("pixelate", 1), ("blur", 0.01)):
        for relative in (True, False):
            with pytest.raises(FerkitError, match="would leave faces visible"):
                Anonymizer(method, strength, relative_strength=relative, detector="haar")
    assert ob.strength_for_region("pixelate", 8, 6) == ob.MIN_CELL  # a tiny face still gets a real mosaic
