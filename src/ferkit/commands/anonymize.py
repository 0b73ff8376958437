"""``ferkit anonymize SOURCE... --save DIR``: hide every face in photos, folders, globs, videos and cameras.

Each image is written under ``--save`` with its name (folders keep their sub-folder paths; images in a
format OpenCV cannot write become .png); each video becomes ``NAME.mp4`` (codec mp4v) with the input's
frame count and frame rate; a camera index N becomes ``cameraN.mp4`` (stop with Ctrl+C or --max-frames).
Sources are never overwritten: ``--save`` may not be a source folder or the folder of a source file. A
``--save`` folder inside a source folder is allowed; ferkit lists what it writes there in a hidden file
(``MANIFEST``) so that a later run skips those outputs, and refuses such a folder while it holds images or
videos ferkit did not write (originals that would be skipped and could be overwritten).

Output: one line per image (faces hidden) and a summary per video; ``--json``: one JSON object per image or
video; ``--csv FILE``: one row per hidden region (per frame for videos). A source that cannot be read is
reported on stderr in one line and the rest are processed; the exit code is then 1 (2: usage error).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

DETECTOR_CHOICES = ("auto", "yunet", "haar")
CSV_COLUMNS = ["source", "output", "frame", "kind", "x", "y", "w", "h", "face_x", "face_y", "face_w", "face_h",
               "score", "strength"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "anonymize", help="hide every face in photos, folders, videos (pixelate, blur or fill)",
        description="Find every face (low detection threshold, wide margins) and obfuscate it. SOURCE: image "
                    "files, folders (searched recursively), glob patterns (quote them), video files, or a "
                    "camera index (0). Sources are never modified; results go to --save DIR.",
        epilog="Pixelation and blur can be partly undone by a trained network (see docs/privacy.md); "
               "use --method fill where the face must really be gone.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--method", default="pixelate", metavar="M", help="pixelate (default), blur or fill")
    p.add_argument("--strength", type=float, default=None, metavar="S",
                   help="pixelate: mosaic cell size, blur: Gaussian sigma, both for a 48-px face and scaled to "
                        "each face (pixelate 8 = 6 cells across a face); fill: grey value 0..255. "
                        "Defaults: pixelate 8, blur 4, fill 0 (black)")
    p.add_argument("--absolute-strength", action="store_true",
                   help="the pixelate/blur strength is in image pixels, the same for every face")
    p.add_argument("--save", default=None, metavar="DIR", help="write the anonymised copies here (required "
                                                               "unless --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="find and count faces, write no images or videos")
    p.add_argument("--detector", default="auto", choices=DETECTOR_CHOICES,
                   help="face detector: yunet (CNN), haar (OpenCV cascade); auto = yunet if installed")
    p.add_argument("--confidence", type=float, default=None, metavar="C",
                   help="detection threshold 0..1 (default: 0.3 for yunet, 0.4 for haar, lower than predict's "
                        "0.5: a missed face is a leak)")
    p.add_argument("--margin", type=float, default=None, metavar="F",
                   help="widen each face box by F x its width/height on every side (default 0.25 for yunet, "
                        "0.45 for haar)")
    p.add_argument("--margin-top", type=float, default=None, metavar="F",
                   help="widen each face box upwards by F x its height more, for forehead and hair "
                        "(default 0.15 for yunet, 0.1 for haar)")
    p.add_argument("--pad", default=None, metavar="F[,F...]",
                   help="detection passes, each on the image with a border of F x its longer side; the faces of "
                        "all passes are hidden (default: 0,0.25 for yunet, 0.25 for haar; --pad 0 is faster)")
    p.add_argument("--upscale", type=float, default=1.0, metavar="K",
                   help="one more detection pass on the image enlarged K times (2 finds faces under ~40 px; "
                        "about 4x slower; default 1 = off)")
    p.add_argument("--min-face", type=int, default=0, metavar="N", help="ignore faces smaller than N pixels "
                                                                        "(default 0: hide every face)")
    p.add_argument("--hold", type=int, default=None, metavar="N",
                   help="videos: keep a face hidden N frames after and before the detector saw it (default 8)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="videos/cameras: stop after N frames")
    p.add_argument("--json", action="store_true", help="one JSON object per image/video on stdout")
    p.add_argument("--csv", default=None, metavar="FILE", help="write one row per hidden region (per frame for videos)")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="folders: not their sub-folders")
    p.add_argument("--quiet", action="store_true", help="no progress bar or closing summary on stderr")
    p.set_defaults(func=run)


def build_anonymizer(args):
    from ..privacy.anonymize import DEFAULT_HOLD_FRAMES, Anonymizer

    return Anonymizer(
        args.method, args.strength, relative_strength=not args.absolute_strength, detector=args.detector,
        confidence=args.confidence, min_face=args.min_face, pad=_parse_pads(args.pad), upscale=args.upscale,
        margin=args.margin, margin_top=args.margin_top,
        hold_frames=DEFAULT_HOLD_FRAMES if args.hold is None else args.hold,
    )


def _parse_pads(text):
    from ..errors import FerkitError

    if text is None:
        return None
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise FerkitError(f"--pad takes numbers separated by commas (e.g. 0,0.25), got {text!r}") from None


def _check_args(args) -> None:
    from ..errors import FerkitError
    from ..privacy.obfuscate import DEFAULT_STRENGTH, METHODS, check_method

    method = str(args.method).lower()
    if method not in METHODS:
        raise FerkitError(f"unknown --method {args.method!r}; choose one of {', '.join(METHODS)}")
    args.method = method
    check_method(method, DEFAULT_STRENGTH[method] if args.strength is None else args.strength)
    if args.save is None and not args.dry_run:
        raise FerkitError("say where to write the anonymised copies: --save DIR (or --dry-run to only count faces)")
    if args.confidence is not None and not 0.0 <= args.confidence <= 1.0:
        raise FerkitError(f"--confidence must be between 0 and 1, got {args.confidence}")
    if args.min_face < 0:
        raise FerkitError(f"--min-face must be >= 0 pixels, got {args.min_face}")
    if args.hold is not None and args.hold < 0:
        raise FerkitError(f"--hold must be >= 0 frames, got {args.hold}")
    if args.max_frames is not None and args.max_frames < 1:
        raise FerkitError(f"--max-frames must be at least 1, got {args.max_frames}")


# ------------------------------------------------------------------------------------ planning outputs
def _glob_root(spec: str):
    """The folder part of a glob pattern before its first wildcard (outputs keep paths relative to it)."""
    import glob
    import os
    from pathlib import Path

    parts = Path(spec).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(os.curdir)


def _inside(path, folder) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


#: in a --save folder that lies inside a source folder: the outputs ferkit wrote there, one relative path a line
MANIFEST = ".ferkit-anonymize-outputs"


@dataclass
class Plan:
    items: list  # (Source, relative output path or None for a camera)
    errors: list  # (spec, message) for the parts that name nothing
    skipped: int  # files that are neither images nor videos, or lie inside --save
    inside_save: list  # the image and video files found inside --save (a folder inside a source folder)
    save_in_source: bool = False  # --save lies inside a source folder: a later run lists its outputs as sources


def plan(specs, save, recursive: bool = True) -> Plan:
    """Sources and where each goes (:class:`Plan`). Media files that already lie inside ``save`` (when it is
    inside a source folder) are not sources: they are listed in ``inside_save``. Raises FerkitError when
    ``save`` is a source folder, a source file or a source file's folder (the outputs would overwrite the
    originals)."""
    import os
    from pathlib import Path

    from ..errors import FerkitError
    from ..io import expand_sources

    save_r = Path(save).resolve() if save is not None else None
    items, errors, skipped, inside, in_source = [], [], 0, [], False
    for spec in specs:
        s = os.fspath(spec)
        p = Path(s)
        if save_r is not None and p.exists():
            pr = p.resolve()
            if p.is_dir() and pr == save_r:
                raise FerkitError(f"--save {save} is the source folder {s}: the originals would be overwritten; "
                                  "choose another folder")
            if p.is_file() and (pr == save_r or pr.parent == save_r):
                raise FerkitError(f"--save {save} is the folder of the source {s}: the original would be "
                                  "overwritten; choose another folder")
        exp = expand_sources([s], recursive=recursive)
        errors.extend(exp.errors)
        skipped += exp.skipped
        if p.is_dir():
            root = p
        elif p.is_file():
            root = p.parent
        else:
            root = _glob_root(s)
        if save_r is not None and not p.is_file() and _inside(save_r, root.resolve()):
            in_source = True
        for src in exp.sources:
            if src.kind == "camera":
                items.append((src, None))
                continue
            sp = Path(src.path)
            if save_r is not None and _inside(sp.resolve(), save_r):
                skipped += 1  # an earlier run's output (or an original: run() checks MANIFEST)
                inside.append(sp.resolve())
                continue
            try:
                rel = sp.relative_to(root) if p.is_dir() or not p.exists() else Path(sp.name)
            except ValueError:
                rel = Path(sp.name)
            items.append((src, rel))
    return Plan(items, errors, skipped, inside, in_source)


def _read_manifest(folder) -> list[str]:
    try:
        return (folder / MANIFEST).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return []


class _Manifest:
    """The outputs ferkit wrote into a --save folder (see MANIFEST): read once; ``add`` records a new one."""

    def __init__(self, save):
        from pathlib import Path

        self.save = save
        self.folder = Path(save).resolve()
        self.listed = set(_read_manifest(self.folder))

    def refuse_foreign(self, inside) -> None:
        """Refuse a --save folder inside a source folder that already holds images or videos ferkit did not
        write there (they are originals: they would be neither anonymised nor safe from being overwritten)."""
        from ..errors import FerkitError

        foreign = [p for p in inside if p.relative_to(self.folder).as_posix() not in self.listed]
        if foreign:
            raise FerkitError(
                f"--save {self.save} lies inside a source folder and already holds {len(foreign)} image/video "
                f"file(s) that ferkit anonymize did not write there (e.g. {foreign[0].relative_to(self.folder)}): "
                "they would be neither anonymised nor safe from being overwritten; choose an empty folder or one "
                "outside the sources")

    def add(self, dest) -> None:
        from pathlib import Path

        self.folder.mkdir(parents=True, exist_ok=True)
        rel = Path(dest).resolve().relative_to(self.folder).as_posix()
        if rel not in self.listed:
            with open(self.folder / MANIFEST, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(rel + "\n")
            self.listed.add(rel)


class _Outputs:
    """Output paths under --save: the planned relative path (videos: .mp4; unwritable image formats: .png),
    made unique within this run, never a source file."""

    def __init__(self, folder):
        from pathlib import Path

        self.folder = Path(folder)
        self.used: set = set()

    def __call__(self, rel, kind: str, source_path: str | None):
        from pathlib import Path

        from ..privacy.anonymize import IMAGE_WRITE_EXTS

        rel = Path(rel)
        if kind in ("video", "camera"):
            rel = rel.with_suffix(".mp4")
        elif rel.suffix.lower() not in IMAGE_WRITE_EXTS:
            rel = rel.with_suffix(".png")
        cand = self.folder / rel
        src = Path(source_path).resolve() if source_path else None
        k = 2
        while cand.resolve() in self.used or (src is not None and cand.resolve() == src):
            cand = self.folder / rel.with_name(f"{rel.stem}-{k}{rel.suffix}")
            k += 1
        self.used.add(cand.resolve())
        return cand


# ------------------------------------------------------------------------------------------ running
def run(args) -> int:
    import csv
    import json

    from ..errors import FerkitError
    from ..io import make_output_folder, open_text_output

    _check_args(args)
    anon = build_anonymizer(args)  # checks every setting before anything is read or written
    save = None if args.dry_run else args.save
    planned = plan(args.sources, save, recursive=args.recursive)
    items, errors, skipped = planned.items, planned.errors, planned.skipped
    manifest = None
    if save is not None:
        known = _Manifest(save)
        known.refuse_foreign(planned.inside_save)
        manifest = known if planned.save_in_source else None  # outputs are recorded where a rerun meets them
    failed = 0
    for _, msg in errors:
        print(f"ferkit: error: {msg}", file=sys.stderr)
        failed += 1
    if skipped and not args.quiet:
        print(f"ferkit: note: skipped {skipped} file(s) that are neither images nor videos, or lie inside --save",
              file=sys.stderr)
    if not items:
        if failed:
            return 1
        raise FerkitError("no sources to anonymise")

    outputs = None
    if save is not None:
        make_output_folder(save)
        outputs = _Outputs(save)
    csv_file = csv_writer = None
    if args.csv:
        csv_file = open_text_output(args.csv, "--csv")
        csv_writer = csv.writer(csv_file)
        csv_writer.writerow(CSV_COLUMNS)
    out = sys.stdout
    name_w = min(48, max([len(s.name) for s, _ in items] + [6]))

    def short(name: str) -> str:
        return name if len(name) <= name_w else "..." + name[-(name_w - 3):]

    header_done = False
    n_images = n_with_face = n_faces = 0
    try:
        for src, rel in items:
            dest = None
            if outputs is not None:
                dest = outputs(rel if rel is not None else f"camera{src.camera}", src.kind, src.path)
                if manifest is not None:
                    manifest.add(dest)  # before writing: even a partial output is ferkit's, not an original
            if src.kind != "image":
                failed += _run_stream(src, dest, anon, args, csv_writer, out)
                continue
            try:
                if dest is not None:
                    result = anon.anonymize_file(src.path, dest)
                else:
                    from ..io import read_image

                    result = anon.anonymize(read_image(src.path), inplace=True)
            except FerkitError as e:
                print(f"ferkit: error: {e}", file=sys.stderr)
                failed += 1
                continue
            n_images += 1
            n_faces += result.faces
            n_with_face += result.faces > 0
            shown_dest = str(dest) if dest is not None else None
            if args.json:
                out.write(json.dumps(result.to_dict(source=src.name, output=shown_dest)) + "\n")
            else:
                if not header_done:
                    print(f"{'source':<{name_w}}  {'faces':>5}  output", file=out)
                    header_done = True
                print(f"{short(src.name):<{name_w}}  {result.faces:>5}  {shown_dest or '-'}", file=out)
            if csv_writer is not None:
                h, w = result.image.shape[:2]
                for r in result.regions:
                    csv_writer.writerow(_csv_row(src.name, shown_dest, None, r, w, h))
            out.flush()
    finally:
        if csv_file is not None:
            csv_file.close()
    if not args.quiet and n_images:
        print(f"ferkit: {n_images} image(s), {n_with_face} with a face, {n_faces} face(s) hidden"
              + (f", {failed} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _csv_row(source, output, frame, region, width, height) -> list:
    box = region.clipped(width, height) or (0, 0, 0, 0)
    fx, fy, fw, fh = region.face_box
    return [source, output or "", "" if frame is None else frame, region.kind, *box, fx, fy, fw, fh,
            f"{region.score:.4f}", f"{region.strength:.3f}"]


def _run_stream(src, dest, anon, args, csv_writer, out) -> int:
    """A video file or camera. Returns 1 when it failed, else 0."""
    import json

    from ..errors import FerkitError

    def on_frame(fr):
        if csv_writer is not None:
            h, w = fr.image.shape[:2]
            for r in fr.regions:
                csv_writer.writerow(_csv_row(src.name, str(dest) if dest else None, fr.index, r, w, h))

    try:
        report = anon.anonymize_video(src if src.kind == "camera" else src.path, dest, max_frames=args.max_frames,
                                      on_frame=on_frame, progress=not args.quiet and sys.stderr.isatty())
    except FerkitError as e:
        print(f"ferkit: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        out.write(json.dumps(report.to_dict()) + "\n")
    else:
        held = f" (incl. {report.held} held from neighbouring frames)" if report.held else ""
        print(f"{src.name}: {report.frames} frames at {report.fps:.1f} fps, {report.frames_with_faces} with a face, "
              f"{report.faces_detected} face(s) detected, {report.regions_hidden} region(s) hidden{held}, "
              f"at most {report.max_per_frame} in one frame" + (f" -> {report.output}" if report.output else ""),
              file=out)
    out.flush()
    if report.interrupted and not args.quiet:
        print(f"ferkit: note: {src.name}: stopped after {report.frames} frames", file=sys.stderr)
    return 0
