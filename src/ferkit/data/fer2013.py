"""Read the Kaggle ``fer2013.csv`` (plain or gzipped) fast, with a validated ``.npz`` cache.

Columns ``emotion,pixels,Usage`` (any order, names case-insensitive); 35,887 rows; ``pixels`` holds
48*48 space-separated ints in 0..255, row-major. LF or CRLF line endings, optional UTF-8 BOM, optional
double quotes around fields.

Parsing is vectorised (one pass of numpy over all pixel bytes), and the parsed arrays are cached in an
``.npz`` keyed by the sha256 of the file, so a second load takes well under two seconds.

Row ids: ``Fer2013.rows[i]`` is the 0-based data-row number (header and blank lines not counted) of
image ``i`` in the file. Rows stay aligned with FER+'s ``fer2013new.csv`` even when ``skip_bad`` drops
some, because the ids are positions in the file, not positions in the arrays.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FerkitError

USAGES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
NUM_PIXELS = 48 * 48
CACHE_VERSION = 2
COLUMNS: tuple[str, ...] = ("emotion", "pixels", "Usage")


@dataclass
class Fer2013:
    """The parsed CSV.

    images: uint8 (N, 48, 48); labels: int64 FER2013 ids (N,); usage: int8 index into USAGES (N,);
    rows: int64 0-based data-row number in the file (N,) (rows stay aligned with fer2013new.csv);
    skipped: (row, reason) for rows dropped with ``skip_bad``;
    source_rows: data rows of the original CSV when that is not ``rows.max() + 1`` (a pack of some splits);
    pack: what a pack (:mod:`ferkit.data.pack`) says of itself, None for a CSV. ``sha256`` is always the CSV's.
    """

    images: np.ndarray
    labels: np.ndarray
    usage: np.ndarray
    rows: np.ndarray
    sha256: str
    path: str
    skipped: list[tuple[int, str]] = field(default_factory=list)
    source_rows: int | None = None
    pack: dict | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def csv_rows(self) -> int:
        """Data rows of the original CSV (FER+'s fer2013new.csv must have as many): ``source_rows`` for a
        pack, else one past the last row read or skipped."""
        if self.source_rows is not None:
            return self.source_rows
        return int(max([int(self.rows.max()) if len(self.rows) else -1] + [r for r, _ in self.skipped])) + 1

    def split(self, name: str) -> np.ndarray:
        """Indices of the rows whose Usage is ``name``."""
        if name not in USAGES:
            raise FerkitError(f"unknown split {name!r}; choose one of {', '.join(USAGES)}")
        return np.flatnonzero(self.usage == USAGES.index(name))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    root = os.environ.get("FERKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "ferkit")
    return Path(root)


def _check_text(head: bytes, path: Path) -> None:
    """Refuse archives and binary files with a message that says what the file looks like."""
    if head[:4] == b"PK\x03\x04":
        raise FerkitError(f"{path} is a zip archive, not a CSV; extract fer2013.csv from it and pass that file")
    if len(head) > 262 and head[257:262] == b"ustar":
        raise FerkitError(f"{path} is a tar archive (e.g. fer2013.tar.gz), not a CSV; extract fer2013/fer2013.csv from it first")
    if head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        raise FerkitError(f"{path} is bzip2/xz-compressed; decompress it (only plain CSV and .gz are read)")
    if b"\x00" in head:
        raise FerkitError(f"{path} is a binary file, not a CSV text file; expected the Kaggle fer2013.csv (plain or .gz)")


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)  # one C call per gzip member: faster than streaming reads
    except (OSError, EOFError, zlib.error) as e:
        raise FerkitError(f"cannot read {path}: {e} (damaged or truncated file?)") from None
    _check_text(data[:4096], path)
    return data


def _parse_pixels(blob: bytes, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``n_rows`` pixel fields joined by b' ' into uint8 (n_rows, 2304).

    Returns (pixels, bad_row_mask). Values must be decimal integers in 0..255.
    The caller guarantees each field has exactly 2304 single-space-separated tokens.
    Fast path: numpy's C text parser, taken only when the blob holds nothing but digits and spaces and
    every value is in range; otherwise the exact vectorised parser below finds the bad rows.
    """
    if not blob.translate(None, b"0123456789 "):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                values = np.fromstring(blob, dtype=np.int32, sep=" ")
        except (ValueError, DeprecationWarning, AttributeError):
            values = None
        if values is not None and values.size == n_rows * NUM_PIXELS and values.max(initial=0) <= 255:
            return values.astype(np.uint8).reshape(n_rows, NUM_PIXELS), np.zeros(n_rows, dtype=bool)
    return _parse_pixels_strict(blob, n_rows)


def _parse_pixels_strict(blob: bytes, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact vectorised parser: values must be 1..3 decimal digits in 0..255 (see ``_parse_pixels``)."""
    a = np.frombuffer(blob, dtype=np.uint8)
    is_sep = a == 32
    n_tok = n_rows * NUM_PIXELS
    # token boundaries: starts follow a separator (or the beginning), ends precede one (or the end)
    sep_pos = np.flatnonzero(is_sep)
    if len(sep_pos) != n_tok - 1:  # guaranteed by the caller; a cheap guard against silent misalignment
        raise AssertionError("pixel blob does not hold the expected number of tokens")
    starts = np.empty(n_tok, dtype=np.int64)
    starts[0] = 0
    starts[1:] = sep_pos + 1
    ends = np.empty(n_tok, dtype=np.int64)
    ends[:-1] = sep_pos
    ends[-1] = len(a)
    lengths = ends - starts
    digits = a.astype(np.int16) - 48
    nondigit = (digits < 0) | (digits > 9)
    nondigit &= ~is_sep
    bad_tok = (lengths < 1) | (lengths > 3)
    # value = up to three digits, right-aligned
    safe = np.clip(ends - 1, 0, len(a) - 1)
    ones = digits[safe]
    tens = np.where(lengths >= 2, digits[np.clip(ends - 2, 0, len(a) - 1)], 0)
    hundreds = np.where(lengths >= 3, digits[np.clip(ends - 3, 0, len(a) - 1)], 0)
    values = hundreds * 100 + tens * 10 + ones
    bad_tok |= (values < 0) | (values > 255)
    bad_row = bad_tok.reshape(n_rows, NUM_PIXELS).any(axis=1)
    if nondigit.any():
        # map offending bytes to tokens, then rows
        tok_of_byte = np.searchsorted(starts, np.flatnonzero(nondigit), side="right") - 1
        bad_row[np.unique(tok_of_byte // NUM_PIXELS)] = True
    pixels = np.clip(values, 0, 255).astype(np.uint8).reshape(n_rows, NUM_PIXELS)
    return pixels, bad_row


def _first_bad_value(px: bytes) -> str:
    """Describe what is wrong with a pixel field the parser refused (for error messages)."""
    n = len(px.split())
    if n != NUM_PIXELS:
        return f"pixels field has {n} values, expected {NUM_PIXELS} (48x48)"
    for k, tok in enumerate(px.split(b" ")):
        if not (tok.isdigit() and len(tok) <= 3 and int(tok) <= 255):
            shown = tok[:20].decode("utf-8", "replace")
            what = "is out of range 0..255" if tok.isdigit() else "is not an integer"
            return f"pixel {k} (y={k // 48}, x={k % 48}) value {shown!r} {what}"
    return "pixel values must be integers in 0..255"


def _header_columns(first_line: bytes, path: Path) -> tuple[int, int, int]:
    """Positions of (emotion, pixels, Usage) in the header, or a clear error."""
    line = first_line.rstrip(b"\r")
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise FerkitError(f"{path} does not start with a text header; expected a CSV with header 'emotion,pixels,Usage' "
                          "(the Kaggle fer2013.csv, plain or .gz)") from None
    names = [h.strip().strip('"').strip() for h in text.split(",")]
    lower = [n.lower() for n in names]
    want = [c.lower() for c in COLUMNS]
    shown = text if len(text) <= 80 else text[:77] + "..."
    if sorted(lower) != sorted(want):
        raise FerkitError(f"{path}: header is {shown!r}; expected the three columns 'emotion,pixels,Usage' "
                          "(the Kaggle fer2013.csv)")
    return tuple(lower.index(w) for w in want)  # type: ignore[return-value]


def _parse_csv(data: bytes, path: Path, skip_bad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    lines = data.split(b"\n")
    if not lines or not lines[0].strip():
        raise FerkitError(f"{path}: empty file; expected a FER2013 CSV with header 'emotion,pixels,Usage'")
    i_emo, i_px, i_use = _header_columns(lines[0], path)
    usage_code = {u.lower().encode(): i for i, u in enumerate(USAGES)}
    labels, usage, rows, fields_ = [], [], [], []
    skipped: list[tuple[int, str]] = []

    def bad(row: int, line_no: int, reason: str) -> None:
        if not skip_bad:
            raise FerkitError(f"{path}: data row {row} (line {line_no}): {reason}; "
                              "fix the file or pass --skip-bad (skip_bad=True) to skip and count such rows")
        skipped.append((row, reason))

    row = -1
    line_nos: list[int] = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # blank lines (e.g. the final newline) are not data rows
        row += 1
        parts = line.rstrip(b"\r").split(b",")
        if len(parts) != 3:
            bad(row, line_no, f"expected 3 comma-separated fields, found {len(parts)}")
            continue
        e, px, u = (parts[i_emo].strip().strip(b'"'), parts[i_px].strip().strip(b'"').strip(),
                    parts[i_use].strip().strip(b'"'))
        try:
            lab = int(e)
        except ValueError:
            bad(row, line_no, f"emotion {e[:20].decode('utf-8', 'replace')!r} is not an integer")
            continue
        if not 0 <= lab <= 6:
            bad(row, line_no, f"emotion {lab} is not a FER2013 label (0..6)")
            continue
        code = usage_code.get(u.lower())
        if code is None:
            bad(row, line_no, f"Usage {u[:30].decode('utf-8', 'replace')!r} is not one of {', '.join(USAGES)}")
            continue
        n = px.count(b" ") + 1 if px else 0
        if n != NUM_PIXELS:
            # slow path, only for unusual rows: tabs or repeated spaces between values
            # (a repeated space that still gives 2304 fields is caught by the pixel parser)
            toks = px.split()
            if len(toks) != NUM_PIXELS:
                bad(row, line_no, f"pixels field has {len(toks)} values, expected {NUM_PIXELS} (48x48)")
                continue
            px = b" ".join(toks)
        labels.append(lab)
        usage.append(code)
        rows.append(row)
        line_nos.append(line_no)
        fields_.append(px)
    if not fields_:
        raise FerkitError(f"{path}: no valid data rows" + (f" ({len(skipped)} malformed rows skipped)" if skipped else ""))
    # parse in chunks of rows: small working arrays stay in cache and avoid page-fault storms
    chunk = 1024
    parts = [_parse_pixels(b" ".join(fields_[i:i + chunk]), len(fields_[i:i + chunk])) for i in range(0, len(fields_), chunk)]
    pixels = np.concatenate([p for p, _ in parts])
    bad_rows = np.concatenate([b for _, b in parts])
    keep = ~bad_rows
    for i in np.flatnonzero(bad_rows):
        bad(rows[i], line_nos[i], _first_bad_value(fields_[i]))
    skipped.sort()
    return (
        pixels[keep].reshape(-1, 48, 48),
        np.asarray(labels, np.int64)[keep],
        np.asarray(usage, np.int8)[keep],
        np.asarray(rows, np.int64)[keep],
        skipped,
    )


def load_fer2013(
    path: str | os.PathLike,
    *,
    skip_bad: bool = False,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Fer2013:
    """Load ``fer2013.csv`` or ``fer2013.csv.gz`` (gzip is recognised by its magic bytes, not the name), or a
    pack written by ``ferkit data pack`` (:mod:`ferkit.data.pack`; recognised by its content).

    A malformed row (wrong field count, wrong pixel count, a value outside 0..255 or not an integer, an
    unknown label or Usage) raises :class:`FerkitError` naming the row (0-based data row and 1-based
    line), unless ``skip_bad`` is set, in which case such rows are skipped and listed in
    ``Fer2013.skipped`` as (row, reason). A wrong header, an archive or a binary file is a clear error.
    The parsed arrays are cached under ``cache_dir`` (default ``$FERKIT_CACHE`` or ``~/.cache/ferkit``)
    keyed by the file's sha256, so an edited file is never served from a stale cache.
    """
    p = Path(path)
    if p.is_dir():
        raise FerkitError(f"{p} is a folder; pass the path of fer2013.csv or fer2013.csv.gz")
    if not p.is_file():
        raise FerkitError(f"no such file: {p}; pass the path of fer2013.csv or fer2013.csv.gz")
    from .pack import is_pack, load_pack

    if is_pack(p):
        return load_pack(p)
    try:
        digest = file_sha256(p)
    except OSError as e:
        raise FerkitError(f"cannot read {p}: {e}") from None
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cfile = cdir / f"fer2013-{digest[:16]}-v{CACHE_VERSION}{'-skipbad' if skip_bad else ''}.npz"
    if cache and cfile.is_file():
        try:
            with np.load(cfile, allow_pickle=False) as z:
                if str(z["sha256"]) == digest:
                    skipped = [(int(r), str(s)) for r, s in zip(z["skipped_rows"], z["skipped_reasons"])]
                    return Fer2013(z["images"], z["labels"], z["usage"], z["rows"], digest, str(p), skipped)
        except (OSError, KeyError, ValueError, EOFError, zlib.error):
            pass  # a damaged cache is rebuilt below
    images, labels, usage, rows, skipped = _parse_csv(_read_bytes(p), p, skip_bad)
    ds = Fer2013(images, labels, usage, rows, digest, str(p), skipped)
    if cache:
        try:
            cdir.mkdir(parents=True, exist_ok=True)
            tmp = cfile.with_name(cfile.name + f".tmp{os.getpid()}.npz")
            np.savez(
                tmp, images=images, labels=labels, usage=usage, rows=rows, sha256=np.array(digest),
                skipped_rows=np.array([r for r, _ in skipped], np.int64),
                skipped_reasons=np.array([s for _, s in skipped], dtype=str),
            )
            os.replace(tmp, cfile)
        except OSError:
            pass  # caching is an optimisation; a read-only home must not break loading
    return ds
