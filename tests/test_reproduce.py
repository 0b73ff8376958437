"""benchmarks/reproduce.py: the README's reproduction table names commands that `ferkit train` accepts."""
from __future__ import annotations

import shlex

import pytest

from ferkit.cli import build_parser
from ferkit.commands.train import config_from_args
from ferkit.train import resolve_config


@pytest.fixture()
def mod(load_benchmark):
    return load_benchmark("reproduce")


def test_every_row_is_a_valid_train_command_for_its_architecture(mod):
    parser = build_parser()
    outs = set()
    for row in mod.ROWS:
        cmd = ["train", "--data", "data.csv"] + shlex.split(row.train_args.replace(mod.FERPLUS_ARG, "fp.csv"))
        args = parser.parse_args(cmd)  # argparse exits (SystemExit) on an unknown or malformed option
        # what `ferkit train` would run: registry < recipe < options, checked (FerkitError on a bad combination)
        cfg = resolve_config(config_from_args(args))
        assert cfg.arch == row.arch, row.name
        assert args.out.startswith("runs/"), row.name
        outs.add(args.out)
    assert len(outs) == len(mod.ROWS)  # each row has its own run directory


def test_commands_substitute_the_data_paths(mod, capsys):
    assert mod.main(["--commands", "--data", "/d/fer.csv.gz", "--ferplus", "/d/new.csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(mod.ROWS)
    assert all(line.startswith("ferkit train --data /d/fer.csv.gz ") for line in lines)
    assert not any(mod.FERPLUS_ARG in line for line in lines)
    assert any("--ferplus /d/new.csv" in line for line in lines)


def test_rows_without_a_run_say_so_and_show_no_number(mod, tmp_path, capsys):
    js = tmp_path / "rows.json"
    assert mod.main(["--runs", str(tmp_path), "--json", str(js)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    body = table[1:]  # first line: the header
    assert len(body) == len(mod.ROWS)
    assert all("not trained yet" in line and "%" not in line.split("|")[5] for line in body)
    assert js.read_text().count("null") == len(mod.ROWS)
