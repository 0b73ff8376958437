"""``ferkit data pack``: a compact FER2013 (+ FER+) file that every --data/--ferplus takes in place of the CSVs."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from conftest import make_fer_csv, write_ferplus_csv
from ferkit.cli import main as cli_main
from ferkit.data import pack as P
from ferkit.data.fer2013 import load_fer2013
from ferkit.data.ferplus import load_ferplus
from ferkit.data.splits import prepare_splits
from ferkit.errors import FerkitError
from test_train import FAST  # also registers the tiny test network


def _votes(i, label):
    v = [0] * 10
    v[[4, 5, 6, 1, 3, 2, 0][label]] = 6
    v[(i * 3) % 8] += 3  # a second opinion, so the soft targets are not one-hot
    v[8 + i % 2] += 1  # an unknown or not-a-face vote
    return v


@pytest.fixture
def csv_pair(tmp_path):
    csv = make_fer_csv(tmp_path / "fer.csv", n_per_split=(90, 20, 20), seed=4)
    return csv, write_ferplus_csv(csv, tmp_path / "fernew.csv", _votes)


def test_pack_round_trip_equals_the_csv(csv_pair, tmp_path):
    csv, fp = csv_pair
    rep = P.write_pack(csv, tmp_path / "p.npz", ferplus=fp)
    assert rep["images"] == 130 and rep["counts"] == {"Training": 90, "PublicTest": 20, "PrivateTest": 20}
    assert rep["packed_bytes"] < rep["raw_bytes"]  # smooth synthetic faces compress
    a, b = load_fer2013(tmp_path / "p.npz"), load_fer2013(csv)
    assert a.sha256 == b.sha256 and a.pack["splits"] == ["Training", "PublicTest", "PrivateTest"]
    for k in ("images", "labels", "usage", "rows"):
        assert np.array_equal(getattr(a, k), getattr(b, k)) and getattr(a, k).dtype == getattr(b, k).dtype
    fa, fb = load_ferplus(tmp_path / "p.npz"), load_ferplus(fp)
    assert fa.sha256 == fb.sha256 and np.array_equal(fa.votes, fb.votes) and fa.image_names == fb.image_names
    # the same splits and targets, FER+ blend included; the random split too (all three Usage splits packed)
    for kw in (dict(ferplus_mode="blend"), dict(ferplus_mode="soft", label_set="ferplus8"), dict(split="random")):
        fkw = {} if "split" in kw else {"ferplus": None}
        sa = prepare_splits(tmp_path / "p.npz", **kw, **({"ferplus": tmp_path / "p.npz"} if fkw else {}))
        sb = prepare_splits(csv, **kw, **({"ferplus": fp} if fkw else {}))
        assert sa.info["data_sha256"] == sb.info["data_sha256"]
        for role in ("train", "val", "test"):
            x, y = sa.get(role), sb.get(role)
            assert np.array_equal(x.images, y.images) and np.array_equal(x.labels, y.labels)
            assert (x.soft is None and y.soft is None) or np.array_equal(x.soft, y.soft)
    # it is a plain .npz to numpy as well
    with np.load(tmp_path / "p.npz") as z:
        assert json.loads(str(z["meta"].reshape(-1)[0]))["source_sha256"] == b.sha256


def test_a_partial_pack_refuses_the_duplicates_rule_and_a_max_mb_it_cannot_meet(csv_pair, tmp_path, monkeypatch):
    """Without PrivateTest in the pack, Training's copies of test images cannot be found: the duplicates rule
    is refused rather than silently keeping them. And a --max-mb below one block's packed size is refused."""
    csv, _ = csv_pair
    part = tmp_path / "tp.npz"
    P.write_pack(csv, part, splits=["Training", "PublicTest"])
    with pytest.raises(FerkitError, match="duplicates rule"):
        prepare_splits(part, clean=["blank", "duplicates"])
    with pytest.raises(FerkitError, match="duplicates rule"):
        prepare_splits(part, clean="blank,duplicates:all")
    prepare_splits(part, clean=["blank"])  # the other rules need no other split
    rng = np.random.default_rng(1)
    lines = ["emotion,pixels,Usage"] + [f"{i % 7},{' '.join(map(str, rng.integers(0, 256, 2304)))},Training"
                                        for i in range(600)]
    noise = tmp_path / "noise.csv"
    noise.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(P, "CHUNK", 500)  # one block of 500 noisy faces is ~1.2 MB
    with pytest.raises(FerkitError, match="--max-mb 1 cannot be met"):
        P.write_pack(noise, tmp_path / "big.npz", max_mb=1)
    assert not list(tmp_path.glob("big*")) and not list(tmp_path.glob(".big.npz.tmp*"))


def test_pack_in_parts_of_a_given_size(tmp_path, monkeypatch):
    # noisy images barely compress: 1,000 of them (2.3 MB) in blocks of 100 must need three parts of <= 1 MB
    rng = np.random.default_rng(0)
    lines = ["emotion,pixels,Usage"]
    for i in range(1000):
        usage = "Training" if i < 800 else ("PublicTest" if i < 900 else "PrivateTest")
        lines.append(f"{i % 7},{' '.join(map(str, rng.integers(0, 256, 2304)))},{usage}")
    csv = tmp_path / "noise.csv"
    csv.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(P, "CHUNK", 100)
    rep = P.write_pack(csv, tmp_path / "n.npz", splits=["PublicTest", "Training"], max_mb=1)
    names = [n for n, _ in rep["files"]]
    assert names[0] == "n.npz" and names[1:] == [f"n.part{k}.npz" for k in range(2, len(names) + 1)]
    assert len(names) >= 3 and all(size <= 1.05e6 for _, size in rep["files"])
    ds = load_fer2013(tmp_path / "n.npz")
    ref = load_fer2013(csv)
    keep = ref.usage < 2
    assert len(ds) == 900 and np.array_equal(ds.images, ref.images[keep]) and np.array_equal(ds.rows, ref.rows[keep])
    # the second part alone is not a data set
    with pytest.raises(FerkitError, match="part 2 of .*pass its first part, n.npz"):
        load_fer2013(tmp_path / "n.part2.npz")
    # a missing part, then a part of another pack in its place
    part3 = (tmp_path / "n.part3.npz").read_bytes()
    (tmp_path / "n.part3.npz").unlink()
    with pytest.raises(FerkitError, match="n.part3.npz is missing"):
        load_fer2013(tmp_path / "n.npz")
    other = P.write_pack(csv, tmp_path / "o" / "n.npz", splits=["Training"], max_mb=1)
    assert len(other["files"]) >= 3
    (tmp_path / "n.part3.npz").write_bytes((tmp_path / "o" / "n.part3.npz").read_bytes())
    with pytest.raises(FerkitError, match="belongs to another pack"):
        load_fer2013(tmp_path / "n.npz")
    (tmp_path / "n.part3.npz").write_bytes(part3)
    assert len(load_fer2013(tmp_path / "n.npz")) == 900
    # replaced by a pack in fewer parts: the old further parts go, a file that is not a pack stays
    (tmp_path / f"n.part{len(names) + 1}.npz").write_text("notes")  # right after the last old part
    rep2 = P.write_pack(csv, tmp_path / "n.npz", splits=["PublicTest"], max_mb=1, overwrite=True)
    assert len(rep2["files"]) == 1 and not (tmp_path / "n.part2.npz").exists()
    assert not (tmp_path / f"n.part{len(names)}.npz").exists() and (tmp_path / f"n.part{len(names) + 1}.npz").exists()
    assert len(load_fer2013(tmp_path / "n.npz")) == 100


def test_a_damaged_pack_is_refused(csv_pair, tmp_path):
    csv, fp = csv_pair
    P.write_pack(csv, tmp_path / "p.npz", ferplus=fp)
    raw = bytearray((tmp_path / "p.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "p.npz") as zf:
        info = zf.getinfo("images_0000.npy")
    mid = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    raw[mid] ^= 0xFF  # one flipped byte inside the compressed pixels
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(FerkitError, match="images_0000.npy cannot be read|damaged"):
        load_fer2013(tmp_path / "bad.npz")
    # a zip that merely has a meta.npy of another kind
    with zipfile.ZipFile(tmp_path / "alien.npz", "w") as zf:
        with zf.open("meta.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array(['{"format": "something else"}']))
    with pytest.raises(FerkitError, match="not a ferkit pack"):
        load_fer2013(tmp_path / "alien.npz")
    # a plain zip still gets the CSV reader's message
    with zipfile.ZipFile(tmp_path / "fer2013.zip", "w") as zf:
        zf.writestr("fer2013.csv", csv.read_text())
    with pytest.raises(FerkitError, match="zip archive, not a CSV"):
        load_fer2013(tmp_path / "fer2013.zip")


def test_partial_pack_limits_and_bad_arguments(csv_pair, tmp_path):
    csv, fp = csv_pair
    P.write_pack(csv, tmp_path / "tp.npz", splits=["Training", "PublicTest"])
    ds = load_fer2013(tmp_path / "tp.npz")
    assert set(ds.usage.tolist()) == {0, 1} and ds.source_rows == 130
    s = prepare_splits(tmp_path / "tp.npz", ferplus=fp, ferplus_mode="blend")  # FER+ still lines up (130 rows)
    assert len(s.train) == 90 and len(s.val) == 20 and len(s.test) == 0
    with pytest.raises(FerkitError, match="random split pools all"):
        prepare_splits(tmp_path / "tp.npz", split="random")
    with pytest.raises(FerkitError, match="holds no FER\\+ votes"):
        load_ferplus(tmp_path / "tp.npz")
    with pytest.raises(FerkitError, match="exists; pass --overwrite"):
        P.write_pack(csv, tmp_path / "tp.npz")
    P.write_pack(csv, tmp_path / "tp.npz", overwrite=True)
    assert len(load_fer2013(tmp_path / "tp.npz")) == 130
    with pytest.raises(FerkitError, match="unknown split"):
        P.write_pack(csv, tmp_path / "x.npz", splits=["Test"])
    with pytest.raises(FerkitError, match="must end in .npz"):
        P.write_pack(csv, tmp_path / "x.zip")
    with pytest.raises(FerkitError, match="already a ferkit pack"):
        P.write_pack(tmp_path / "tp.npz", tmp_path / "x.npz")
    # FER+ votes that do not line up with the CSV are refused when packing, not on the other machine
    short = tmp_path / "short.csv"
    short.write_text("\n".join(fp.read_text().splitlines()[:100]) + "\n")
    with pytest.raises(FerkitError, match="data rows but"):
        P.write_pack(csv, tmp_path / "x.npz", ferplus=short)
    assert not (tmp_path / "x.npz").exists() and not list(tmp_path.glob(".x.npz.tmp*"))


def test_cli_pack_then_train_evaluate_and_resume_across_csv_and_pack(csv_pair, tmp_path, capsys):
    csv, fp = csv_pair
    pack = tmp_path / "p.npz"
    assert cli_main(["data", "pack", "--data", str(csv), "--ferplus", str(fp), "--splits", "Training", "PublicTest",
                     "--out", str(pack)]) == 0
    out = capsys.readouterr().out
    assert "packed 110 images" in out and "Training 90, PublicTest 20" in out and "FER+ votes" in out
    assert cli_main(["data", "pack", "--data", str(csv), "--out", str(pack)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    run = tmp_path / "run"
    assert cli_main(["train", "--data", str(pack), "--ferplus", str(pack), "--ferplus-mode", "blend", "--epochs", "1",
                     *FAST, "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data_info"]["data_sha256"] == load_fer2013(csv).sha256 and cfg["data_info"]["pack"]["parts"] == 1
    # started from the pack, finished from the CSVs (same sha256): the run goes on
    assert cli_main(["train", "--out", str(run), "--resume", "--epochs", "2", "--data", str(csv), "--ferplus", str(fp),
                     "--no-progress", "--threads", "1"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert len(m["history"]) == 2
    # other FER+ votes are refused on resume
    other = write_ferplus_csv(csv, tmp_path / "other.csv", lambda i, label: [1] * 8 + [0, 0])
    assert cli_main(["train", "--out", str(run), "--resume", "--epochs", "3", "--ferplus", str(other),
                     "--no-progress", "--threads", "1"]) == 2
    assert "FER+ votes" in capsys.readouterr().err
    # scoring from the pack: PublicTest works, PrivateTest was not packed
    assert cli_main(["evaluate", str(run), "--data", str(pack), "--split", "PublicTest"]) == 0
    assert cli_main(["evaluate", str(run), "--data", str(pack), "--split", "PrivateTest"]) == 2
    assert "a pack of Training, PublicTest only" in capsys.readouterr().err


def _device_script_env(tmp_path, pack, run, **extra):
    """Environment for scripts/device_train.sh here: its python with the test network registered (as in
    test_train's RUNNER), its pack, run name and $OUT."""
    import os
    import sys
    from pathlib import Path

    runner = tmp_path / "py.sh"
    runner.write_text("#!/bin/sh\nif [ \"$1\" = -m ] && [ \"$2\" = ferkit.cli ]; then shift 2; exec "
                      f"\"{sys.executable}\" -c 'import sys; sys.path.insert(0, \"{Path(__file__).parent}\"); "
                      "import test_train; from ferkit.cli import main; sys.exit(main(sys.argv[1:]))' \"$@\"; fi\n"
                      f"exec \"{sys.executable}\" \"$@\"\n")
    runner.chmod(0o755)
    return {**os.environ, "PACK": str(pack), "RUN": run, "OUT": str(tmp_path / "out"), "PYTHON": str(runner),
            **{k: str(v) for k, v in extra.items()}}


def _device_script(tmp_path, env, *args, timeout=600):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "device_train.sh"
    return subprocess.run(["bash", str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_device_script_trains_from_a_pack_and_leaves_pieces_that_join_back(csv_pair, tmp_path):
    """scripts/device_train.sh, as a GPU session would run it, here on the CPU with the tiny network."""
    import tarfile

    csv, fp = csv_pair
    P.write_pack(csv, tmp_path / "p.npz", ferplus=fp, splits=["Training", "PublicTest"])
    env = _device_script_env(tmp_path, tmp_path / "p.npz", "r", KEEP_LAST=1)
    r = _device_script(tmp_path, env, *FAST, "--epochs", "2", "--ferplus", str(tmp_path / "p.npz"),
                       "--ferplus-mode", "blend")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "out"
    with tarfile.open(out / "r.tgz") as tf:
        names = set(tf.getnames())
        scores = json.load(tf.extractfile("r/scores/PublicTest.none.json"))
    assert scores["split"] == "PublicTest" and scores["n"] == 20 and 0 <= scores["accuracy"] <= 1
    assert {"r/config.json", "r/metrics.csv", "r/train.log"} <= names
    assert not any(n.endswith(".pt") or "PrivateTest" in n for n in names)  # SCORE_TEST not asked for
    for ck in ("best", "last"):
        joined = b"".join(p.read_bytes() for p in sorted(out.glob(f"r.{ck}.pt.part*")))
        assert joined == (tmp_path / "runs" / "r" / f"{ck}.pt").read_bytes()
    # a second run under the same name is refused before anything is trained
    r = _device_script(tmp_path, env, *FAST, timeout=60)
    assert r.returncode == 2 and "exists" in r.stderr


def test_device_script_scores_the_test_split_returns_half_weights_and_fetches_what_did_not_fit(csv_pair, tmp_path,
                                                                                               capsys):
    """SCORE_TEST=1 scores both splits with each TTA; WEIGHTS=half returns best.pt with float16 weights that
    ferkit evaluates as they are; pieces over one call's limits wait on the machine for --fetch."""
    import shutil
    import tarfile

    import torch

    csv, fp = csv_pair
    pack = tmp_path / "p.npz"
    P.write_pack(csv, pack, ferplus=fp)  # all three splits
    env = _device_script_env(tmp_path, pack, "h", WEIGHTS="half", SCORE_TEST=1, PIECE_BYTES=4096,
                             OUT_MAX_FILES=4, OUT_MAX_BYTES=1 << 20)
    r = _device_script(tmp_path, env, *FAST, "--epochs", "2")
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]  # more pieces than 4 files
    assert "--fetch" in r.stderr
    out = tmp_path / "out"
    with tarfile.open(out / "h.tgz") as tf:
        scores = {n: json.load(tf.extractfile(n)) for n in tf.getnames() if n.startswith("h/scores/")}
    assert sorted(scores) == [f"h/scores/{s}.{t}.json" for s in ("PrivateTest", "PublicTest")
                              for t in ("flip", "none", "tencrop")]
    assert all(v["split"] == n.split("/")[-1].split(".")[0] and v["n"] == 20 for n, v in scores.items())
    assert {v["tta"] for v in scores.values()} == {"none", "flip", "tencrop"}
    got = sorted(out.glob("h.best.pt.part*"))
    assert len(got) == 3 and len(list(out.iterdir())) == 4  # the tgz and 3 pieces: 4 files
    pieces = [p.read_bytes() for p in got]
    # the next calls (a fresh $OUT each) bring the rest, in order, until none is left; here the bytes bind:
    # two 4,096-byte pieces fit in 10,000, a third does not
    calls, fetch_env = 0, {**env, "OUT_MAX_FILES": "8", "OUT_MAX_BYTES": "10000"}
    while True:
        shutil.rmtree(out)
        r = _device_script(tmp_path, fetch_env, "--fetch", timeout=60)
        calls += 1
        more = sorted(out.glob("h.best.pt.part*"))
        assert 1 <= len(more) <= 2 and sum(p.stat().st_size for p in more) <= 10000
        assert all(p.name > got[-1].name for p in more)
        got += more
        pieces += [p.read_bytes() for p in more]
        if r.returncode == 0:
            break
        assert r.returncode == 3 and calls < 50
    assert "all pieces of h are out" in r.stdout
    joined = tmp_path / "h_best.pt"
    joined.write_bytes(b"".join(pieces))
    half, full = (torch.load(p, map_location="cpu", weights_only=False)
                  for p in (joined, tmp_path / "runs" / "h" / "best.pt"))
    assert half["model"].keys() == full["model"].keys()
    for k, v in full["model"].items():  # float weights rounded to float16, the rest (counters) as they were
        assert torch.equal(half["model"][k], v.half() if torch.is_floating_point(v) else v), k
        assert half["model"][k].dtype == (torch.float16 if torch.is_floating_point(v) else v.dtype), k
    assert half["epoch"] == full["epoch"] and half["labels"] == full["labels"]
    # the half checkpoint is a model ferkit evaluates as it is, to within float16 rounding
    capsys.readouterr()
    assert cli_main(["evaluate", str(joined), "--data", str(pack), "--split", "PublicTest", "--tta", "none",
                     "--json"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["accuracy"]
               - scores["h/scores/PublicTest.none.json"]["accuracy"]) <= 0.1
    # nothing left: a further --fetch says so; an unknown run is refused
    shutil.rmtree(out)
    r = _device_script(tmp_path, fetch_env, "--fetch", timeout=60)
    assert r.returncode == 0 and "all pieces of h are out" in r.stdout and not list(out.glob("*.part*"))
    r = _device_script(tmp_path, {**env, "RUN": "nope"}, "--fetch", timeout=60)
    assert r.returncode == 2 and "no pieces of nope" in r.stderr
    # bad settings are refused before anything runs
    for bad in ({"WEIGHTS": "int4"}, {"PIECE_BYTES": str(2 << 20)}, {"OUT_MAX_FILES": "1"}):
        r = _device_script(tmp_path, {**env, "RUN": "x", **bad}, *FAST, timeout=60)
        assert r.returncode == 2 and not (tmp_path / "runs" / "x").exists(), bad
