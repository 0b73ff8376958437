"""``ferkit predict SOURCE...``: emotions of every face in photos, folders, globs, videos and cameras.

Output: a table (one row per face) by default; ``--json``: one JSON object per face per line; ``--csv
FILE``: one row per face (per frame for videos); ``--save DIR``: annotated copies of images and videos
(+ an emotion-over-time plot and a per-track summary JSON for each video). A source that cannot be read is
reported on stderr in one line and the rest are processed; the exit code is then 1 (2: usage error).
"""
from __future__ import annotations

import argparse
import sys

DETECTOR_CHOICES = ("auto", "yunet", "haar", "none")


MIN_DETECT_SIZE = 64  # a floor against slips: at 64 px the faces of a 640x480 frame are a few pixels wide


def add_analyzer_options(p: argparse.ArgumentParser, detect_size: int = 960) -> None:  # 960 = faces.DEFAULT_MAX_SIDE
    """Options shared by ``predict`` and ``live``: model, detector, face filters, detection size (its default
    differs: 960 for photos and videos, smaller for the live camera's frame rate)."""
    p.add_argument("--model", default=None, help="an .onnx written by `ferkit export`, or a bundled model name "
                                                 "(default: the bundled model)")
    p.add_argument("--detector", default="auto", choices=DETECTOR_CHOICES,
                   help="face detector: yunet (CNN, libfacedetection), haar (OpenCV cascade); auto = yunet if installed; "
                        "none = no detection, each image is one face (for images that are face crops already)")
    p.add_argument("--largest", action="store_true", help="only the largest face of each image/frame")
    p.add_argument("--min-face", type=int, default=0, metavar="N", help="ignore faces smaller than N pixels")
    p.add_argument("--confidence", type=float, default=None, metavar="C",
                   help="detector confidence threshold 0..1 (default: the detector's own)")
    al = p.add_mutually_exclusive_group()
    al.add_argument("--align", dest="align", action="store_true", default=None,
                    help="rotate faces so the eyes are level (needs landmarks: yunet)")
    al.add_argument("--no-align", dest="align", action="store_false", help="never rotate faces")
    p.add_argument("--smoothing", type=float, default=0.3, metavar="S",
                   help="videos: half-life in seconds of the probability smoothing per face (0 = off)")
    p.add_argument("--detect-every", type=int, default=1, metavar="K",
                   help="videos and cameras: look for faces on every K-th frame only and reuse the boxes between "
                        "(emotions are still read on every frame); about K times faster where detection dominates")
    p.add_argument("--detect-size", type=int, default=detect_size, metavar="PIXELS",
                   help="find faces on a copy downscaled so its longer side is at most PIXELS (0: full size; "
                        f"default {detect_size}); smaller is faster but misses small faces (docs/inference.md)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="emotions of the faces in photos, folders, videos, cameras",
        description="Find every face and its emotion. SOURCE: image files, folders (searched recursively), "
                    "glob patterns (quote them), video files, or a camera index (0).",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    add_analyzer_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per face per line on stdout")
    p.add_argument("--csv", default=None, metavar="FILE", help="write one row per face (per frame for videos)")
    p.add_argument("--save", default=None, metavar="DIR", help="write annotated copies of images and videos here")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="videos/cameras: stop after N frames")
    p.add_argument("--stride", type=int, default=1, metavar="K", help="videos: analyse every K-th frame")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="folders: not their sub-folders")
    p.add_argument("--quiet", action="store_true", help="no progress bar or closing summary on stderr")
    p.set_defaults(func=run)


def build_analyzer(args):
    from ..pipeline import Analyzer

    return Analyzer(args.model, detector=args.detector, min_face=args.min_face, confidence=args.confidence,
                    largest_only=args.largest, align=args.align, max_side=args.detect_size or None)


def _check_args(args) -> None:
    from ..errors import FerkitError

    if args.min_face < 0:
        raise FerkitError(f"--min-face must be >= 0 pixels, got {args.min_face}")
    if args.confidence is not None and not 0.0 <= args.confidence <= 1.0:
        raise FerkitError(f"--confidence must be between 0 and 1, got {args.confidence}")
    if args.smoothing < 0:
        raise FerkitError(f"--smoothing must be >= 0 seconds, got {args.smoothing}")
    if args.detect_size != 0 and args.detect_size < MIN_DETECT_SIZE:
        raise FerkitError(f"--detect-size must be 0 (full size) or at least {MIN_DETECT_SIZE} pixels, "
                          f"got {args.detect_size}")
    if getattr(args, "max_frames", None) is not None and args.max_frames < 1:
        raise FerkitError(f"--max-frames must be at least 1, got {args.max_frames}")
    if getattr(args, "stride", 1) < 1:
        raise FerkitError(f"--stride must be >= 1, got {args.stride}")
    if args.detect_every < 1:
        raise FerkitError(f"--detect-every must be >= 1, got {args.detect_every}")


class _Namer:
    """Output file names in the --save folder: the source's name, made unique within the run, and never the
    name of a source of this run (a --save folder that holds sources must not lose them)."""

    def __init__(self, folder, sources=()):
        from pathlib import Path

        self.folder = Path(folder)
        self.used: set[Path] = {Path(p).resolve() for p in sources if p}

    def __call__(self, source_path: str, suffix: str, tag: str = "") -> str:
        from pathlib import Path

        stem = Path(source_path).stem + tag
        cand = self.folder / f"{stem}{suffix}"
        k = 2
        while cand.resolve() in self.used:
            cand = self.folder / f"{stem}-{k}{suffix}"
            k += 1
        self.used.add(cand.resolve())
        return str(cand)


def run(args) -> int:
    import json
    import os

    from ..errors import FerkitError
    from ..io import IMAGE_WRITE_EXTS, expand_sources, make_output_folder, read_image, write_image
    from ..video import csv_row, open_csv

    _check_args(args)
    exp = expand_sources(args.sources, recursive=args.recursive)
    failed = 0
    for _, msg in exp.errors:
        print(f"ferkit: error: {msg}", file=sys.stderr)
        failed += 1
    if exp.skipped and not args.quiet:
        print(f"ferkit: note: skipped {exp.skipped} file(s) that are neither images nor videos", file=sys.stderr)
    if not exp.sources:
        if failed:
            return 1
        raise FerkitError("no sources to analyse")

    analyzer = build_analyzer(args)
    labels = list(analyzer.labels)
    namer = None
    if args.save:
        make_output_folder(args.save)
        namer = _Namer(args.save, [src.path for src in exp.sources])
    csv_file, csv_writer = open_csv(args.csv, labels) if args.csv else (None, None)
    out = sys.stdout

    name_w = min(48, max([len(s.name) for s in exp.sources] + [6]))
    header_done = False

    def table_header():
        nonlocal header_done
        if not header_done and not args.json:
            print(f"{'source':<{name_w}}  {'face':>4}  {'box (x, y, w, h)':<22}  {'emotion':<9}  {'prob':>5}", file=out)
            header_done = True

    def short(name: str) -> str:
        return name if len(name) <= name_w else "..." + name[-(name_w - 3):]

    n_images = n_faces = n_faceless = 0
    tally: dict[str, int] = {}
    try:
        for src in exp.sources:
            if src.kind == "image":
                try:
                    img = read_image(src.path)
                    faces = analyzer.analyze(img)
                except FerkitError as e:
                    print(f"ferkit: error: {e}", file=sys.stderr)
                    failed += 1
                    continue
                n_images += 1
                n_faces += len(faces)
                n_faceless += not faces
                for f in faces:
                    tally[f.emotion] = tally.get(f.emotion, 0) + 1
                if args.json:
                    for f in faces:
                        out.write(json.dumps(f.to_dict(source=src.name)) + "\n")
                else:
                    table_header()
                    if not faces:
                        print(f"{short(src.name):<{name_w}}  {'-':>4}  {'(no face)':<22}", file=out)
                    for i, f in enumerate(faces, 1):
                        box = "({}, {}, {}, {})".format(*f.box)
                        print(f"{short(src.name):<{name_w}}  {i:>4}  {box:<22}  {f.emotion:<9}  {f.score:5.2f}", file=out)
                if csv_writer is not None:
                    for f in faces:
                        csv_writer.writerow(csv_row(src.name, None, None, f, labels))
                if namer is not None:
                    ext = os.path.splitext(src.path)[1].lower()
                    if ext not in IMAGE_WRITE_EXTS:
                        ext = ".png"
                    try:
                        write_image(namer(src.path, ext), analyzer.draw(img, faces))
                    except FerkitError as e:
                        print(f"ferkit: error: {e}", file=sys.stderr)
                        failed += 1
                out.flush()
            else:
                failed += _run_stream(src, analyzer, args, labels, namer, csv_writer, out)
    finally:
        if csv_file is not None:
            csv_file.close()
    if not args.quiet and n_images:
        counts = ", ".join(f"{lab} {tally[lab]}" for lab in sorted(tally, key=lambda k: (-tally[k], labels.index(k))))
        print(f"ferkit: {n_images} image(s), {n_faces} face(s)" + (f" ({counts})" if counts else "")
              + (f", {n_faceless} image(s) without a face" if n_faceless else "")
              + (f", {failed} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _run_stream(src, analyzer, args, labels, namer, csv_writer, out) -> int:
    """A video file or camera. Returns 1 when it failed, else 0."""
    import json

    from ..errors import FerkitError
    from ..video import process_video

    save_video = plot = None
    if namer is not None:
        save_video = namer(src.name if src.path else f"camera{src.camera}", ".mp4", "_annotated")
        plot = namer(src.name if src.path else f"camera{src.camera}", ".png", "_emotions")

    def on_frame(fr):
        if args.json:
            for f in fr.faces:
                out.write(json.dumps(f.to_dict(source=src.name, frame=fr.index, time=round(fr.time, 3))) + "\n")
            out.flush()

    try:
        report = process_video(src if src.kind == "camera" else src.path, analyzer, save_video=save_video,
                               csv_writer=csv_writer, plot=plot, smoothing=args.smoothing,
                               max_frames=args.max_frames, stride=args.stride, detect_every=args.detect_every,
                               on_frame=on_frame,
                               progress=not args.quiet and sys.stderr.isatty())
    except FerkitError as e:
        print(f"ferkit: error: {e}", file=sys.stderr)
        return 1
    if report.frames == 0:
        print(f"ferkit: error: {src.name}: no frame could be read (empty or corrupt video)", file=sys.stderr)
        return 1
    if namer is not None:
        summary_path = namer(src.name if src.path else f"camera{src.camera}", ".json", "_summary")
        with open(summary_path, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    if not args.json:
        print(f"\n{src.name}: {report.frames} frames at {report.fps:.1f} fps, {len(report.tracks)} tracked face(s), "
              f"processed at {report.processing_fps:.1f} frames/s", file=out)
        if report.tracks:
            print(f"{'track':>5}  {'frames':>6}  {'from s':>7}  {'to s':>7}  {'dominant':<9}  shares", file=out)
            for tid, t in sorted(report.tracks.items()):
                shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(t.shares.items(), key=lambda kv: -kv[1]) if v > 0)
                print(f"{tid:>5}  {t.frames:>6}  {t.first_time:7.2f}  {t.last_time:7.2f}  {t.dominant or '-':<9}  {shares}",
                      file=out)
        out.flush()
    for note in report.notes:
        if not args.quiet:
            print(f"ferkit: note: {note}", file=sys.stderr)
    return 0
