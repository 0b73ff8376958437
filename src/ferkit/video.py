"""Videos and cameras: frame sources and sinks, face tracking, temporal smoothing, summaries, plots.

Frames are processed as a stream, one at a time: memory stays flat however long the video (the
emotion-over-time record keeps at most a fixed number of points per track, halving its resolution when
full).

    >>> from ferkit.pipeline import Analyzer
    >>> from ferkit.video import process_video
    >>> report = process_video("clip.mp4", Analyzer(), save_video="out/clip.mp4", plot="out/clip_emotions.png")
    >>> report.tracks[1].dominant, report.tracks[1].shares

- :class:`FrameReader` reads a video file or a camera (``cv2.VideoCapture``): (index, time in s, BGR frame).
- :class:`VideoSink` writes an mp4 (``cv2.VideoWriter``, codec ``mp4v``), opened at the first frame.
- :class:`IoUTracker` gives each face a stable integer id: a face continues the track whose last box
  overlaps it most (intersection over union >= ``iou_threshold``); a track unseen for ``max_missed``
  frames ends. Ids start at 1 and are never reused.
- :class:`EmotionSmoother` averages each track's probabilities over time with an exponential moving
  average whose half-life is given in seconds (so it behaves the same at any frame rate); the label shown
  is the argmax of the smoothed probabilities, which stops labels flickering frame to frame.
- :func:`iter_video` yields one :class:`FrameResult` per frame; :func:`process_video` drives it and writes
  the annotated video, CSV rows and plot, and returns a :class:`VideoReport` with per-track summaries.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from .errors import FerkitError
from .faces import iou

__all__ = [
    "FrameReader", "VideoSink", "IoUTracker", "EmotionSmoother", "Timeline", "TrackSummary", "FrameResult",
    "VideoReport", "iter_video", "process_video", "plot_timeline", "CSV_COLUMNS",
]


# ------------------------------------------------------------------------------------------ sources
def _check_cv2_path(path) -> None:
    """OpenCV's video functions take a file name as UTF-8 and crash the process (a segmentation fault) on one
    that is not valid UTF-8 (e.g. Latin-1 bytes from an old archive): refuse such a name in one line."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fspath(path).encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise FerkitError(f"{shown}: OpenCV cannot open a video whose file name is not valid UTF-8; "
                          "rename the file") from None


def _open_capture(target) -> "cv2.VideoCapture":
    """cv2.VideoCapture without OpenCV's own warnings on stderr (a failure becomes our one-line error)."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    prev = None
    if log is not None:
        try:
            prev = log.getLogLevel()
            log.setLogLevel(log.LOG_LEVEL_ERROR)
        except (AttributeError, cv2.error):
            prev = None
    if not isinstance(target, int):
        _check_cv2_path(target)
    try:
        return cv2.VideoCapture(target)
    finally:
        if prev is not None:
            log.setLogLevel(prev)


class FrameReader:
    """Frames of a video file or a camera.

    source: a video path, a camera index (int), or a :class:`ferkit.io.Source`.
    max_frames: stop after this many frames (None: until the video ends / forever for a camera).
    stride: keep every ``stride``-th frame (1 = all); frame indices and times stay those of the video.

    Iterating yields ``(index, time_s, frame)`` with ``frame`` a BGR uint8 array (H, W, 3). ``fps`` is the
    video's frame rate (the camera's reported rate, or 30 when it reports none).
    """

    def __init__(self, source, *, max_frames: int | None = None, stride: int = 1):
        from .io import Source

        if isinstance(source, Source):
            self.name = source.name
            target = source.camera if source.kind == "camera" else source.path
            self.is_camera = source.kind == "camera"
        elif isinstance(source, (int, np.integer)) and not isinstance(source, bool):
            target, self.name, self.is_camera = int(source), f"camera:{int(source)}", True
        else:
            target = os.fspath(source)
            self.name, self.is_camera = target, False
            if not os.path.isfile(target):
                raise FerkitError(f"{target}: no such video file")
        if stride < 1:
            raise FerkitError(f"stride must be at least 1, got {stride}")
        if max_frames is not None and max_frames < 1:
            raise FerkitError(f"max_frames must be at least 1, got {max_frames}")
        self.max_frames = max_frames
        self.stride = int(stride)
        self._cap = _open_capture(target)
        if not self._cap.isOpened():
            self._cap.release()
            if self.is_camera:
                raise FerkitError(f"cannot open camera {target}; is it connected and free? (try another index, "
                                  "or analyse a video file instead: `ferkit predict clip.mp4`, "
                                  "`ferkit live --source clip.mp4`)")
            raise FerkitError(f"{target}: cannot open as a video (corrupt, or a format OpenCV's FFmpeg cannot read)")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and 1.0 <= fps <= 1000.0 else 30.0
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 and not self.is_camera else None

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        index = -1
        kept = 0
        t0 = time.perf_counter()
        try:
            while self.max_frames is None or kept < self.max_frames:
                ok = self._cap.grab()
                if not ok:
                    break
                index += 1
                if index % self.stride:
                    continue
                ok, frame = self._cap.retrieve()
                if not ok or frame is None:
                    break
                t = (time.perf_counter() - t0) if self.is_camera else index / self.fps
                kept += 1
                if frame.ndim == 2 or frame.shape[2] != 3:
                    from .faces import as_bgr

                    frame = as_bgr(frame)
                yield index, t, frame
        finally:
            self.close()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VideoSink:
    """Writes BGR frames to a video file with ``cv2.VideoWriter`` (codec ``mp4v``), opened at the first
    frame (its size fixes the video's size; later frames of another size are resized). MPEG-4 needs even
    sizes, and OpenCV would silently cut an odd one down: an odd width or height is instead padded by one
    pixel on the right or bottom (a copy of the edge), so nothing is lost and every box keeps its
    coordinates. ``size`` is the frames' size, ``written_size`` the file's."""

    def __init__(self, path: str | os.PathLike, fps: float, fourcc: str = "mp4v"):
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.fourcc = fourcc
        self._writer = None
        self.size: tuple[int, int] | None = None
        self.written_size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            h, w = frame.shape[:2]
            self.size = (w, h)
            self.written_size = (w + w % 2, h + h % 2)
            from .io import make_output_folder

            make_output_folder(self.path.parent, "the video's folder")
            _check_cv2_path(self.path)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                           self.written_size)
            if not self._writer.isOpened():
                self._writer = None
                raise FerkitError(f"cannot write the video {self.path} (codec {self.fourcc}); try a .mp4 or .avi name")
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size)
        if self.written_size != self.size:
            frame = cv2.copyMakeBorder(frame, 0, self.written_size[1] - self.size[1], 0,
                                       self.written_size[0] - self.size[0], cv2.BORDER_REPLICATE)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------- tracking
class IoUTracker:
    """Stable ids for boxes across frames by greedy IoU matching (see the module docstring).

    iou_threshold: the least overlap for a box to continue a track (0..1).
    max_missed: frames a track survives without a matching box.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 15):
        if not 0.0 < iou_threshold <= 1.0:
            raise FerkitError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self._tracks: dict[int, dict[str, Any]] = {}  # id -> {"box", "missed"}
        self._next_id = 1

    @property
    def active(self) -> list[int]:
        return sorted(self._tracks)

    def update(self, boxes: Sequence[Sequence[float]]) -> tuple[list[int], list[int]]:
        """Match this frame's boxes (x, y, w, h) to tracks. Returns (ids, one per box in order; ended track ids)."""
        pairs = []
        for tid, tr in self._tracks.items():
            for j, b in enumerate(boxes):
                v = iou(tr["box"], b)
                if v >= self.iou_threshold:
                    pairs.append((v, tid, j))
        pairs.sort(key=lambda p: -p[0])
        ids: list[int | None] = [None] * len(boxes)
        used: set[int] = set()
        for v, tid, j in pairs:
            if tid in used or ids[j] is not None:
                continue
            ids[j] = tid
            used.add(tid)
        for j, b in enumerate(boxes):
            if ids[j] is None:
                ids[j] = self._next_id
                self._next_id += 1
                self._tracks[ids[j]] = {"box": tuple(b), "missed": 0}
            else:
                self._tracks[ids[j]] = {"box": tuple(b), "missed": 0}
        ended = []
        for tid in list(self._tracks):
            if tid not in ids:
                self._tracks[tid]["missed"] += 1
                if self._tracks[tid]["missed"] > self.max_missed:
                    del self._tracks[tid]
                    ended.append(tid)
        return [int(i) for i in ids], ended


class EmotionSmoother:
    """Per-track exponential moving average of probability vectors, with a half-life in seconds.

    ``update(track, probs, t)`` -> smoothed probs: ``s = a * p + (1 - a) * s_prev`` with
    ``a = 1 - 0.5 ** (dt / half_life)`` (dt: seconds since the track's previous update). ``half_life=0``
    turns smoothing off.
    """

    def __init__(self, half_life: float = 0.3):
        if half_life < 0:
            raise FerkitError(f"the smoothing half-life must be >= 0 seconds, got {half_life}")
        self.half_life = float(half_life)
        self._state: dict[int, tuple[np.ndarray, float]] = {}

    def update(self, track: int, probs: Sequence[float], t: float) -> np.ndarray:
        p = np.asarray(probs, dtype=np.float64)
        prev = self._state.get(track)
        if prev is None or self.half_life <= 0:
            s = p
        else:
            sp, tp = prev
            dt = max(0.0, t - tp)
            a = 1.0 - 0.5 ** (dt / self.half_life) if dt > 0 else 0.0
            s = a * p + (1.0 - a) * sp
            s = s / s.sum() if s.sum() > 0 else p
        self._state[track] = (s, t)
        return s

    def forget(self, track: int) -> None:
        self._state.pop(track, None)


# -------------------------------------------------------------------------------------- summaries
class Timeline:
    """A bounded record of (time, probabilities) per track for the emotion-over-time plot.

    Keeps at most ``max_points`` per track: when full, every other point is dropped and only every
    second new point is kept from then on (so the record covers the whole video at half resolution).
    """

    def __init__(self, num_labels: int, max_points: int = 2000):
        self.c = int(num_labels)
        self.max_points = max(4, int(max_points))
        self._data: dict[int, dict[str, Any]] = {}

    def add(self, track: int, t: float, probs: Sequence[float]) -> None:
        d = self._data.get(track)
        if d is None:
            d = self._data[track] = {"t": np.zeros(self.max_points), "p": np.zeros((self.max_points, self.c), np.float32),
                                     "n": 0, "step": 1, "seen": 0}
        d["seen"] += 1
        if (d["seen"] - 1) % d["step"]:
            return
        if d["n"] == self.max_points:
            half = self.max_points // 2
            d["t"][:half] = d["t"][0:self.max_points:2][:half]
            d["p"][:half] = d["p"][0:self.max_points:2][:half]
            d["n"] = half
            d["step"] *= 2
        d["t"][d["n"]] = t
        d["p"][d["n"]] = probs
        d["n"] += 1

    def tracks(self) -> list[int]:
        return sorted(self._data)

    def series(self, track: int) -> tuple[np.ndarray, np.ndarray]:
        d = self._data[track]
        return d["t"][:d["n"]].copy(), d["p"][:d["n"]].copy()


@dataclass
class TrackSummary:
    """What one tracked face showed over the video.

    frames: frames the face was seen in; first_time/last_time: seconds; dominant: the label shown most;
    shares: {label: share of the track's frames showing it (smoothed label)};
    mean_probabilities: {label: mean smoothed probability}.
    """

    track: int
    frames: int = 0
    first_frame: int = 0
    last_frame: int = 0
    first_time: float = 0.0
    last_time: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    prob_sum: dict[str, float] = field(default_factory=dict)

    def add(self, frame: int, t: float, emotion: str, probabilities: dict[str, float]) -> None:
        if self.frames == 0:
            self.first_frame, self.first_time = frame, t
        self.last_frame, self.last_time = frame, t
        self.frames += 1
        self.counts[emotion] = self.counts.get(emotion, 0) + 1
        for k, v in probabilities.items():
            self.prob_sum[k] = self.prob_sum.get(k, 0.0) + float(v)

    @property
    def dominant(self) -> str | None:
        return max(self.counts, key=self.counts.get) if self.counts else None

    @property
    def shares(self) -> dict[str, float]:
        return {k: self.counts.get(k, 0) / self.frames for k in self.prob_sum} if self.frames else {}

    @property
    def mean_probabilities(self) -> dict[str, float]:
        return {k: v / self.frames for k, v in self.prob_sum.items()} if self.frames else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "track": self.track, "frames": self.frames, "first_frame": self.first_frame,
            "last_frame": self.last_frame, "first_time": round(self.first_time, 3),
            "last_time": round(self.last_time, 3), "dominant": self.dominant,
            "shares": {k: round(v, 4) for k, v in self.shares.items()},
            "mean_probabilities": {k: round(v, 4) for k, v in self.mean_probabilities.items()},
        }


@dataclass
class FrameResult:
    """One analysed frame: its index and time (s) in the video, the BGR frame, and the faces (each with a
    ``track`` id and smoothed probabilities; ``raw`` holds the unsmoothed results in the same order)."""

    index: int
    time: float
    frame: np.ndarray
    faces: list
    raw: list


@dataclass
class VideoReport:
    """The outcome of :func:`process_video`."""

    source: str
    frames: int = 0
    fps: float = 0.0
    seconds: float = 0.0           # processing wall time
    tracks: dict[int, TrackSummary] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def processing_fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "frames": self.frames, "fps": self.fps,
                "processing_fps": round(self.processing_fps, 2),
                "tracks": [t.to_dict() for _, t in sorted(self.tracks.items())],
                "outputs": dict(self.outputs), "notes": list(self.notes)}


# ------------------------------------------------------------------------------------------- driver
def iter_video(source, analyzer, *, smoothing: float = 0.3, iou_threshold: float = 0.3,
               max_missed: int | None = None, max_frames: int | None = None,
               stride: int = 1, detect_every: int = 1) -> Iterator[FrameResult]:
    """Analyse a video file or camera frame by frame.

    source: a path, camera index or :class:`ferkit.io.Source`. analyzer: a :class:`ferkit.pipeline.Analyzer`.
    smoothing: the half-life in seconds of the probability smoothing (0: off).
    max_missed: frames a track survives unseen (None: half a second of frames).
    detect_every: look for faces on every K-th analysed frame only; the frames between reuse the last boxes
        (the emotion is still read on every frame). Detection is most of a frame's cost, so K = 3 is about 3x
        the frame rate, at the price of boxes up to K-1 frames old on moving faces; a face that appears waits
        for the next detection. Needs an analyzer with ``detect`` and ``classify`` (ferkit's has both).
    """
    if int(detect_every) != detect_every or detect_every < 1:
        raise FerkitError(f"detect_every must be a whole number >= 1, got {detect_every}")
    if detect_every > 1 and not (hasattr(analyzer, "detect") and hasattr(analyzer, "classify")):
        raise FerkitError("detect_every > 1 needs an analyzer with detect(frame) and classify(frame, detections)")
    reader = source if isinstance(source, FrameReader) else FrameReader(source, max_frames=max_frames, stride=stride)
    if max_missed is None:
        max_missed = max(2, int(round(reader.fps * 0.5 / reader.stride)))
    tracker = IoUTracker(iou_threshold=iou_threshold, max_missed=max_missed)
    smoother = EmotionSmoother(half_life=smoothing)
    labels = list(analyzer.labels)
    dets: list = []
    for n, (index, t, frame) in enumerate(reader):
        if detect_every == 1:
            raw = analyzer.analyze(frame)
        else:
            if n % detect_every == 0:
                dets = analyzer.detect(frame)
            raw = analyzer.classify(frame, dets)
        ids, ended = tracker.update([r.box for r in raw])
        for tid in ended:
            smoother.forget(tid)
        faces = []
        for r, tid in zip(raw, ids):
            s = smoother.update(tid, [r.probabilities[k] for k in labels], t)
            f = r.with_probabilities(s, labels)
            f.track = tid
            r.track = tid
            faces.append(f)
        yield FrameResult(index=index, time=t, frame=frame, faces=faces, raw=raw)


CSV_COLUMNS_BASE = ["source", "frame", "time_s", "track", "x", "y", "w", "h", "emotion", "score"]


def CSV_COLUMNS(labels: Sequence[str]) -> list[str]:  # noqa: N802 - reads like a constant at call sites
    """The columns of the per-frame, per-face CSV: the base columns then ``p_<label>`` per label."""
    return CSV_COLUMNS_BASE + [f"p_{lab}" for lab in labels]


def csv_row(source: str, frame: int | None, t: float | None, face, labels: Sequence[str]) -> list:
    x, y, w, h = face.box
    return ([source, "" if frame is None else frame, "" if t is None else f"{t:.3f}",
             "" if face.track is None else face.track, x, y, w, h, face.emotion, f"{face.score:.4f}"]
            + [f"{face.probabilities.get(lab, 0.0):.4f}" for lab in labels])


def progress_bar(reader: "FrameReader", max_frames: int | None = None):
    """A tqdm bar over the frames ``reader`` will give (its total unknown for cameras and some files)."""
    from tqdm import tqdm

    total = reader.frame_count
    if total and max_frames:
        total = min(total, max_frames)
    return tqdm(total=total, desc=Path(reader.name).name, unit="frame", leave=False)


def process_video(source, analyzer, *, save_video: str | os.PathLike | None = None,
                  csv_writer=None, plot: str | os.PathLike | None = None, smoothing: float = 0.3,
                  max_frames: int | None = None, stride: int = 1, detect_every: int = 1,
                  on_frame: Callable[[FrameResult], None] | None = None, draw: bool = True,
                  progress: bool = False) -> VideoReport:
    """Run :func:`iter_video` over a whole video (or ``max_frames``), frame by frame, and

    - write the annotated video to ``save_video`` (boxes, labels, bars, emoji, track ids) when given,
    - write one CSV row per face per frame to ``csv_writer`` (a ``csv.writer``; header not written here),
    - save the emotion-over-time plot PNG to ``plot`` when given (needs matplotlib; else a note),
    - call ``on_frame(frame_result)`` for each frame (e.g. to print JSON lines).
    Returns a :class:`VideoReport` with the per-track summaries.
    """
    from .pipeline import draw_results

    reader = FrameReader(source, max_frames=max_frames, stride=stride)
    report = VideoReport(source=reader.name, fps=reader.fps)
    labels = list(analyzer.labels)
    timeline = Timeline(len(labels))
    sink = VideoSink(save_video, reader.fps / max(1, stride)) if save_video else None
    bar = progress_bar(reader, max_frames) if progress else None
    t0 = time.perf_counter()
    try:
        for fr in iter_video(reader, analyzer, smoothing=smoothing, detect_every=detect_every):
            report.frames += 1
            for f in fr.faces:
                summ = report.tracks.get(f.track)
                if summ is None:
                    summ = report.tracks[f.track] = TrackSummary(track=f.track)
                summ.add(fr.index, fr.time, f.emotion, f.probabilities)
                timeline.add(f.track, fr.time, [f.probabilities[k] for k in labels])
                if csv_writer is not None:
                    csv_writer.writerow(csv_row(report.source, fr.index, fr.time, f, labels))
            if sink is not None:
                sink.write(draw_results(fr.frame, fr.faces, labels=labels) if draw else fr.frame)
            if on_frame is not None:
                on_frame(fr)
            if bar is not None:
                bar.update(1)
    finally:
        if sink is not None:
            sink.close()
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - t0
    if sink is not None and sink.frames:
        report.outputs["video"] = str(sink.path)
    if plot:
        note = plot_timeline(timeline, labels, plot, title=Path(report.source).name)
        if note:
            report.notes.append(note)
        else:
            report.outputs["plot"] = str(plot)
    return report


def plot_timeline(timeline: Timeline, labels: Sequence[str], path: str | os.PathLike, *, title: str = "",
                  max_tracks: int = 4) -> str | None:
    """Save the emotion-over-time plot (one panel per track, the longest ``max_tracks`` tracks; a line per
    label of its smoothed probability). Returns None on success, else a note saying why nothing was saved."""
    tracks = timeline.tracks()
    if not tracks:
        return f"no face was tracked, so no emotion plot was written ({path})"
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: the emotion-over-time plot was skipped (pip install matplotlib)"
    from .pipeline import emotion_color

    tracks = sorted(tracks, key=lambda t: -len(timeline.series(t)[0]))[:max_tracks]
    fig, axes = plt.subplots(len(tracks), 1, figsize=(9, 2.3 * len(tracks) + 0.6), sharex=True, squeeze=False)
    for ax, tid in zip(axes[:, 0], tracks):
        t, p = timeline.series(tid)
        for k, lab in enumerate(labels):
            b, g, r = emotion_color(lab)
            ax.plot(t, p[:, k], color=(r / 255, g / 255, b / 255), label=lab, lw=1.4)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"track {tid}\nprobability")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(f"Emotions over time: {title}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return None


def open_csv(path: str | os.PathLike, labels: Sequence[str]):
    """Open ``path`` for the per-face CSV and write its header. Returns (file, csv.writer)."""
    from .io import open_text_output

    f = open_text_output(path, "--csv")
    w = csv.writer(f)
    w.writerow(CSV_COLUMNS(labels))
    return f, w
