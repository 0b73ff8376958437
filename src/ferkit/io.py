"""Reading images and expanding sources (files, folders, globs, videos, camera indices).

:func:`read_image` returns an 8-bit BGR array for any JPEG, PNG, WebP, BMP, TIFF (and the other formats
OpenCV decodes): grayscale and 16-bit images are converted, transparent pixels of RGBA images are
composited over white, and the EXIF orientation tag (JPEG, PNG, WebP, TIFF) is honoured so the image is
upright, as a photo viewer shows it. A missing, empty, truncated or undecodable file raises
:class:`~ferkit.errors.FerkitError` with a one-line message.

:func:`expand_sources` turns what a user typed (``photo.jpg``, ``photos/``, ``"shots/*.png"``,
``clip.mp4``, ``0``, ``https://.../photo.jpg``) into a list of :class:`Source` plus the errors for the parts that name nothing.
"""
from __future__ import annotations

import glob as _glob
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from .errors import FerkitError

IMAGE_EXTS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .webp .bmp .dib .tif .tiff .pgm .ppm .pbm .pnm .pxm .sr .ras .jp2 .gif".split()
)
VIDEO_EXTS = frozenset(".mp4 .m4v .avi .mov .mkv .webm .mpg .mpeg .wmv .flv .3gp .ts .mts .ogv".split())


# ----------------------------------------------------------------------------------------------- EXIF
def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in a TIFF-structured blob (EXIF payload or a TIFF file); 1 if absent."""
    if len(tiff) < 8:
        return 1
    order = tiff[:2]
    if order == b"II":
        e = "<"
    elif order == b"MM":
        e = ">"
    else:
        return 1
    try:
        (magic,) = struct.unpack(e + "H", tiff[2:4])
        if magic != 42:
            return 1
        (ifd,) = struct.unpack(e + "I", tiff[4:8])
        (count,) = struct.unpack(e + "H", tiff[ifd:ifd + 2])
        for i in range(min(count, 512)):
            off = ifd + 2 + 12 * i
            tag, typ = struct.unpack(e + "HH", tiff[off:off + 4])
            if tag == 0x0112:
                if typ == 3:  # SHORT
                    (val,) = struct.unpack(e + "H", tiff[off + 8:off + 10])
                elif typ == 4:  # LONG
                    (val,) = struct.unpack(e + "I", tiff[off + 8:off + 12])
                else:
                    return 1
                return int(val) if 1 <= val <= 8 else 1
    except (struct.error, IndexError):
        return 1
    return 1


def _walk_jpeg(data: bytes) -> tuple[bool, bytes | None]:
    """Walk a JPEG's marker segments. Returns (complete, exif payload or None).

    ``complete`` is False when the data ends before the End-Of-Image marker (a truncated download or copy);
    bytes after EOI (e.g. a motion photo's video) are ignored.
    """
    n = len(data)
    pos = 2
    exif = None
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            return False, exif
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            return True, exif
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        if pos + 4 > n:
            return False, exif
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        seg_end = pos + 2 + length
        if length < 2 or seg_end > n:
            return False, exif
        if marker == 0xE1 and exif is None and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            exif = data[pos + 10:seg_end]
        pos = seg_end
        if marker == 0xDA:  # start of scan: entropy-coded data until the next real marker
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    return False, exif
                nxt = data[pos + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                    pos += 1 if nxt == 0xFF else 2
                    continue
                break
    return False, exif


def _png_exif(data: bytes) -> bytes | None:
    pos = 8
    n = len(data)
    while pos + 8 <= n:
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        if ctype == b"eXIf":
            return data[pos + 8:pos + 8 + length]
        if ctype == b"IDAT" or ctype == b"IEND":
            return None  # eXIf must come before the image data
        pos += 12 + length
    return None


def _webp_exif(data: bytes) -> bytes | None:
    pos = 12
    n = len(data)
    while pos + 8 <= n:
        ctype = data[pos:pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4:pos + 8])
        if ctype == b"EXIF":
            blob = data[pos + 8:pos + 8 + length]
            return blob[6:] if blob.startswith(b"Exif\x00\x00") else blob
        pos += 8 + length + (length & 1)
    return None


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1..8, 1 = upright) of an encoded image; 1 when it has none."""
    if data[:2] == b"\xff\xd8":
        exif = _walk_jpeg(data)[1]
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        exif = _png_exif(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        exif = _webp_exif(data)
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        exif = data
    else:
        exif = None
    return _tiff_orientation(exif) if exif else 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF ``orientation`` (1..8) upright."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:  # transpose (mirror along the main diagonal)
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:  # transverse (mirror along the anti-diagonal)
        return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


# -------------------------------------------------------------------------------------------- images
def to_bgr8(img: np.ndarray, background: int = 255) -> np.ndarray:
    """A decoded image of any depth and channel count -> uint8 BGR (H, W, 3).

    16-bit is scaled to 8 bits (value / 257), floats in 0..1 to 0..255; alpha is composited over a
    ``background`` gray level (white by default).
    """
    if img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=1.0 / 257.0)
    elif img.dtype.kind == "f":
        finite = np.nan_to_num(img.astype(np.float32))
        peak = float(finite.max()) if finite.size else 1.0
        img = np.clip(finite * (255.0 if peak <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    c = img.shape[2]
    if c == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if c == 2:  # gray + alpha
        gray, alpha = img[:, :, 0], img[:, :, 1]
        img = np.dstack([gray, gray, gray, alpha])
        c = 4
    if c == 3:
        return img
    if c == 4:
        alpha = img[:, :, 3:4].astype(np.float32) * (1.0 / 255.0)
        out = img[:, :, :3].astype(np.float32) * alpha + float(background) * (1.0 - alpha)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    raise FerkitError(f"unsupported image with {c} channels")


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded image bytes -> upright uint8 BGR (H, W, 3). ``name`` is used in error messages."""
    if not data:
        raise FerkitError(f"{name}: the file is empty (0 bytes); it is not an image")
    if data[:2] == b"\xff\xd8":
        complete, _ = _walk_jpeg(data)
        if not complete:
            raise FerkitError(f"{name}: the JPEG is truncated or corrupt (no end-of-image marker); re-copy or re-export it")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise FerkitError(
            f"{name}: cannot decode the file as an image (corrupt, or not an image; supported: JPEG, PNG, WebP, BMP, TIFF)"
        )
    if data[:4] not in (b"II*\x00", b"MM\x00*"):  # OpenCV's TIFF decoder turns TIFFs upright itself
        img = apply_orientation(img, exif_orientation(data))
    return np.ascontiguousarray(to_bgr8(img))


#: the image formats :func:`write_image` writes (``--save`` turns other formats into .png)
IMAGE_WRITE_EXTS = frozenset(".jpg .jpeg .jpe .png .webp .bmp .tif .tiff".split())


def write_image(path: str | os.PathLike, image: np.ndarray, *, jpeg_quality: int = 95) -> None:
    """Write ``image`` (uint8 BGR or gray) to ``path``, creating its folder; the format follows the extension.

    The image is encoded in memory and its bytes written by Python, so any file name the system accepts
    works (OpenCV's own file functions crash on names that are not valid UTF-8). Raises
    :class:`~ferkit.errors.FerkitError` when the format is not one of :data:`IMAGE_WRITE_EXTS` or the file
    cannot be written.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in IMAGE_WRITE_EXTS:
        raise FerkitError(f"cannot write {p}: unknown image extension {ext or '(none)'!r}; "
                          f"use one of {' '.join(sorted(IMAGE_WRITE_EXTS))}")
    params: list[int] = []
    if ext in (".jpg", ".jpeg", ".jpe"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(jpeg_quality)]
    try:
        ok, encoded = cv2.imencode(ext, image, params)
    except cv2.error:
        ok = False
    if not ok:
        raise FerkitError(f"cannot write {p}: OpenCV could not encode the image as {ext}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encoded.tobytes())
    except OSError as e:
        raise FerkitError(f"cannot write {p}: {e.strerror or e}") from None


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` (or ``path`` itself) that exists and is not a folder, if any."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def make_output_folder(folder: str | os.PathLike, what: str = "--save") -> None:
    """Create an output folder (``--save``), or say in one line why it cannot be."""
    p = Path(folder)
    blocker = _file_in_the_way(p)
    if blocker == p:
        raise FerkitError(f"{what} {p} is a file; give a folder")
    if blocker is not None:
        raise FerkitError(f"{what} {p}: cannot create the folder, {blocker} is a file")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FerkitError(f"{what} {p}: cannot create the folder ({e.strerror or e})") from None


def open_text_output(path: str | os.PathLike, what: str = "output"):
    """Open ``path`` for writing text (a CSV or a report), creating its folder; one-line
    :class:`~ferkit.errors.FerkitError` naming ``what`` (e.g. ``--csv``) when it cannot."""
    p = Path(path)
    if p.is_dir():
        raise FerkitError(f"{what} {p} is a folder; give a file name")
    make_output_folder(p.parent, f"{what} {p}: its folder")
    try:
        return open(p, "w", newline="")
    except OSError as e:
        raise FerkitError(f"{what} {p}: cannot write the file ({e.strerror or e})") from None


#: the largest image fetched from a URL (bytes), and the seconds allowed for it
URL_MAX_BYTES = 20 * 1024 * 1024
URL_TIMEOUT_S = 15.0


def is_url(spec) -> bool:
    """True for an ``http://`` or ``https://`` address (what :func:`read_image` fetches)."""
    return isinstance(spec, str) and spec[:8].lower().startswith(("http://", "https://"))


def fetch_url(url: str, max_bytes: int | None = None, timeout: float | None = None) -> bytes:
    """The body of ``url`` (http or https; redirects followed), at most ``max_bytes``. Every failure (HTTP
    status, network, timeout, too large) is a one-line FerkitError naming the address."""
    import urllib.error
    import urllib.request

    from . import __version__

    limit = URL_MAX_BYTES if max_bytes is None else int(max_bytes)
    req = urllib.request.Request(url, headers={"User-Agent": f"ferkit/{__version__}", "Accept": "image/*"})
    try:
        with urllib.request.urlopen(req, timeout=URL_TIMEOUT_S if timeout is None else timeout) as resp:
            size = resp.headers.get("Content-Length")
            if size and size.isdigit() and int(size) > limit:
                raise FerkitError(f"{url}: the image is {int(size) / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB limit")
            data = resp.read(limit + 1)
    except urllib.error.HTTPError as e:
        raise FerkitError(f"{url}: the server answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise FerkitError(f"{url}: cannot fetch it ({getattr(e, 'reason', e)})") from None
    except (TimeoutError, OSError, ValueError) as e:
        raise FerkitError(f"{url}: cannot fetch it ({e})") from None
    if len(data) > limit:
        raise FerkitError(f"{url}: the image is over the {limit / 2**20:.0f} MiB limit")
    return data


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file, or fetch an http(s) URL -> upright uint8 BGR array (H, W, 3). Raises FerkitError
    for an unreadable file or address."""
    if is_url(path):
        return decode_image(fetch_url(path), path)
    p = Path(path)
    if not p.exists():
        raise FerkitError(f"{p}: no such file")
    if p.is_dir():
        raise FerkitError(f"{p}: is a folder, not an image (use it as a source: ferkit predict {p})")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise FerkitError(f"{p}: cannot read the file ({e.strerror or e})") from None
    return decode_image(data, str(p))


# ------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """One thing to analyse.

    kind:   "image", "video" (a video file) or "camera".
    path:   the file path for images and videos, None for cameras.
    camera: the camera index for cameras, None otherwise.
    """

    kind: str
    path: str | None = None
    camera: int | None = None

    @property
    def name(self) -> str:
        """How the source is shown in tables and JSON: the path as found, or ``camera:N``."""
        return self.path if self.path is not None else f"camera:{self.camera}"

    @property
    def is_stream(self) -> bool:
        return self.kind in ("video", "camera")


@dataclass
class Expansion:
    """What :func:`expand_sources` found: sources in order, errors ``(spec, message)``, and how many
    files inside folders were skipped because they are neither images nor videos."""

    sources: list[Source] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0


def kind_of_path(path: str | os.PathLike) -> str | None:
    """"image", "video" or None (unknown extension), from the file name."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def _is_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def _folder_files(folder: Path, recursive: bool) -> tuple[list[Source], int]:
    found: list[Source] = []
    skipped = 0
    if recursive:
        walker = os.walk(folder)
    else:
        walker = [(str(folder), [], [e.name for e in os.scandir(folder) if e.is_file()])]
    for root, dirs, files in walker:
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for fname in sorted(files):
            if fname.startswith("."):
                continue
            full = os.path.join(root, fname)
            kind = kind_of_path(fname)
            if kind is None:
                skipped += 1
                continue
            found.append(Source(kind, path=full))
    return found, skipped


def expand_sources(specs: Iterable[str | int | os.PathLike], recursive: bool = True) -> Expansion:
    """Turn source arguments into :class:`Source` items.

    - an existing file: an image or a video by its extension (an unknown extension is tried as an image);
    - an existing folder: every image and video inside (sub-folders too when ``recursive``), sorted by name;
      other files are counted in ``skipped``;
    - a glob pattern (``*``, ``?``, ``[``): the images and videos it matches;
    - an integer, or digits that are not an existing path: a camera index;
    - an ``http://`` or ``https://`` address: an image, fetched when it is read (:func:`read_image`).
    A path that does not exist, an empty folder or a glob matching nothing becomes an entry of ``errors``.
    """
    out = Expansion()
    for spec in specs:
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            out.sources.append(Source("camera", camera=int(spec)))
            continue
        s = os.fspath(spec)
        p = Path(s)
        if is_url(s):  # fetched when it is read; images only (download a video first)
            out.sources.append(Source("image", path=s))
        elif p.is_file():
            out.sources.append(Source(kind_of_path(s) or "image", path=s))
        elif p.is_dir():
            found, skipped = _folder_files(p, recursive)
            out.skipped += skipped
            if not found:
                out.errors.append((s, f"{s}: the folder holds no images or videos"))
            out.sources.extend(found)
        elif s.isdigit():
            out.sources.append(Source("camera", camera=int(s)))
        elif _is_glob(s):
            matches = sorted(_glob.glob(s, recursive=True))
            files = [m for m in matches if os.path.isfile(m)]
            media = [m for m in files if kind_of_path(m) is not None]
            out.skipped += len(files) - len(media)
            for m in media:
                out.sources.append(Source(kind_of_path(m), path=m))
            if not media:
                out.errors.append((s, f"{s}: the pattern matches no images or videos"))
        else:
            out.errors.append((s, f"{s}: no such file or folder"))
    return out
