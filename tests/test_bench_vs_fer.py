"""benchmarks/bench_vs_fer.py on a tiny synthetic FER2013 CSV, with fer made unavailable (fast, deterministic)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_fer_csv, write_ferplus_csv


def test_bench_vs_fer_ferkit_rows_match_direct_computation_and_fer_skips_cleanly(tmp_path, monkeypatch, capsys,
                                                                                 load_benchmark):
    pytest.importorskip("onnxruntime")
    from ferkit.data.fer2013 import load_fer2013
    from ferkit.metrics import accuracy, macro_f1
    from ferkit.runtime import EmotionClassifier, bundled_models

    if "default" not in bundled_models():
        pytest.skip("no bundled default model in this installation")
    bench = load_benchmark("bench_vs_fer")

    # fer unavailable, whatever is installed here: the package lookup finds nothing
    def no_fer():
        raise bench.BackendUnavailable("the fer package is not installed (test)")

    monkeypatch.setattr(bench, "fer_data_dir", no_fer)
    csv = make_fer_csv(tmp_path / "tiny.csv", n_per_split=(7, 70, 35), seed=3)  # 70 > one batch of 64
    out_json = tmp_path / "rows.json"
    rc = bench.main(["--csv", str(csv), "--threads", "1", "--rounds", "2", "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert rc == 0

    # the skip is said, with how to install, and the ferkit rows are still printed
    assert "fer (keras) rows skipped: the fer package is not installed (test)" in printed
    assert "pip install --no-deps" in printed
    assert "no face detection" in printed
    table_rows = [line for line in printed.splitlines() if line.startswith("| ferkit")]
    assert [r.split("|")[2].strip() for r in table_rows] == ["PublicTest", "PrivateTest"]

    payload = json.loads(out_json.read_text())
    rows = {r["split"]: r for r in payload["rows"]}
    assert [r["model"] for r in payload["rows"]] == ["ferkit", "ferkit"]
    assert set(rows) == {"PublicTest", "PrivateTest"}

    # the numbers equal a direct computation with the bundled model on the same faces
    data = load_fer2013(csv)
    clf = EmotionClassifier(threads=1)
    for split, n in (("PublicTest", 70), ("PrivateTest", 35)):
        idx = data.split(split)
        faces, y_true = data.images[idx], data.labels[idx]
        y_pred = clf.predict(faces)  # the bundled model's labels are FER2013's order (checked below)
        assert clf.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
        r = rows[split]
        assert r["faces"] == n
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["macro_f1"] <= 1.0
        assert r["accuracy"] == pytest.approx(accuracy(y_true, y_pred), abs=1e-12)
        assert r["macro_f1"] == pytest.approx(macro_f1(y_true, y_pred, 7), abs=1e-12)
        assert np.isfinite(r["faces_per_s"]) and r["faces_per_s"] > 0
        assert r["speed_vs_fer"] is None and r["accuracy_minus_fer"] is None  # no baseline in this run
        # the printed row shows the same accuracy
        line = next(t for t in table_rows if t.split("|")[2].strip() == split)
        assert line.split("|")[4].strip() == f"{100 * r['accuracy']:.2f}%"

    # --limit keeps the first N faces of each split
    rc = bench.main(["--csv", str(csv), "--threads", "1", "--rounds", "1", "--limit", "5", "--no-fer",
                     "--json", str(out_json)])
    assert rc == 0
    assert [r["faces"] for r in json.loads(out_json.read_text())["rows"]] == [5, 5]
    assert "fer rows skipped (--no-fer)" in capsys.readouterr().out


def test_bench_vs_fer_scores_against_the_ferplus_majority(tmp_path, capsys, load_benchmark):
    pytest.importorskip("onnxruntime")
    from ferkit.data.fer2013 import load_fer2013
    from ferkit.runtime import EmotionClassifier, bundled_models

    if "default" not in bundled_models():
        pytest.skip("no bundled default model in this installation")
    bench = load_benchmark("bench_vs_fer")
    csv = make_fer_csv(tmp_path / "fer2013.csv", n_per_split=(7, 30, 20), seed=5)
    data = load_fer2013(csv)
    # FER+ votes: every even row is clearly neutral, every odd row is a tie (left out of the FER+ column)
    write_ferplus_csv(csv, tmp_path / "fer2013new.csv",  # found next to --csv
                      lambda i, label: [9, 0, 0, 0, 0, 0, 0, 0, 1, 0] if i % 2 == 0 else [5, 5, 0, 0, 0, 0, 0, 0, 0, 0])
    out_json = tmp_path / "rows.json"
    rc = bench.main(["--csv", str(csv), "--no-fer", "--threads", "1", "--rounds", "1", "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert rc == 0 and "accuracy vs FER+ majority" in printed
    rows = {r["split"]: r for r in json.loads(out_json.read_text())["rows"]}
    clf = EmotionClassifier(threads=1)
    for split in ("PublicTest", "PrivateTest"):
        idx = data.split(split)
        even = data.rows[idx] % 2 == 0
        y_pred = clf.predict(data.images[idx])
        neutral = clf.labels.index("neutral")
        assert rows[split]["ferplus_faces"] == int(even.sum())
        assert rows[split]["accuracy_ferplus"] == pytest.approx(float((y_pred[even] == neutral).mean()), abs=1e-12)
