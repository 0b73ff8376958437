"""Decoding untrusted image bytes safely, and encoding the server's derived images.

Order of checks in :func:`decode_image` (each failure is an :class:`ImageError` with an HTTP status):

1. empty bytes -> 422;
2. the leading bytes must be a supported image format (JPEG, PNG, WebP, BMP, TIFF, GIF); anything else
   (text, HTML, PDF, SVG, HEIC, ...) -> 415;
3. the header is parsed *without decoding pixels* (Pillow's lazy open); width*height over the limit -> 413
   (decompression bombs: a 20 kB PNG can claim 100,000 x 100,000 pixels);
4. full decode by :func:`ferkit.io.decode_image` (the decoder ``ferkit predict`` uses, so the server and the
   CLI see the same pixels); when it refuses the data, Pillow tries, and a truncated or corrupt file -> 422;
5. EXIF orientation applied; any mode (gray, RGBA, palette, 16-bit, CMYK) converted to 8-bit BGR.
"""
from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import ApiError

try:  # Pillow parses headers lazily (size known before any pixel is decoded) and reports truncation
    from PIL import Image, ImageOps, UnidentifiedImageError
except ImportError:  # pragma: no cover - Pillow is part of the serve extra
    Image = None

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# Pillow format names that are variants of the supported ones (phone JPEGs are often MPO)
_FORMAT_ALIASES = {"MPO": "JPEG"}


class ImageError(ApiError):
    """An image the server refuses; ``status`` is the HTTP status, ``code`` a short machine-readable name."""


@dataclass
class DecodedImage:
    """A decoded image: ``bgr`` is uint8 (H, W, 3) in OpenCV's BGR order, EXIF orientation applied."""

    bgr: np.ndarray
    format: str  # 'JPEG', 'PNG', ...
    media_type: str  # 'image/jpeg', ...

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])


_MEDIA_TYPES = {
    "JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
    "BMP": "image/bmp", "TIFF": "image/tiff", "GIF": "image/gif",
}
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif"}


def sniff_format(data: bytes) -> str | None:
    """The image format from the file's magic bytes, or None when it is not a supported image."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def _describe_unknown(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:1024].lower()):
        return "an SVG drawing (vector images are not supported)"
    if head.startswith(b"%pdf"):
        return "a PDF document"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc", b"ftypavif"):
        return "a HEIC/AVIF image (not supported)"
    try:
        data[:256].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "an unknown binary format"


def extension_for(fmt: str) -> str:
    return _EXTENSIONS.get(fmt, ".bin")


def _to_bgr(img) -> np.ndarray:
    """Any Pillow image -> uint8 BGR array."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float64)
            hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            arr = np.clip(arr * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = 1.0 if arr.size and float(arr.max()) <= 1.0 else 255.0
        arr = np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if mode == "L":
        return cv2.cvtColor(np.asarray(img), cv2.COLOR_GRAY2BGR)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # composite transparent pixels on white (what a viewer shows)
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
        return cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)
    if mode != "RGB":
        img = img.convert("RGB")
    return cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Untrusted bytes -> :class:`DecodedImage`, or :class:`ImageError` (413/415/422). See the module doc."""
    if Image is None:  # pragma: no cover
        raise RuntimeError("Pillow is needed by the server: pip install 'ferkit[serve]'")
    if not data:
        raise ImageError(422, "empty_image", "the image is empty (0 bytes); send a JPEG, PNG, WebP, BMP, TIFF or GIF file")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(
            415, "unsupported_media_type",
            f"the data is not a supported image (it looks like {_describe_unknown(data)}); "
            "send a JPEG, PNG, WebP, BMP, TIFF or GIF file",
        )
    with warnings.catch_warnings():
        # Pillow's own bomb check is replaced by ours (max_pixels) below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=None)
        except Image.DecompressionBombError as e:  # Pillow's own check fired first (over ~179 megapixels)
            m = re.search(r"\((\d+) pixels\)", str(e))
            claimed = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
            raise ImageError(
                413, "too_many_pixels",
                f"the image header claims {claimed}, over this server's limit of {max_pixels:,}; downscale it and try again",
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
            raise ImageError(422, "corrupt_image", f"the {fmt} file is corrupt: its header cannot be read ({e})") from None
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError(422, "corrupt_image", f"the {fmt} header gives an empty size {width}x{height}")
        if width * height > max_pixels:
            raise ImageError(
                413, "too_many_pixels",
                f"the image is {width}x{height} = {width * height:,} pixels, over this server's limit of "
                f"{max_pixels:,}; downscale it and try again",
            )
        real = _FORMAT_ALIASES.get(img.format or "", img.format or fmt)
        if real not in SUPPORTED_FORMATS:
            img.close()
            raise ImageError(415, "unsupported_media_type", f"{img.format} images are not supported")
        shared = _shared_decode(data)  # the same decoder as `ferkit predict`, so both see the same pixels
        if shared is not None:
            img.close()
            return DecodedImage(bgr=shared, format=real, media_type=_MEDIA_TYPES[real])
        try:
            img.load()
            # orientation from EXIF (phones store rotated sensors); decode errors here are corruption too
            img = ImageOps.exif_transpose(img)
            bgr = _to_bgr(img)
        except Image.DecompressionBombError as e:
            raise ImageError(413, "too_many_pixels", str(e)) from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
            raise ImageError(
                422, "corrupt_image",
                f"the {real} image is truncated or corrupt and cannot be decoded ({e}); re-export or re-upload it",
            ) from None
        finally:
            img.close()
    return DecodedImage(bgr=np.ascontiguousarray(bgr), format=real, media_type=_MEDIA_TYPES[real])


def _shared_decode(data: bytes) -> np.ndarray | None:
    """Decode with :func:`ferkit.io.decode_image` (OpenCV; EXIF orientation; truncation detected). None when
    that module is missing or refuses the data, in which case Pillow decodes (and reports corruption)."""
    try:
        from ..io import decode_image as io_decode
    except ImportError:  # pragma: no cover - ferkit.io is part of the package
        return None
    from ..errors import FerkitError

    try:
        return io_decode(data, "the image")
    except FerkitError:
        return None


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """uint8 BGR (or gray) array -> PNG bytes (compression 0-9: 1 is fastest with real compression)."""
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:  # pragma: no cover - cv2 fails only on invalid arrays
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def fit_within(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longer side is at most ``max_side`` pixels; returns (image, scale factor <= 1)."""
    h, w = image.shape[:2]
    longest = max(h, w)
    if longest <= max_side:
        return image, 1.0
    scale = max_side / float(longest)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def face_thumbnail(image: np.ndarray, box: tuple[int, int, int, int], size: int, margin: float = 0.15) -> np.ndarray:
    """A square ``size`` x ``size`` crop around ``box`` = (x, y, w, h) in pixels, with ``margin`` (fraction of
    the box side) added on each side. Near an edge the square slides inside the image rather than padding;
    only a square larger than the image is padded (with mid gray)."""
    h_img, w_img = image.shape[:2]
    x, y, w, h = (int(v) for v in box)
    side = int(round(max(w, h) * (1.0 + 2.0 * margin)))
    if side <= 0:
        return np.zeros((size, size, 3), np.uint8)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - side / 2))
    # slide the window into the image along each axis where it fits
    if side <= w_img:
        x0 = min(max(x0, 0), w_img - side)
    if side <= h_img:
        y0 = min(max(y0, 0), h_img - side)
    x1, y1 = x0 + side, y0 + side
    crop = image[max(0, y0):min(h_img, y1), max(0, x0):min(w_img, x1)]
    if crop.size == 0:
        return np.zeros((size, size, 3), np.uint8)
    pad_l, pad_t = max(0, -x0), max(0, -y0)
    pad_r, pad_b = max(0, x1 - w_img), max(0, y1 - h_img)
    if pad_l or pad_t or pad_r or pad_b:
        crop = cv2.copyMakeBorder(crop, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)
