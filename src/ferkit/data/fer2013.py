"""Read the Kaggle ``fer2013.csv`` (plain or gzipped) fast, with a validated ``.npz`` cache.

Columns ``emotion,pixels,Usage``; 35,887 rows; ``pixels`` holds 48*48 space-separated ints in 0..255.
Parsing is vectorised (one pass of numpy over all pixel bytes), and the parsed arrays are cached in an
``.npz`` keyed by the sha256 of the file, so a second load takes well under two seconds.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FerkitError

USAGES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
NUM_PIXELS = 48 * 48
CACHE_VERSION = 1


@dataclass
class Fer2013:
    """The parsed CSV.

    images: uint8 (N, 48, 48); labels: int64 FER2013 ids (N,); usage: int8 index into USAGES (N,);
    rows: int64 0-based data-row number in the file (N,) (rows stay aligned with fer2013new.csv);
    skipped: (row, reason) for rows dropped with ``skip_bad``.
    """

    images: np.ndarray
    labels: np.ndarray
    usage: np.ndarray
    rows: np.ndarray
    sha256: str
    path: str
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

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


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:
        raise FerkitError(f"cannot read {path}: {e}") from None


def _parse_pixels(blob: bytes, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``n_rows`` pixel fields joined by b' ' into uint8 (n_rows, 2304).

    Returns (pixels, bad_row_mask). Values must be 1..3 decimal digits in 0..255.
    The caller guarantees each field has exactly 2304 space-separated tokens.
    """
    a = np.frombuffer(blob, dtype=np.uint8)
    is_sep = a == 32
    n_tok = n_rows * NUM_PIXELS
    # token boundaries: starts follow a separator (or the beginning), ends precede one (or the end)
    sep_pos = np.flatnonzero(is_sep)
    starts = np.empty(n_tok, dtype=np.int32)
    starts[0] = 0
    starts[1:] = sep_pos + 1
    ends = np.empty(n_tok, dtype=np.int32)
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


def _parse_csv(data: bytes, path: Path, skip_bad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    lines = data.split(b"\n")
    if not lines or not lines[0].strip():
        raise FerkitError(f"{path}: empty file; expected a FER2013 CSV with header 'emotion,pixels,Usage'")
    header = [h.strip().decode("utf-8", "replace") for h in lines[0].rstrip(b"\r").split(b",")]
    want = ["emotion", "pixels", "Usage"]
    if [h.lower() for h in header] != [w.lower() for w in want]:
        raise FerkitError(f"{path}: header is {','.join(header)!r}; expected 'emotion,pixels,Usage' (the Kaggle fer2013.csv)")
    usage_code = {u.encode(): i for i, u in enumerate(USAGES)}
    labels, usage, rows, fields_ = [], [], [], []
    skipped: list[tuple[int, str]] = []

    def bad(row: int, reason: str) -> None:
        if not skip_bad:
            raise FerkitError(f"{path}: data row {row} (line {row + 2}): {reason}; fix the file or pass --skip-bad to skip such rows")
        skipped.append((row, reason))

    row = -1
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        row += 1
        if not line.strip():
            row -= 1  # blank lines (e.g. the final newline) are not data rows
            continue
        parts = line.split(b",")
        if len(parts) != 3:
            bad(row, f"expected 3 comma-separated fields, found {len(parts)}")
            continue
        e, px, u = parts
        try:
            lab = int(e)
        except ValueError:
            bad(row, f"emotion {e[:20].decode('utf-8', 'replace')!r} is not an integer")
            continue
        if not 0 <= lab <= 6:
            bad(row, f"emotion {lab} is not a FER2013 label (0..6)")
            continue
        code = usage_code.get(u.strip())
        if code is None:
            bad(row, f"Usage {u[:30].decode('utf-8', 'replace')!r} is not one of {', '.join(USAGES)}")
            continue
        px = px.strip()
        n = px.count(b" ") + 1 if px else 0
        if n != NUM_PIXELS or b"  " in px:
            bad(row, f"pixels field has {n} values, expected {NUM_PIXELS} (48x48)")
            continue
        labels.append(lab)
        usage.append(code)
        rows.append(row)
        fields_.append(px)
    if not fields_:
        raise FerkitError(f"{path}: no valid data rows")
    # parse in chunks of rows: small working arrays stay in cache and avoid page-fault storms
    chunk = 1024
    parts = [_parse_pixels(b" ".join(fields_[i:i + chunk]), len(fields_[i:i + chunk])) for i in range(0, len(fields_), chunk)]
    pixels = np.concatenate([p for p, _ in parts])
    bad_rows = np.concatenate([b for _, b in parts])
    keep = np.ones(len(fields_), dtype=bool)
    for i in np.flatnonzero(bad_rows):
        bad(rows[i], "pixel values must be integers in 0..255")
        keep[i] = False
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
    """Load ``fer2013.csv`` or ``fer2013.csv.gz``.

    A malformed row (wrong field count, wrong pixel count, a value outside 0..255, an unknown label or
    Usage) raises :class:`FerkitError` naming the row, unless ``skip_bad`` is set, in which case such
    rows are skipped and listed in ``Fer2013.skipped``. The parsed arrays are cached under
    ``cache_dir`` (default ``$FERKIT_CACHE`` or ``~/.cache/ferkit``) keyed by the file's sha256.
    """
    p = Path(path)
    if not p.is_file():
        raise FerkitError(f"no such file: {p}; pass the path of fer2013.csv or fer2013.csv.gz")
    digest = file_sha256(p)
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cfile = cdir / f"fer2013-{digest[:16]}-v{CACHE_VERSION}{'-skipbad' if skip_bad else ''}.npz"
    if cache and cfile.is_file():
        try:
            with np.load(cfile, allow_pickle=False) as z:
                if str(z["sha256"]) == digest:
                    skipped = [(int(r), str(s)) for r, s in zip(z["skipped_rows"], z["skipped_reasons"])]
                    return Fer2013(z["images"], z["labels"], z["usage"], z["rows"], digest, str(p), skipped)
        except (OSError, KeyError, ValueError):
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
