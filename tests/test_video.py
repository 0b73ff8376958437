"""The video path: frame reading and writing, tracking, smoothing, summaries, plots, ``ferkit predict`` on
a clip and ``ferkit live`` with a video file standing in for the camera. Clips are generated here."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit import pipeline
from ferkit.cli import main as cli_main
from ferkit.errors import FerkitError
from ferkit.io import Source, expand_sources
from ferkit.video import (EmotionSmoother, FrameReader, IoUTracker, Timeline, VideoSink, iter_video,
                          open_csv, process_video)

from test_inference import SquareDetector, model_path, use_square_detector  # noqa: F401  (fixtures)


def make_clip(path: Path, n: int = 12, fps: float = 10.0, size=(160, 120), squares=None) -> Path:
    """An mp4 clip: a bright square drifting right (or ``squares(i) -> [(x, y, s)]``) on a dark background."""
    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened()
    for i in range(n):
        frame = np.full((h, w, 3), 40, np.uint8)
        for x, y, s in (squares(i) if squares else [(20 + 2 * i, 30, 50)]):
            frame[y:y + s, x:x + s] = 250
        vw.write(frame)
    vw.release()
    return path


@pytest.fixture
def clip(tmp_path) -> Path:
    return make_clip(tmp_path / "clip.mp4")


@pytest.fixture
def analyzer(model_path):  # noqa: F811
    return pipeline.Analyzer(str(model_path), detector=SquareDetector())


def test_frame_reader_and_sink(clip, tmp_path):
    r = FrameReader(clip)
    assert r.fps == pytest.approx(10.0) and (r.width, r.height) == (160, 120) and r.frame_count == 12
    frames = list(r)
    assert [i for i, _, _ in frames] == list(range(12))
    assert frames[3][1] == pytest.approx(0.3) and frames[0][2].shape == (120, 160, 3)
    assert [i for i, _, _ in FrameReader(clip, stride=5)] == [0, 5, 10]
    assert len(list(FrameReader(clip, max_frames=4))) == 4
    with VideoSink(tmp_path / "o" / "copy.mp4", fps=10) as sink:
        for _, _, f in frames:
            sink.write(f)
    assert len(list(FrameReader(tmp_path / "o" / "copy.mp4"))) == 12
    # an odd size is padded by one pixel, not cut (OpenCV's mp4v writer cut 161x121 to 160x120, silently)
    odd = [cv2.copyMakeBorder(f, 0, 1, 0, 1, cv2.BORDER_CONSTANT, value=(0, 0, 255)) for _, _, f in frames[:3]]
    with VideoSink(tmp_path / "o" / "odd.mp4", fps=10) as sink:
        for f in odd:
            sink.write(f)
    assert sink.size == (161, 121) and sink.written_size == (162, 122)
    back = [f for _, _, f in FrameReader(tmp_path / "o" / "odd.mp4")]
    assert len(back) == 3 and back[0].shape == (122, 162, 3)
    assert back[0][60, 161, 2] > 150 and back[0][121, 80, 2] > 150  # the red last column/row is kept, then copied
    with pytest.raises(FerkitError, match="no such video"):
        FrameReader(tmp_path / "nope.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 100)
    with pytest.raises(FerkitError, match="cannot open"):
        FrameReader(tmp_path / "junk.mp4")
    with pytest.raises(FerkitError, match="camera 97"):
        FrameReader(Source("camera", camera=97))


def test_tracker_ids_are_stable():
    tr = IoUTracker(iou_threshold=0.3, max_missed=2)
    assert tr.update([(10, 10, 50, 50), (200, 10, 50, 50)]) == ([1, 2], [])
    assert tr.update([(205, 12, 50, 50), (14, 10, 50, 50)]) == ([2, 1], [])  # order does not matter
    assert tr.update([(18, 10, 50, 50)]) == ([1], [])                          # track 2 missed once
    assert tr.update([(400, 300, 50, 50)])[0] == [3]                           # far away: a new face
    ids, ended = tr.update([(22, 10, 50, 50)])
    assert ids == [1] and ended == [2]                                         # 2 unseen for 3 frames
    assert tr.update([(200, 10, 50, 50)])[0] == [4]                            # ids are never reused


def test_smoothing_removes_flicker_and_is_frame_rate_independent():
    sm = EmotionSmoother(half_life=0.5)
    a, b = np.array([0.6, 0.4]), np.array([0.4, 0.6])
    labels = [sm.update(1, a if i % 2 == 0 else b, i / 30).argmax() for i in range(60)]
    assert len(set(labels[1:])) == 1  # raw argmax alternates every frame; smoothed does not
    # after 0.5 s of constant new input, half of the old state remains, at 10 or 100 fps alike
    for fps in (10, 100):
        s = EmotionSmoother(half_life=0.5)
        s.update(7, [1.0, 0.0], 0.0)
        for k in range(1, int(0.5 * fps) + 1):
            out = s.update(7, [0.0, 1.0], k / fps)
        assert out[0] == pytest.approx(0.5, abs=1e-6)
    off = EmotionSmoother(half_life=0)
    off.update(1, a, 0)
    assert (off.update(1, b, 0.1) == b).all()


def test_timeline_memory_is_bounded():
    tl = Timeline(num_labels=3, max_points=100)
    for i in range(10_000):
        tl.add(1, i / 30, [0.2, 0.3, 0.5])
    t, p = tl.series(1)
    assert len(t) <= 100 and p.shape == (len(t), 3)
    assert t[0] == 0 and t[-1] > 0.9 * 9999 / 30 and (np.diff(t) > 0).all()


def test_iter_video_tracks_and_smooths(tmp_path, analyzer):
    path = make_clip(tmp_path / "two.mp4", n=10, squares=lambda i: [(10 + i, 20, 40), (100 - i, 60, 40)])
    frames = list(iter_video(path, analyzer, smoothing=0.3))
    assert len(frames) == 10
    for fr in frames:
        assert len(fr.faces) == 2 and len(fr.raw) == 2
        by_x = sorted(fr.faces, key=lambda f: f.box[0])
        assert [f.track for f in by_x] == [1, 2]
        for f in fr.faces:
            assert sum(f.probabilities.values()) == pytest.approx(1.0, abs=1e-6)


def test_detect_every_k_frames_reuses_the_boxes_and_reads_every_frame(tmp_path, model_path):  # noqa: F811
    """detect_every=3: the detector runs on frames 0, 3, 6, ...; the frames between keep the last boxes (a
    moving face's box lags by up to 2 frames) and still get their own emotion from their own pixels."""
    det = SquareDetector()
    a = pipeline.Analyzer(str(model_path), detector=det)
    path = make_clip(tmp_path / "move.mp4", n=9, squares=lambda i: [(10 + 5 * i, 30, 40)])
    every = list(iter_video(path, a, smoothing=0))
    calls = len(det.calls)
    assert calls == 9
    lazy = list(iter_video(path, a, smoothing=0, detect_every=3))
    assert len(det.calls) - calls == 3  # frames 0, 3 and 6
    assert len(lazy) == 9 and all(len(fr.faces) == 1 for fr in lazy)
    for fr in lazy:
        assert fr.faces[0].box == every[fr.index - fr.index % 3].faces[0].box  # the box of the last detection
    assert all(fr.faces[0].track == 1 for fr in lazy)
    # on detection frames the answer is the every-frame answer; between them, the frame's own pixels are read
    for k in (0, 3, 6):
        assert lazy[k].raw[0].probabilities == pytest.approx(every[k].raw[0].probabilities)
    (moved,) = a.classify(lazy[1].frame, a.detect(lazy[0].frame))  # frame 1 read through frame 0's box
    assert lazy[1].raw[0].probabilities == pytest.approx(moved.probabilities)
    assert lazy[1].raw[0].probabilities != pytest.approx(lazy[0].raw[0].probabilities)  # its own pixels, not a copy
    with pytest.raises(FerkitError, match="detect_every"):
        next(iter_video(path, a, detect_every=0))

    class OnlyAnalyze:  # a custom analyzer (the server's --analyzer kind) cannot skip detection
        labels = a.labels

        def analyze(self, frame):
            return []

    with pytest.raises(FerkitError, match="detect"):
        next(iter_video(path, OnlyAnalyze(), detect_every=2))


def test_process_video_outputs(tmp_path, clip, analyzer):
    f, w = open_csv(tmp_path / "t.csv", analyzer.labels)
    seen = []
    report = process_video(clip, analyzer, save_video=tmp_path / "out" / "a.mp4", csv_writer=w,
                           plot=tmp_path / "out" / "a.png", on_frame=lambda fr: seen.append(fr.index))
    f.close()
    assert report.frames == 12 and seen == list(range(12))
    assert list(report.tracks) == [1] and report.tracks[1].frames == 12
    shares = report.tracks[1].shares
    assert sum(shares.values()) == pytest.approx(1.0) and report.tracks[1].dominant in shares
    assert len(list(FrameReader(tmp_path / "out" / "a.mp4"))) == 12
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) == 12 and rows[5]["frame"] == "5" and rows[5]["track"] == "1"
    assert float(rows[5]["time_s"]) == pytest.approx(0.5)
    pytest.importorskip("matplotlib")
    assert (tmp_path / "out" / "a.png").stat().st_size > 1000 and report.outputs["plot"].endswith("a.png")
    d = report.to_dict()
    assert json.loads(json.dumps(d))["tracks"][0]["frames"] == 12


def test_predict_video_cli(tmp_path, clip, capsys, use_square_detector, model_path):  # noqa: F811
    rc = cli_main(["predict", str(clip), "--json", "--csv", str(tmp_path / "v.csv"), "--save", str(tmp_path / "o"),
                   "--model", str(model_path)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rows = [json.loads(l) for l in cap.out.splitlines()]
    assert len(rows) == 12 and [r["frame"] for r in rows] == list(range(12))
    for r in rows:
        assert set(r) >= {"source", "frame", "box", "emotion", "score", "probabilities", "track"}
        assert r["track"] == 1 and r["source"] == str(clip)
    saved = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert saved == ["clip_annotated.mp4", "clip_emotions.png", "clip_summary.json"] or \
        saved == ["clip_annotated.mp4", "clip_summary.json"]  # the plot needs matplotlib
    summary = json.loads((tmp_path / "o" / "clip_summary.json").read_text())
    assert summary["frames"] == 12 and summary["tracks"][0]["track"] == 1
    assert len(list(csv.DictReader(open(tmp_path / "v.csv")))) == 12
    # --detect-every: every frame still gets its row
    rc = cli_main(["predict", str(clip), "--json", "--detect-every", "3", "--model", str(model_path)])
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert rc == 0 and [r["frame"] for r in rows] == list(range(12))
    assert cli_main(["predict", str(clip), "--detect-every", "0", "--model", str(model_path)]) == 2
    assert "--detect-every must be >= 1" in capsys.readouterr().err
    # the table mode prints a per-track summary
    rc = cli_main(["predict", str(clip), "--model", str(model_path), "--max-frames", "5"])
    out = capsys.readouterr().out
    assert rc == 0 and "5 frames" in out and "dominant" in out


def test_predict_corrupt_video_is_reported(tmp_path, clip, capsys, use_square_detector, model_path):  # noqa: F811
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x01not a video" * 50)
    rc = cli_main(["predict", str(tmp_path / "bad.mp4"), str(clip), "--json", "--model", str(model_path)])
    cap = capsys.readouterr()
    assert rc == 1 and "bad.mp4" in cap.err and len(cap.out.splitlines()) == 12


def test_live_headless_with_video_standing_in_for_camera(clip, capsys, use_square_detector, model_path):  # noqa: F811
    assert expand_sources(["0"]).sources == [Source("camera", camera=0)]
    rc = cli_main(["live", "--source", str(clip), "--headless", "--max-frames", "5", "--model", str(model_path)])
    cap = capsys.readouterr()
    assert rc == 0
    rows = [json.loads(l) for l in cap.out.splitlines()]
    assert [r["frame"] for r in rows] == [0, 1, 2, 3, 4] and all(r["track"] == 1 for r in rows)
    assert all(r["fps"] > 0 for r in rows) and "5 frames" in cap.err
    rc = cli_main(["live", "--source", str(clip), "--headless", "--max-frames", "5", "--detect-every", "2",
                   "--model", str(model_path)])
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert rc == 0 and [r["frame"] for r in rows] == [0, 1, 2, 3, 4]


def test_live_window_needs_gui_or_headless(clip, capsys, model_path):  # noqa: F811
    try:
        cv2.namedWindow("probe")
        cv2.destroyAllWindows()
        pytest.skip("this OpenCV has GUI support")
    except cv2.error:
        pass
    rc = cli_main(["live", "--source", str(clip), "--max-frames", "2", "--model", str(model_path)])
    assert rc == 2 and "--headless" in capsys.readouterr().err


def test_detect_size_reaches_the_detector_with_its_own_default_for_live(clip, capsys, monkeypatch, tmp_path,
                                                                        model_path):  # noqa: F811
    from ferkit.cli import build_parser
    from ferkit.commands.predict import build_analyzer
    from ferkit.faces import DEFAULT_MAX_SIDE

    parser = build_parser()
    # photos and videos keep the detectors' full default size; the live camera detects on 400-pixel frames
    assert parser.parse_args(["predict", "x.jpg"]).detect_size == DEFAULT_MAX_SIDE
    assert parser.parse_args(["live"]).detect_size == 400
    assert build_analyzer(parser.parse_args(["live", "--model", str(model_path)])).max_side == 400
    assert build_analyzer(parser.parse_args(["predict", "x.jpg", "--model", str(model_path),
                                             "--detect-size", "0"])).max_side is None
    # every frame of the live loop goes to detection with that size
    seen = []
    real_detect = pipeline.detect_faces

    def spy(image, detector, **kw):
        seen.append(kw.get("max_side"))
        return real_detect(image, detector, **kw)

    monkeypatch.setattr(pipeline, "detect_faces", spy)
    rc = cli_main(["live", "--source", str(clip), "--headless", "--max-frames", "3", "--model", str(model_path),
                   "--detect-size", "80"])
    assert rc == 0 and seen == [80, 80, 80]
    capsys.readouterr()
    for bad in ("-1", "10", "63"):
        for cmd in (["live", "--source", str(clip), "--headless"], ["predict", str(clip)]):
            rc = cli_main(cmd + ["--model", str(model_path), "--detect-size", bad])
            assert rc == 2 and "--detect-size must be 0 (full size) or at least 64" in capsys.readouterr().err
