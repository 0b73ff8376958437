"""benchmarks/bench_bundled.py: one row per bundled model, ratios against the default from the same run."""
from __future__ import annotations

import pytest


def test_bench_bundled_prints_every_bundled_model_with_its_ratio_to_default(load_benchmark, capsys):
    from ferkit.runtime import bundled_models

    if "default" not in bundled_models():
        pytest.skip("no bundled default model in this installation")
    mod = load_benchmark("bench_bundled")
    assert mod.main(["--batch", "8", "--rounds", "1", "--seconds", "0.05", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| ") and not line.startswith("| model")}
    assert set(rows) == set(bundled_models())
    assert rows["default"][-1] == "1.00x"
    for name, (arch, tta, fps, ratio) in rows.items():
        assert float(fps.replace(",", "")) > 0 and ratio.endswith("x")
        if name == "accurate":
            assert arch.startswith("ensemble of ") and tta == "flip"
