"""Shared fixtures. Real-data fixtures skip cleanly when ../shared/data is absent."""
from __future__ import annotations

import gzip
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("FERKIT_DATA_DIR", ROOT.parent / "shared" / "data"))
FER2013_CSV = DATA_DIR / "fer2013" / "fer2013.csv.gz"
FERPLUS_CSV = DATA_DIR / "fer2013" / "fer2013new.csv"
FACES_DEV = DATA_DIR / "faces-dev"


@pytest.fixture
def load_benchmark(monkeypatch):
    """``load_benchmark("name")`` imports ``benchmarks/name.py`` as module ``name``, registered in
    ``sys.modules`` for the test only (dataclasses in a script look their module up there)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, mod)
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own parse cache, so tests never see a stale user cache."""
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path_factory.getbasetemp() / "ferkit-cache"))


@pytest.fixture
def fer2013_csv() -> Path:
    if not FER2013_CSV.is_file():
        pytest.skip(f"real FER2013 not found at {FER2013_CSV}")
    return FER2013_CSV


@pytest.fixture
def ferplus_csv() -> Path:
    if not FERPLUS_CSV.is_file():
        pytest.skip(f"FER+ labels not found at {FERPLUS_CSV}")
    return FERPLUS_CSV


@pytest.fixture
def faces_dev() -> Path:
    if not (FACES_DEV / "labels.csv").is_file():
        pytest.skip(f"faces-dev not found at {FACES_DEV}")
    return FACES_DEV


def make_fer_csv(path: Path, n_per_split=(60, 14, 14), seed: int = 0, gz: bool = False) -> Path:
    """Write a small synthetic FER2013-format CSV whose classes are learnable (class-dependent pattern)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48]
    lines = ["emotion,pixels,Usage"]
    for usage, n in zip(("Training", "PublicTest", "PrivateTest"), n_per_split):
        for i in range(n):
            label = i % 7
            img = 60 + 20 * np.sin((xx * (label + 1) + yy) / 6.0) + rng.normal(0, 8, (48, 48))
            img[8 + label * 4:12 + label * 4, 10:38] += 90
            img = np.clip(img, 0, 255).astype(np.uint8)
            lines.append(f"{label},{' '.join(map(str, img.ravel()))},{usage}")
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


FERPLUS_HEADER_LINE = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
FER_TO_FERPLUS_COLUMN = {0: 4, 1: 5, 2: 6, 3: 1, 4: 3, 5: 2, 6: 0}  # FER2013 id -> FER+ vote column


def write_ferplus_csv(fer_csv: Path, path: Path, votes_for) -> Path:
    """A FER+ ``fer2013new.csv`` for a (plain) synthetic FER2013 CSV: ``votes_for(row_index, fer2013_label)``
    returns the 10 vote counts of that row (8 emotions in FER+ column order, unknown, NF)."""
    import csv

    with open(fer_csv) as f:
        rows = list(csv.DictReader(f))
    lines = [FERPLUS_HEADER_LINE]
    for i, r in enumerate(rows):
        votes = votes_for(i, int(r["emotion"]))
        lines.append(f"{r['Usage']},fer{i:07d}.png," + ",".join(map(str, votes)))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_fer_csv(tmp_path) -> Path:
    return make_fer_csv(tmp_path / "tiny_fer2013.csv")
