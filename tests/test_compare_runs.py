"""benchmarks/compare_runs.py: runs side by side from their metrics.csv, differences in standard errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

HEADER = "epoch,train_loss,train_acc,val_loss,val_acc,lr,epoch_time_s,images_per_s\n"


@pytest.fixture()
def mod(load_benchmark):
    return load_benchmark("compare_runs")


def _run(path: Path, val: list[float], train: list[float], n_val: int | None = None) -> Path:
    path.mkdir(parents=True)
    lines = [f"{i},1.0,{t},1.0,{v},0.1,30.0,900\n" for i, (v, t) in enumerate(zip(val, train), start=1)]
    (path / "metrics.csv").write_text(HEADER + "".join(lines))
    if n_val is not None:
        (path / "config.json").write_text(json.dumps({"data_info": {"sizes": {"val": n_val}}}))
    return path


def _rows(out: str) -> dict[str, list[str]]:
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| ") and not line.startswith("| run ")}


def test_table_reports_best_epoch_and_difference_in_standard_errors(mod, tmp_path, capsys):
    a = _run(tmp_path / "a", [0.50, 0.60, 0.58], [0.55, 0.70, 0.80], n_val=1000)
    b = _run(tmp_path / "b", [0.55, 0.65, 0.66], [0.50, 0.60, 0.65], n_val=1000)
    plot = tmp_path / "curves.png"
    js = tmp_path / "t.json"
    assert mod.main([f"base={a}", str(b / "metrics.csv"), "--plot", str(plot), "--json", str(js)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["base", "b"]
    # base: best epoch 2 (60%), last train 80%, gap at best 70 - 60; three epochs of 30 s = 1.5 minutes
    assert rows["base"][:4] == ["3", "2", "60.00", "-"] and rows["base"][6:] == ["80.00", "10.00", "1.50"]
    se = 100 * math.sqrt(2 * 0.63 * 0.37 / 1000)
    assert rows["b"][1:5] == ["3", "66.00", "+6.00", f"{6 / se:+.2f}"]
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert [r["best_epoch"] for r in json.loads(js.read_text())] == [2, 3]


def test_without_a_validation_size_the_standard_error_column_stays_empty(mod, tmp_path, capsys):
    a = _run(tmp_path / "a", [0.5, 0.6], [0.5, 0.6])
    b = _run(tmp_path / "b", [0.4, 0.5], [0.5, 0.6])
    assert mod.main([str(a), str(b)]) == 0
    assert _rows(capsys.readouterr().out)["b"][3:5] == ["-10.00", "-"]
    assert mod.main([str(a), str(b), "--n-val", "3589"]) == 0
    assert _rows(capsys.readouterr().out)["b"][4].startswith("-")


@pytest.mark.parametrize("content, message", [
    (None, "no metrics.csv"),
    ("epoch,val_loss\n1,0.5\n", "missing column(s) train_acc, val_acc"),
    (HEADER, "no epochs recorded"),
    (HEADER + "1,1.0,abc,1.0,0.5,0.1,30,900\n", "line 2"),
])
def test_unreadable_runs_name_the_file_and_the_problem(mod, tmp_path, content, message):
    run = tmp_path / "bad"
    run.mkdir()
    if content is not None:
        (run / "metrics.csv").write_text(content)
    with pytest.raises(SystemExit, match=r"compare_runs: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        mod.main([str(run)])


def test_two_runs_with_the_same_name_are_refused(mod, tmp_path):
    a = _run(tmp_path / "x" / "run", [0.5], [0.5])
    b = _run(tmp_path / "y" / "run", [0.5], [0.5])
    with pytest.raises(SystemExit, match="same name"):
        mod.main([str(a), str(b)])
