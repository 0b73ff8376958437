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
    from ferkit.metrics import accuracy, calibration, cross_entropy, macro_f1
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
    rc = bench.main(["--csv", str(csv), "--threads", "1", "--rounds", "2", "--no-faces-dev", "--json", str(out_json)])
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
        probs = clf.predict_proba(faces)  # with the model's own temperature, as a user gets them
        assert r["log_loss"] == pytest.approx(cross_entropy(probs, y_true), abs=1e-6)
        assert r["ece"] == pytest.approx(calibration(probs, y_true)["ece"], abs=1e-6)
        assert np.isfinite(r["faces_per_s"]) and r["faces_per_s"] > 0
        assert r["speed_vs_fer"] is None and r["accuracy_minus_fer"] is None  # no baseline in this run
        # the printed row shows the same accuracy
        line = next(t for t in table_rows if t.split("|")[2].strip() == split)
        assert line.split("|")[4].strip() == f"{100 * r['accuracy']:.2f}%"

    # --limit keeps the first N faces of each split
    rc = bench.main(["--csv", str(csv), "--threads", "1", "--rounds", "1", "--limit", "5", "--no-fer", "--no-faces-dev",
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
    rc = bench.main(["--csv", str(csv), "--no-fer", "--no-faces-dev", "--threads", "1", "--rounds", "1", "--json", str(out_json)])
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


def test_fer_top_emotion_takes_the_largest_face_and_the_first_of_tied_scores(load_benchmark):
    bench = load_benchmark("bench_vs_fer")
    assert bench.fer_top_emotion([]) == -1
    scores = {k: 0.0 for k in bench.FER_LABELS}
    small = {"box": [0, 0, 60, 60], "emotions": {**scores, "happy": 0.9}}
    large = {"box": [100, 0, 80, 90], "emotions": {**scores, "sad": 0.4, "surprise": 0.4, "neutral": 0.2}}
    # the largest box wins wherever it is in the list; of two equal top scores the first in fer's order
    assert bench.fer_top_emotion([small, large]) == bench.FER_LABELS.index("sad")
    assert bench.fer_top_emotion([large, small]) == bench.FER_LABELS.index("sad")
    assert bench.fer_top_emotion([small]) == bench.FER_LABELS.index("happy")


def test_photo_rows_count_a_missed_face_as_wrong_and_compare_with_fer(load_benchmark):
    bench = load_benchmark("bench_vs_fer")
    y = np.array([3, 3, 6, 6, 0, 5])  # happy happy neutral neutral angry surprise
    answers = {"fer": [3, -1, 6, 4, -1, 5], "ferkit": [3, 3, 6, 6, 0, 2]}
    photos = [np.full((8, 8, 3), i, np.uint8) for i in range(len(y))]  # photo i has every pixel = i

    def engine(name, timed=True):
        return bench.PhotoEngine(name, name, lambda photo: answers[name][int(photo[0, 0, 0])], timed)

    rows = bench.evaluate_photos([engine("ferkit"), engine("fer", timed=False)], photos, y)
    by_name = {r[0]: r for r in rows}
    ferkit, fer = by_name["ferkit"], by_name["fer (baseline)"]
    assert ferkit[1] == "6" and ferkit[2] == "100.0%" and ferkit[3] == "83.3%"  # 5 of 6 right
    assert fer[2] == "66.7%" and fer[3] == "50.0%"  # two photos without a face count as wrong
    assert fer[5] == "75.0% (4)"  # 3 of the 4 photos where fer found a face
    assert fer[7] == "-" and ferkit[7] != "-"  # an untimed engine shows no time
    assert fer[8] == "-" and ferkit[8].startswith("+33.3 [")  # accuracy difference to fer in points


def test_real_photo_rows_equal_ferkit_analyze_and_skip_fer_cleanly(tmp_path, monkeypatch, capsys, load_benchmark,
                                                                  faces_dev):
    pytest.importorskip("onnxruntime")
    import csv
    import shutil

    import ferkit
    from ferkit.io import read_image
    from ferkit.runtime import bundled_models

    if "default" not in bundled_models():
        pytest.skip("no bundled default model in this installation")
    bench = load_benchmark("bench_vs_fer")
    monkeypatch.setattr(bench, "fer_data_dir",
                        lambda: (_ for _ in ()).throw(bench.BackendUnavailable("the fer package is not installed (test)")))
    rows = list(csv.DictReader(open(faces_dev / "labels.csv", newline="")))[:8]
    root = tmp_path / "faces"
    (root / "images").mkdir(parents=True)
    for r in rows:
        shutil.copy(faces_dev / r["file"], root / r["file"])
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg")  # an unreadable photo is skipped, not fatal
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + [{**rows[0], "file": "images/broken.jpg"}])
    csv_path = make_fer_csv(tmp_path / "tiny.csv", n_per_split=(7, 5, 5), seed=1)
    out_json = tmp_path / "rows.json"
    rc = bench.main(["--csv", str(csv_path), "--threads", "1", "--rounds", "1", "--faces-dev", str(root),
                     "--json", str(out_json)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "fer real-photo rows skipped: the fer package is not installed (test)" in captured.out
    assert "broken.jpg" in captured.err
    photo_rows = json.loads(out_json.read_text())["faces_dev_rows"]
    assert [r[0] for r in photo_rows] == ["ferkit"]
    # the row equals ferkit.analyze on the same photos, the largest face, as a user calls it
    right = 0
    for r in rows:
        faces = ferkit.analyze(read_image(faces_dev / r["file"]))
        right += bool(faces) and faces[0].emotion == ferkit.EMOTIONS[int(r["fer2013_label"])]
    assert photo_rows[0][1] == "8"
    assert photo_rows[0][3] == f"{right / 8:.1%}"

    # an empty faces-dev folder is a skip with a line, not a crash
    rc = bench.main(["--csv", str(csv_path), "--threads", "1", "--rounds", "1", "--no-fer",
                     "--faces-dev", str(tmp_path / "nowhere")])
    assert rc == 0 and "real-photo rows skipped" in capsys.readouterr().out


def test_probabilities_are_put_in_fer2013_order_by_label_name(load_benchmark):
    bench = load_benchmark("bench_vs_fer")
    names = ["neutral", "happy", "sad", "angry", "surprise", "fear", "disgust"]  # some other model's order
    to_fer = bench.label_map(names, "test model")
    probs = np.arange(14, dtype=np.float32).reshape(2, 7)
    out = bench.to_fer_columns(probs, to_fer)
    for j, name in enumerate(names):
        np.testing.assert_array_equal(out[:, bench.EMOTIONS.index(name)], probs[:, j])
