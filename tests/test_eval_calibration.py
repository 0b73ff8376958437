"""benchmarks/eval_calibration.py: calibration rows equal a direct computation; temperatures never move accuracy."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import make_fer_csv

pytest.importorskip("onnxruntime")


def _rows(bench, argv, out_json):
    assert bench.main(argv + ["--json", str(out_json)]) == 0
    return json.loads(out_json.read_text())


def test_fer2013_rows_match_a_direct_computation(tmp_path, load_benchmark, capsys):
    from ferkit.calibrate import fit_temperature, temperature_nll
    from ferkit.evaluate import evaluate
    from ferkit.metrics import calibration, scale_temperature
    from ferkit.runtime import EmotionClassifier, bundled_models

    if "default" not in bundled_models():
        pytest.skip("no bundled default model in this installation")
    bench = load_benchmark("eval_calibration")
    data = make_fer_csv(tmp_path / "fer2013.csv", n_per_split=(10, 60, 40), seed=3)
    rows = _rows(bench, ["--models", "default", "--data", str(data), "--faces-dev", str(tmp_path / "nowhere"),
                         "--fit"], tmp_path / "rows.json")
    out = capsys.readouterr().out
    assert "faces-dev not found" in out and "| default" in out
    assert {r["set"] for r in rows} == {"PublicTest"}  # no PrivateTest without --private, no faces-dev here
    own_t = EmotionClassifier("default").temperature
    raw = evaluate(EmotionClassifier("default", temperature=1.0), str(data), split="PublicTest", return_probs=True)
    p, y = raw["probs"], raw["y_true"]
    fitted = float(f"{fit_temperature(p, y):.4g}")
    by_which = {r["which"]: r for r in rows}
    expected_which = {"raw", "fitted on PublicTest"} | ({"own"} if own_t != 1.0 else set())
    assert set(by_which) == expected_which
    for which, t in (("raw", 1.0), ("own", own_t), ("fitted on PublicTest", fitted)):
        if which not in by_which:
            continue
        r = by_which[which]
        q = scale_temperature(p, t)
        assert r["temperature"] == pytest.approx(t)
        assert r["n"] == len(y) == 60
        assert r["accuracy"] == pytest.approx(raw["accuracy"])  # a temperature never changes a prediction
        assert r["nll"] == pytest.approx(temperature_nll(p, y, t), abs=1e-5)
        assert r["ece"] == pytest.approx(calibration(q, y)["ece"], abs=1e-6)
    # the fitted temperature has the lowest log-loss of the three on the split it was fitted on
    assert by_which["fitted on PublicTest"]["nll"] <= min(r["nll"] for r in rows) + 1e-9
    rows = _rows(bench, ["--models", "default", "--data", str(data), "--faces-dev", str(tmp_path / "nowhere"),
                         "--private"], tmp_path / "rows2.json")
    assert {r["set"] for r in rows} == {"PublicTest", "PrivateTest"}
    assert all(r["n"] == 40 for r in rows if r["set"] == "PrivateTest")
    # a model that cannot be loaded is reported and skipped; a missing data file is a skip, not a crash
    assert bench.main(["--models", str(tmp_path / "missing.onnx"), "--data", str(data), "--faces-dev",
                       str(tmp_path / "nowhere")]) == 0
    assert "missing.onnx" in capsys.readouterr().out
    # a FER+ model whose votes file is missing is reported and skipped
    if "ferplus" in bundled_models():
        assert bench.main(["--models", "default,ferplus", "--data", str(data), "--ferplus", str(tmp_path / "no.csv"),
                           "--faces-dev", str(tmp_path / "nowhere")]) == 0
        out = capsys.readouterr().out
        assert "| default" in out and "no.csv" in out and "| ferplus" not in out
    assert bench.main(["--data", str(tmp_path / "none.csv")]) == 0
    assert "FER2013 not found" in capsys.readouterr().out


def test_faces_dev_rows_score_the_faces_that_analyze_finds(tmp_path, load_benchmark, faces_dev):
    import ferkit
    from ferkit.io import read_image
    from ferkit.runtime import bundled_models

    if "default" not in bundled_models():
        pytest.skip("no bundled default model in this installation")
    bench = load_benchmark("eval_calibration")
    photos = list(csv.DictReader(open(faces_dev / "labels.csv", newline="")))[:12]
    root = tmp_path / "faces"
    (root / "images").mkdir(parents=True)
    for r in photos:
        shutil.copy(faces_dev / r["file"], root / r["file"])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(photos[0]))
        w.writeheader()
        w.writerows(photos)
    data = make_fer_csv(tmp_path / "fer2013.csv", n_per_split=(10, 20, 20), seed=4)
    rows = _rows(bench, ["--models", "default", "--data", str(data), "--faces-dev", str(root)], tmp_path / "r.json")
    dev = [r for r in rows if r["set"] == "faces-dev"]
    assert dev and len({r["accuracy"] for r in dev}) == 1  # the same predictions at every temperature
    found = [(ferkit.analyze(read_image(root / r["file"])), int(r["fer2013_label"])) for r in photos]
    found = [(faces, label) for faces, label in found if faces]
    assert dev[0]["n"] == len(found) > 0
    right = sum(faces[0].emotion == ferkit.EMOTIONS[label] for faces, label in found)
    assert dev[0]["accuracy"] == pytest.approx(right / len(found))
    assert np.isfinite([r["nll"] for r in dev]).all()
