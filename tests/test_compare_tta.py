"""metrics.paired_comparison and benchmarks/compare_tta.py: paired figures equal a direct count."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import make_fer_csv


def test_paired_comparison_counts_by_hand():
    from ferkit.metrics import paired_comparison

    y = [0, 1, 2, 3, 4, 5, 6, 0]
    a = [0, 1, 2, 0, 0, 5, 6, 1]  # right on 0,1,2,5,6 (5 of 8)
    b = [0, 1, 0, 3, 4, 5, 0, 0]  # right on 0,1,3,4,5,7 (6 of 8)
    r = paired_comparison(y, a, b)
    assert r["n"] == 8
    assert r["accuracy_a"] == pytest.approx(5 / 8) and r["accuracy_b"] == pytest.approx(6 / 8)
    assert (r["a_only"], r["b_only"], r["discordant"]) == (2, 3, 5)  # a only: images 2, 6; b only: 3, 4, 7
    assert r["difference"] == pytest.approx(1 / 8)
    assert r["paired_se"] == pytest.approx(math.sqrt(5) / 8)
    same = paired_comparison(y, a, a)
    assert same["discordant"] == 0 and same["difference"] == 0 and same["paired_se"] == 0
    empty = paired_comparison([], [], [])
    assert empty["n"] == 0 and empty["paired_se"] == 0


def test_paired_comparison_refuses_mismatched_input():
    from ferkit.errors import FerkitError
    from ferkit.metrics import paired_comparison

    with pytest.raises(FerkitError, match="differ in length"):
        paired_comparison([0, 1, 2], [0, 1, 2], [0, 1])
    with pytest.raises(FerkitError, match="1-D"):
        paired_comparison([[0, 1]], [[0, 1]], [[0, 1]])


def test_compare_tta_rows_equal_a_direct_evaluation(tmp_path, load_benchmark, capsys):
    pytest.importorskip("onnxruntime")
    from ferkit.evaluate import evaluate
    from ferkit.runtime import bundled_models

    if "default" not in bundled_models():
        pytest.skip("no bundled default model in this installation")
    bench = load_benchmark("compare_tta")
    data = make_fer_csv(tmp_path / "fer2013.csv", n_per_split=(10, 50, 30), seed=5)
    out = tmp_path / "rows.json"
    assert bench.main(["default", "--data", str(data), "--modes", "none,flip,tencrop", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| tencrop" in printed and "paired SE" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["tta"] for r in rows] == ["none", "flip", "tencrop"]
    assert "vs_first" not in rows[0]
    ref = evaluate("default", str(data), split="PublicTest", tta="none", return_probs=True)
    y, p0 = ref["y_true"], ref["probs"].argmax(axis=1)
    for r in rows[1:]:
        direct = evaluate("default", str(data), split="PublicTest", tta=r["tta"], return_probs=True)
        p = direct["probs"].argmax(axis=1)
        c = r["vs_first"]
        assert r["n"] == 50 and r["accuracy"] == pytest.approx(direct["accuracy"])
        assert c["a_only"] == int(np.sum((p0 == y) & (p != y)))
        assert c["b_only"] == int(np.sum((p == y) & (p0 != y)))
        assert c["difference"] == pytest.approx(direct["accuracy"] - ref["accuracy"])
        assert c["paired_se"] == pytest.approx(math.sqrt(c["a_only"] + c["b_only"]) / 50)


def test_compare_tta_bad_arguments_are_clear_errors(tmp_path, load_benchmark, capsys):
    pytest.importorskip("onnxruntime")
    bench = load_benchmark("compare_tta")
    data = make_fer_csv(tmp_path / "fer2013.csv", n_per_split=(10, 20, 20), seed=1)
    for modes, msg in (("flip", "two or more"), ("flip,flip", "two or more"), ("flip,sideways", "sideways")):
        assert bench.main(["default", "--data", str(data), "--modes", modes]) == 2
        assert msg in capsys.readouterr().err
    assert bench.main(["default", "--data", str(data), "--ferplus-protocol", "reference"]) == 2
    assert "needs --ferplus" in capsys.readouterr().err
    assert bench.main([str(tmp_path / "missing.onnx"), "--data", str(data)]) == 2
    assert "compare_tta: error" in capsys.readouterr().err
