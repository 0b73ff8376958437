"""benchmarks/bench_detect_every.py: the K = 1 baseline agrees with itself, and larger K is read on every frame."""
from __future__ import annotations

import numpy as np
import pytest


def test_make_clip_moves_the_face_at_the_given_speed(load_benchmark):
    mod = load_benchmark("bench_detect_every")
    face = np.full((90, 90, 3), 250, np.uint8)
    frames = mod.make_clip(face, 6, 5, size=(320, 240), face_px=60)
    xs = [int(np.flatnonzero(f[120, :, 0] == 250)[0]) for f in frames]
    assert xs == [40, 46, 52, 58, 64] and all(f.shape == (240, 320, 3) for f in frames)
    assert mod.iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


@pytest.mark.realdata
def test_bench_detect_every_runs_on_real_faces(load_benchmark, faces_dev, capsys):
    pytest.importorskip("yuface")
    mod = load_benchmark("bench_detect_every")
    assert mod.main(["--clips", "2", "--frames", "6", "--speeds", "0,6", "--every", "3"]) == 0
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| px/frame")]
    assert [(r[0], r[1]) for r in rows] == [("0", "1"), ("0", "3"), ("6", "1"), ("6", "3")]
    for r in rows:
        if r[1] == "1":  # the baseline against itself
            assert r[3] == "1.00x" and r[5] == "1.000" and r[6] == "1.000"
        assert float(r[4]) == 1.0  # every frame of these clips shows the face
