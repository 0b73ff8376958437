"""``ferkit live``: the camera loop with an emotion overlay and the frame rate.

    ferkit live --camera 0                     # a window (needs OpenCV with GUI support); q or Esc quits
    ferkit live --camera 0 --headless          # no window: one JSON object per face per line
    ferkit live --source clip.mp4 --headless --max-frames 100    # a video file stands in for the camera
"""
from __future__ import annotations

import sys

from .predict import add_analyzer_options

WINDOW = "ferkit live (q to quit)"
#: the live default for --detect-size: YuNet costs 70-80 ms on a 640x480 frame on a 2-core AMD EPYC (AVX2),
#: 28 ms at 400 px (35 frames/s with one face), while faces of 60 px are still found 93% of the time (99% at
#: full size) and faces of 90 px 99% (benchmarks/bench_inference.py, docs/bench_inference.txt)
LIVE_DETECT_SIZE = 400


def register(subparsers) -> None:
    p = subparsers.add_parser("live", help="live camera: faces and emotions with overlay and FPS",
                              description="Run the pipeline on a camera (or a video standing in for one).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, default=None, metavar="N", help="camera index (default 0)")
    src.add_argument("--source", default=None, metavar="VIDEO", help="a video file instead of a camera")
    add_analyzer_options(p, detect_size=LIVE_DETECT_SIZE)
    p.add_argument("--headless", action="store_true", help="no window: print one JSON object per face per line")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--save", default=None, metavar="FILE.mp4", help="also record the annotated stream")
    p.set_defaults(func=run)


def _open_window():
    import cv2

    from ..errors import FerkitError

    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise FerkitError(
            "this OpenCV build has no window support (opencv-python-headless); run with --headless for JSON "
            "lines, or install the GUI build: pip install opencv-python"
        ) from None


def run(args) -> int:
    import json
    import time

    import cv2

    from ..errors import FerkitError
    from ..io import Source
    from ..video import FrameReader, VideoSink, iter_video
    from .predict import _check_args, build_analyzer

    _check_args(args)
    if args.source is not None:
        source = Source("video", path=args.source)
        import os

        if not os.path.isfile(args.source):
            raise FerkitError(f"{args.source}: no such video file")
    else:
        source = Source("camera", camera=0 if args.camera is None else args.camera)
    if not args.headless:
        _open_window()
    analyzer = build_analyzer(args)
    reader = FrameReader(source, max_frames=args.max_frames)
    sink = VideoSink(args.save, reader.fps) if args.save else None
    out = sys.stdout
    fps = None
    frames = 0
    tracks: set[int] = set()
    last = time.perf_counter()
    t_start = last
    try:
        for fr in iter_video(reader, analyzer, smoothing=args.smoothing, detect_every=args.detect_every):
            now = time.perf_counter()
            dt = max(1e-6, now - last)
            last = now
            fps = 1.0 / dt if fps is None else 0.9 * fps + 0.1 / dt
            frames += 1
            tracks.update(f.track for f in fr.faces)
            if args.headless:
                for f in fr.faces:
                    out.write(json.dumps(f.to_dict(source=source.name, frame=fr.index, time=round(fr.time, 3),
                                                   fps=round(fps, 1))) + "\n")
                out.flush()
            if sink is not None or not args.headless:
                shown = analyzer.draw(fr.frame, fr.faces, caption=f"{fps:.1f} FPS")
                if sink is not None:
                    sink.write(shown)
                if not args.headless:
                    cv2.imshow(WINDOW, shown)
                    key = cv2.waitKey(1) & 0xFF
                    if key in (ord("q"), 27):
                        break
                    try:
                        if cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                            break
                    except cv2.error:
                        break
    finally:
        if sink is not None:
            sink.close()
        if not args.headless:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass
    elapsed = time.perf_counter() - t_start
    if frames == 0:
        raise FerkitError(f"{source.name}: no frame could be read")
    print(f"ferkit live: {frames} frames in {elapsed:.1f} s ({frames / max(elapsed, 1e-9):.1f} FPS), "
          f"{len(tracks)} tracked face(s)", file=sys.stderr)
    return 0
