"""Consistent teaching (``--teacher-mode consistent``): the teachers see the student's augmented batches."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ferkit.cli import main as cli_main
from ferkit.errors import FerkitError

from test_train import TINY, _export_tiny, _load


@pytest.fixture
def teacher_onnx(tiny_fer_csv, tmp_path):
    return _export_tiny(tmp_path, "teacher", data=str(tiny_fer_csv), epochs=2, seed=3)


def test_on_clean_images_the_consistent_teacher_gives_the_fixed_targets(tiny_fer_csv, teacher_onnx):
    from ferkit.data import prepare_splits
    from ferkit.distill import ConsistentTeacher, distill_targets
    from ferkit.preprocess import PreprocessSpec, prepare_faces

    splits = prepare_splits(str(tiny_fer_csv))
    tr = splits.train
    for temperature in (1.0, 2.0):
        fixed, _ = distill_targets([teacher_onnx, teacher_onnx], tr.images, tr.labels, splits.labels, splits.info,
                                   1.0, temperature=temperature)
        spec = PreprocessSpec()
        teach = ConsistentTeacher([teacher_onnx, teacher_onnx], splits.labels, spec, temperature=temperature)
        got = teach(torch.from_numpy(prepare_faces(tr.images, spec)))
        assert got.dtype == torch.float32 and got.shape == fixed.shape
        np.testing.assert_allclose(got.numpy(), fixed, atol=1e-5)
    # a student normalising with another mean and std: the teacher's input is converted back, same answer
    other = PreprocessSpec(mean=0.4, std=0.3)
    teach = ConsistentTeacher(teacher_onnx, splits.labels, other)
    got = teach(torch.from_numpy(prepare_faces(tr.images, other))).numpy()
    one, _ = distill_targets(teacher_onnx, tr.images, tr.labels, splits.labels, splits.info, 1.0)
    np.testing.assert_allclose(got, one, atol=1e-4)
    # a calibrated teacher (a temperature in its metadata, as the bundled models have) is used as calibrated
    cal = teacher_onnx.parent / "calibrated.onnx"
    assert cli_main(["export", str(teacher_onnx), "--calibrate", "--data", str(tiny_fer_csv), "--out", str(cal)]) == 0
    from ferkit.runtime import EmotionClassifier
    assert EmotionClassifier(cal).temperature != 1
    fixed, _ = distill_targets(cal, tr.images, tr.labels, splits.labels, splits.info, 1.0)
    got = ConsistentTeacher(cal, splits.labels, PreprocessSpec())(torch.from_numpy(prepare_faces(tr.images, PreprocessSpec())))
    np.testing.assert_allclose(got.numpy(), fixed, atol=1e-5)
    assert not np.allclose(fixed, one, atol=1e-3)
    # an augmented view gets the teacher's answer on that view, not on the clean image
    flipped = torch.from_numpy(prepare_faces(tr.images, PreprocessSpec())).flip(-1)
    assert not np.allclose(ConsistentTeacher(teacher_onnx, splits.labels, PreprocessSpec())(flipped).numpy(), one,
                           atol=1e-3)


def test_consistent_teacher_refuses_other_preprocessing(tiny_fer_csv, teacher_onnx):
    from ferkit.distill import ConsistentTeacher
    from ferkit.labels import EMOTIONS
    from ferkit.preprocess import PreprocessSpec

    with pytest.raises(FerkitError, match="only the normalisation"):
        ConsistentTeacher(teacher_onnx, EMOTIONS, PreprocessSpec(equalize=True))
    with pytest.raises(FerkitError, match="temperature"):
        ConsistentTeacher(teacher_onnx, EMOTIONS, PreprocessSpec(), temperature=0)


def test_consistent_run_trains_on_the_teachers_view_records_it_and_resumes(tiny_fer_csv, teacher_onnx, tmp_path):
    from ferkit.modelcard import _teacher_text

    common = ["train", "--data", str(tiny_fer_csv), "--arch", TINY, "--no-progress", "--threads", "1",
              "--teacher", str(teacher_onnx), "--teacher-weight", "1"]
    fixed, cons = tmp_path / "fixed", tmp_path / "consistent"
    assert cli_main([*common, "--epochs", "1", "--out", str(fixed)]) == 0
    argv = [*common, "--teacher-mode", "consistent", "--out", str(cons)]
    assert cli_main([*argv, "--epochs", "1"]) == 0
    ck = _load(cons / "last.pt")
    assert json.loads((cons / "config.json").read_text())["teacher_mode"] == "consistent"
    assert ck["data"]["teacher"]["mode"] == "consistent" and "consistent teaching" in ck["data"]["teacher"]["rule"]
    assert _load(fixed / "last.pt")["data"]["teacher"]["mode"] == "fixed"
    assert "(consistent teaching)" in _teacher_text({"data": ck["data"]})
    # same images, seed and augmentation: only where the teacher looks differs
    assert ck["history"][0]["train_loss"] != pytest.approx(_load(fixed / "last.pt")["history"][0]["train_loss"], rel=1e-4)
    assert cli_main([*argv, "--epochs", "2", "--resume"]) == 0
    assert len(_load(cons / "last.pt")["history"]) == 2
    with pytest.raises(FerkitError, match="teacher_mode was 'consistent'"):
        from ferkit.train import TrainConfig, train
        train(TrainConfig(out=str(cons), resume=True, epochs=3, teacher_mode="fixed", progress=False, threads=1))


def test_teacher_mode_bad_input(tiny_fer_csv, tmp_path, capsys):
    base = ["train", "--data", str(tiny_fer_csv), "--arch", TINY, "--out", str(tmp_path / "r"), "--epochs", "1"]
    assert cli_main([*base, "--teacher-mode", "consistent"]) == 2  # no teacher to be consistent with
    assert "needs --teacher" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*base, "--teacher", "x.onnx", "--teacher-mode", "sometimes"])
    from ferkit.train import TrainConfig, train
    with pytest.raises(FerkitError, match="unknown --teacher-mode"):
        train(TrainConfig(data=str(tiny_fer_csv), arch=TINY, out=str(tmp_path / "p"), epochs=1, teacher="default",
                          teacher_mode="often", progress=False))
