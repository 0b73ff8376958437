"""Read labelled face images from folders.

Two layouts are recognised (folder names are case-insensitive):

* split layout, the form FER2013 is downloaded in today:
  ``<root>/train/<class>/*.png|jpg``, ``<root>/test/<class>/...`` and optionally ``<root>/val/<class>/...``
  (split folder synonyms: train|training, val|valid|validation|publictest, test|testing|privatetest);
* flat layout, any folder of labelled photos: ``<root>/<class>/*`` (sub-folders inside a class folder are
  searched too).

Class folder names map to ferkit's emotion names with common synonyms (angry/anger, happy/happiness,
sad/sadness, surprise/surprised, fear/fearful, disgust/disgusted, neutral, contempt); an unknown class
folder is an error that lists the folders found. ``class_map`` adds names of your own (e.g. RAF-DB's
numbered folders).

Each image is taken to be a face crop: it is decoded by :func:`ferkit.io.decode_image`, as the inference
path decodes photos (BGR, EXIF orientation applied, transparency over white, 16-bit scaled), converted
with :func:`ferkit.preprocess.to_gray` and resized to 48x48 (area interpolation when shrinking, linear when
enlarging, the same rule as ``prepare_faces``).
An image that cannot be decoded is an error naming the file, unless ``skip_bad`` is set; then it is
skipped and listed in ``FolderData.bad``. Files that are not images (by extension) are listed in
``FolderData.ignored``. Decoded arrays are cached like the CSV (key: the relative paths, classes, splits and
the sha256 of every file's bytes, which is also the data's fingerprint: a copied or touched folder is the
same data, an image with new pixels is not, whatever its size and date).
"""
from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import FerkitError
from ..labels import EMOTIONS
from ..preprocess import to_gray
from .fer2013 import default_cache_dir

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm"}
)

# Folder classes: the 7 FER2013 emotions in FER2013 id order, then contempt (FER+, CK+, AffectNet).
FOLDER_CLASSES: tuple[str, ...] = EMOTIONS + ("contempt",)

CLASS_SYNONYMS: dict[str, str] = {
    **{name: name for name in FOLDER_CLASSES},
    "anger": "angry", "mad": "angry",
    "disgusted": "disgust", "disgusting": "disgust",
    "fearful": "fear", "afraid": "fear", "scared": "fear",
    "happiness": "happy", "joy": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "neutrality": "neutral",
    "contemptuous": "contempt",
}

SPLIT_FOLDERS: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val",
    "test": "test", "testing": "test", "privatetest": "test",
}
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
CACHE_VERSION = 2  # 2: keyed by the files' contents (was: sizes and dates)


@dataclass
class FolderData:
    """Images read from a folder tree.

    images: uint8 (N, 48, 48); labels: int64 ids into ``FOLDER_CLASSES`` (0..6 = FER2013 ids, 7 = contempt);
    split: int8 (N,), 0 train / 1 val / 2 test, or -1 in the flat layout; paths: N paths relative to
    ``root`` (the row id of image i is i); layout: 'splits' or 'flat'; class_folders: folder name ->
    class name as found; bad: (relative path, reason) of undecodable images skipped with ``skip_bad``;
    ignored: relative paths of non-image files; fingerprint: sha256 over paths, classes, splits and file contents.
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    paths: list[str]
    root: str
    layout: str
    class_folders: dict[str, str]
    fingerprint: str
    bad: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def splits_present(self) -> tuple[str, ...]:
        return tuple(SPLIT_NAMES[k] for k in sorted(set(int(s) for s in self.split)) if k >= 0)


def _visible_dirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "__MACOSX")


def _class_name(folder: str, class_map: dict[str, str]) -> str | None:
    key = folder.strip().lower()
    if key in class_map:
        return class_map[key]
    return CLASS_SYNONYMS.get(key)


def _known_names_text() -> str:
    by_class: dict[str, list[str]] = {c: [] for c in FOLDER_CLASSES}
    for syn, c in CLASS_SYNONYMS.items():
        if syn != c:
            by_class[c].append(syn)
    return ", ".join(f"{c} ({'/'.join(s)})" if s else c for c, s in by_class.items())


def _walk_files(top: str, _seen: set | None = None):
    """Yield (path, DirEntry) of every visible file under ``top``, sorted, skipping hidden and __MACOSX folders.
    A symbolic link to a folder above it is not followed, and a folder reached twice is walked once."""
    seen = set() if _seen is None else _seen
    try:
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as e:
        raise FerkitError(f"cannot list folder {top}: {e.strerror or e}") from None
    for e in entries:
        if e.name.startswith(".") or e.name == "__MACOSX":
            continue
        try:
            is_dir, is_file = e.is_dir(), e.is_file()
        except OSError as err:
            raise FerkitError(f"cannot read {e.path}: {err.strerror or err}") from None
        if is_dir:
            if e.is_symlink():  # a link back up to a folder being walked would list its images again
                target, here = os.path.realpath(e.path), os.path.realpath(top)
                if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
                    continue
            yield from _walk_files(e.path, seen)
        elif is_file:
            yield e.path, e


def _scan_class_folders(parent: Path, root: Path, class_map: dict[str, str], where: str
                        ) -> tuple[list[tuple[str, int, int, int]], dict[str, str], list[str]]:
    """(relative image path, class id, size, mtime_ns) for every image under ``parent/<class>/``, plus the
    folder -> class map and the non-image files found."""
    dirs = _visible_dirs(parent)
    names = {d.name: _class_name(d.name, class_map) for d in dirs}
    unknown = [n for n, c in names.items() if c is None]
    if unknown:
        raise FerkitError(
            f"unknown class folder(s) {', '.join(repr(u) for u in unknown)} in {where}; folders found: "
            f"{', '.join(d.name for d in dirs)}. Class folders must be emotion names: {_known_names_text()} "
            "(from Python, prepare_splits(..., class_map={'1': 'surprise', ...}) maps other names). If the images "
            "sit one level deeper, point --data at that folder."
        )
    items: list[tuple[str, int, int, int]] = []
    ignored: list[str] = []
    for f in sorted(parent.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            ignored.append(f.relative_to(root).as_posix())
    for d in dirs:
        cid = FOLDER_CLASSES.index(names[d.name])  # type: ignore[arg-type]
        for path, entry in _walk_files(str(d)):
            rel = os.path.relpath(path, root).replace(os.sep, "/")  # also right for --data . (was: "gry/...")
            if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                st = entry.stat()
                items.append((rel, cid, st.st_size, st.st_mtime_ns))
            else:
                ignored.append(rel)
    return items, {d.name: names[d.name] for d in dirs}, ignored  # type: ignore[misc]


def scan_image_folder(root: str | os.PathLike, class_map: dict[str, str] | None = None
                      ) -> tuple[str, list[tuple[str, int, int, int, int]], dict[str, str], list[str]]:
    """Find the images without decoding them.

    Returns (layout, [(relative path, class id, split id, size in bytes, mtime_ns)], class folders, ignored files).
    """
    rootp = Path(root)
    if not rootp.is_dir():
        raise FerkitError(f"no such folder: {rootp}")
    cmap = {}
    for k, v in (class_map or {}).items():
        c = CLASS_SYNONYMS.get(str(v).strip().lower())
        if c is None:
            raise FerkitError(f"class_map maps {k!r} to {v!r}, which is not a class; use one of {', '.join(FOLDER_CLASSES)}")
        cmap[str(k).strip().lower()] = c
    dirs = _visible_dirs(rootp)
    if not dirs:
        raise FerkitError(f"{rootp} has no sub-folders; expected <root>/<class>/* or <root>/train|test/<class>/*")
    split_of = {d.name: SPLIT_FOLDERS.get(d.name.lower()) for d in dirs}
    items: list[tuple[str, int, int, int, int]] = []
    folders: dict[str, str] = {}
    ignored: list[str] = []
    if any(s is not None for s in split_of.values()):
        others = [n for n, s in split_of.items() if s is None]
        if others:
            raise FerkitError(
                f"{rootp} mixes split folders ({', '.join(n for n, s in split_of.items() if s)}) with other folders "
                f"({', '.join(others)}); expected only train|val|test folders (each holding class folders)"
            )
        seen: dict[str, str] = {}
        for d in dirs:
            s = split_of[d.name]
            if s in seen:
                raise FerkitError(f"{rootp} has two folders for the {s} split: {seen[s]!r} and {d.name!r}")
            seen[s] = d.name  # type: ignore[index]
            found, f, ign = _scan_class_folders(d, rootp, cmap, str(d))
            items += [(rel, cid, SPLIT_NAMES.index(s), size, mtime) for rel, cid, size, mtime in found]  # type: ignore[arg-type]
            folders.update({f"{d.name}/{k}": v for k, v in f.items()})
            ignored += ign
        if "train" not in seen:
            raise FerkitError(f"{rootp} has {', '.join(seen.values())} but no train folder")
        layout = "splits"
        for f in sorted(rootp.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                ignored.append(f.name)
    else:
        found, folders, ignored = _scan_class_folders(rootp, rootp, cmap, str(rootp))
        items = [(rel, cid, -1, size, mtime) for rel, cid, size, mtime in found]
        layout = "flat"
    if not items:
        raise FerkitError(f"no images found under {rootp} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return layout, items, folders, sorted(ignored)


def decode_face(data: bytes, size: int = 48) -> np.ndarray | None:
    """Encoded image bytes -> uint8 (size, size) gray face crop, or None when it cannot be decoded. Decoded by
    :func:`ferkit.io.decode_image`, as ``ferkit predict`` reads photos (upright, transparency over white,
    16-bit scaled)."""
    from ..io import decode_image

    if not data:
        return None
    try:
        img = decode_image(data)
    except FerkitError:
        return None
    gray = to_gray(img)
    if gray.shape != (size, size):
        interp = cv2.INTER_AREA if min(gray.shape) >= size else cv2.INTER_LINEAR
        gray = cv2.resize(gray, (size, size), interpolation=interp)
    return gray


def _read_one(path: str, size: int) -> tuple[np.ndarray | None, str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}"
    try:
        face = decode_face(data, size)
    except cv2.error as e:  # pragma: no cover - OpenCV raises on some damaged files instead of returning None
        return None, f"OpenCV cannot decode it: {str(e).strip().splitlines()[-1]}"
    if face is None:
        return None, "OpenCV cannot decode it (empty, truncated or not an image)"
    return face, ""


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return h.hexdigest()


def _fingerprint(items: list[tuple[str, int, int, int, int]], digests: list[str], size: int) -> str:
    """sha256 over every image's relative path, class, split and the sha256 of its bytes: the same for a copy
    of the folder or after `touch`, different as soon as one image changes (also with its size and date)."""
    text = "".join(f"{rel}\t{cid}\t{s}\t{d}\n" for (rel, cid, s, _, _), d in zip(items, digests))
    return hashlib.sha256(f"v{CACHE_VERSION} size={size}\n{text}".encode("utf-8", "surrogateescape")).hexdigest()


def load_image_folder(
    root: str | os.PathLike,
    *,
    skip_bad: bool = False,
    class_map: dict[str, str] | None = None,
    size: int = 48,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> FolderData:
    """Read every image under ``root`` (split or flat layout, see the module docstring) as a 48x48 gray face.

    An undecodable image raises :class:`FerkitError` naming it and counting all such files, unless
    ``skip_bad`` is set (then they are skipped and listed in ``FolderData.bad``).
    """
    rootp = Path(root)
    layout, items, folders, ignored = scan_image_folder(rootp, class_map)
    n_workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        digests = list(pool.map(lambda it: _file_digest(os.path.join(rootp, it[0])), items))
    digest = _fingerprint(items, digests, size)
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cfile = cdir / f"folder-{digest[:24]}.npz"
    images = None
    if cache and cfile.is_file():
        try:
            with np.load(cfile, allow_pickle=False) as z:
                if str(z["fingerprint"]) == digest:
                    images, ok = z["images"], z["ok"]
                    reasons = [str(r) for r in z["reasons"]]
        except (OSError, KeyError, ValueError, EOFError, zlib.error):
            images = None
    if images is None:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            results = list(pool.map(lambda it: _read_one(os.path.join(rootp, it[0]), size), items))
        ok = np.array([r[0] is not None for r in results], dtype=bool)
        images = np.zeros((len(items), size, size), np.uint8)
        for i, (face, _) in enumerate(results):
            if face is not None:
                images[i] = face
        reasons = [r[1] for r in results]
        if cache:
            try:
                cdir.mkdir(parents=True, exist_ok=True)
                tmp = cfile.with_name(cfile.name + f".tmp{os.getpid()}.npz")
                np.savez(tmp, images=images, ok=ok, reasons=np.array(reasons, dtype=str), fingerprint=np.array(digest))
                os.replace(tmp, cfile)
            except OSError:
                pass
    bad = [(items[i][0], reasons[i]) for i in np.flatnonzero(~ok)]
    if bad and not skip_bad:
        first = "; ".join(f"{p}: {r}" for p, r in bad[:3])
        raise FerkitError(f"{len(bad)} of {len(items)} images under {rootp} cannot be read ({first}"
                          f"{'; ...' if len(bad) > 3 else ''}); fix or remove them, or pass --skip-bad to skip and count them")
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        raise FerkitError(f"none of the {len(items)} images under {rootp} could be read")
    return FolderData(
        images=images[keep],
        labels=np.array([items[i][1] for i in keep], np.int64),
        split=np.array([items[i][2] for i in keep], np.int8),
        paths=[items[i][0] for i in keep],
        root=str(rootp),
        layout=layout,
        class_folders=folders,
        fingerprint=digest,
        bad=bad,
        ignored=ignored,
    )
