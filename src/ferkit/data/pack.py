"""Compact, verifiable packs of FER2013 (and FER+ votes) for moving training data to another machine.

``ferkit data pack --data fer2013.csv.gz [--ferplus fer2013new.csv] [--splits Training PublicTest]
[--max-mb 40] --out fer.npz`` writes the chosen Usage splits as a zip of ``.npy`` members (so ``numpy.load``
opens it too), LZMA-compressed, with each image stored as differences to the row above (faces are smooth
vertically, which LZMA then squeezes to about 0.70 of the raw bytes, against 0.77 without the differences).
The CSV's own sha256 is kept, so a run trained from a pack records the same data identity as one trained
from the CSV (teachers, resume and model cards check it), and a sha256 of the decoded arrays is checked on
every load, so a damaged or mixed-up pack is refused instead of training on wrong pixels.

With ``--max-mb`` the pack is cut into parts of at most about that size (``fer.npz``, ``fer.part2.npz``,
...), for transfers that cap the size of one batch of files; all parts must lie side by side, and any
of them missing or from another pack is a clear error. ``fer2013new.csv`` travels verbatim in the first
part (``--ferplus fer.npz`` then reads it from there).

``load_fer2013`` and ``load_ferplus`` recognise a pack by its content, so every command that takes
``--data`` or ``--ferplus`` takes one. A pack without PrivateTest can train and be scored on PublicTest;
the random split needs all three Usage splits and is refused otherwise.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import FerkitError
from .fer2013 import USAGES, Fer2013, load_fer2013

PACK_FORMAT = "ferkit-fer2013-pack"
PACK_VERSION = 1
META = "meta.npy"
CHUNK = 2048  # images per compressed member: parts are cut between members


def is_pack(path: str | os.PathLike) -> bool:
    """True when ``path`` is a zip holding a ``meta.npy`` (a ferkit pack, or a damaged one)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
        with zipfile.ZipFile(path) as zf:
            return META in zf.namelist()  # the loader checks the format and says what is wrong
    except (OSError, zipfile.BadZipFile):
        return False


def _read_array(zf: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    try:
        with zf.open(name) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    except KeyError:
        raise FerkitError(f"{path}: member {name} is missing; the pack is incomplete, write it again") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as e:
        raise FerkitError(f"{path}: member {name} cannot be read ({e}); the file is damaged, copy or write it again") from None


def _read_meta(zf: zipfile.ZipFile, path: Path) -> dict:
    arr = _read_array(zf, META, path)
    try:
        if arr.size != 1 or arr.dtype.kind != "U":
            raise ValueError
        meta = json.loads(str(arr.reshape(-1)[0]))
    except (ValueError, json.JSONDecodeError):
        raise FerkitError(f"{path}: its {META} is not valid JSON; the pack is damaged") from None
    if not isinstance(meta, dict):
        raise FerkitError(f"{path}: its {META} is not a JSON object; the pack is damaged")
    return meta


def _write_array(zf: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    with zf.open(name, "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)


def _delta_encode(images: np.ndarray) -> np.ndarray:
    out = images.copy()
    out[:, 1:, :] -= images[:, :-1, :]  # uint8 arithmetic wraps modulo 256, which the decoder undoes
    return out


def _delta_decode(coded: np.ndarray) -> np.ndarray:
    return np.cumsum(coded, axis=1, dtype=np.uint8)


def content_sha256(images: np.ndarray, labels: np.ndarray, usage: np.ndarray, rows: np.ndarray) -> str:
    """sha256 of the decoded arrays (pixels, labels, usage, row ids), in a fixed dtype and order."""
    h = hashlib.sha256()
    for a, dt in ((images, np.uint8), (labels, np.int64), (usage, np.int8), (rows, np.int64)):
        h.update(np.ascontiguousarray(a, dtype=dt).tobytes())
    return h.hexdigest()


def part_names(out: Path, n: int) -> list[str]:
    """File names of an ``n``-part pack whose first part is ``out``."""
    stem = out.name[:-4] if out.name.endswith(".npz") else out.name
    return [out.name] + [f"{stem}.part{k}.npz" for k in range(2, n + 1)]


def write_pack(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    ferplus: str | os.PathLike | None = None,
    splits: tuple[str, ...] | list[str] = USAGES,
    max_mb: float | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    preset: int = 6,
) -> dict:
    """Pack the ``splits`` of a FER2013 CSV (and ``ferplus``'s fer2013new.csv) into ``out`` (+ parts).

    Returns a report: files (name, bytes), images per split, raw and packed bytes, the CSV's sha256 and
    the content sha256. Existing files are refused unless ``overwrite``, which also removes the further parts
    of a replaced pack that had more.
    """
    out = Path(out)
    if not out.name.endswith(".npz"):
        raise FerkitError(f"the pack's name must end in .npz, got {out.name!r}")
    bad = [s for s in splits if s not in USAGES]
    if bad or not splits:
        raise FerkitError(f"unknown split(s) {', '.join(bad) or '(none given)'}; choose among {', '.join(USAGES)}")
    splits = tuple(u for u in USAGES if u in splits)  # file order, no repeats
    if max_mb is not None and max_mb < 1:
        raise FerkitError(f"--max-mb must be at least 1, got {max_mb}")
    if is_pack(data):
        raise FerkitError(f"{data} is already a ferkit pack; pack the original fer2013.csv(.gz)")
    ds = load_fer2013(data, skip_bad=skip_bad)
    source_rows = ds.csv_rows
    fp_bytes = fp_sha = None
    if ferplus is not None:
        from .ferplus import align_ferplus, load_ferplus

        if is_pack(ferplus):
            raise FerkitError(f"{ferplus} is a pack; pass FER+'s original fer2013new.csv")
        fp = load_ferplus(ferplus)  # parsed and checked against the CSV now, not on the other machine
        align_ferplus(fp, ds.rows, ds.usage, source_rows, ds.path)
        fp_bytes, fp_sha = Path(ferplus).read_bytes(), fp.sha256
    sel = np.flatnonzero(np.isin(ds.usage, [USAGES.index(u) for u in splits]))
    if len(sel) == 0:
        raise FerkitError(f"{data} has no rows in {', '.join(splits)}")
    images, labels, usage, rows = ds.images[sel], ds.labels[sel], ds.usage[sel], ds.rows[sel]
    digest = content_sha256(images, labels, usage, rows)
    chunks = [slice(i, min(i + CHUNK, len(sel))) for i in range(0, len(sel), CHUNK)]
    base = {
        "format": PACK_FORMAT, "version": PACK_VERSION, "source": Path(ds.path).name, "source_sha256": ds.sha256,
        "source_rows": source_rows, "splits": list(splits), "images": int(len(sel)),
        "counts": {u: int((usage == USAGES.index(u)).sum()) for u in splits}, "content_sha256": digest,
        "chunks": len(chunks), "chunk": CHUNK, "encoding": "uint8 difference to the row above, LZMA",
        "skipped": [[int(r), str(s)] for r, s in ds.skipped], "ferplus_sha256": fp_sha,
    }
    if out.exists() and not overwrite:
        raise FerkitError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    limit = None if max_mb is None else max_mb * 1e6
    tmp_files: list[Path] = []
    assignment: list[list[int]] = [[]]  # chunk ids of each part
    zfs: list[zipfile.ZipFile] = []
    try:
        # write the members, opening a new part when the next block would cross the limit

        def new_part() -> zipfile.ZipFile:
            t = out.with_name(f".{out.name}.tmp{os.getpid()}-{len(tmp_files)}")
            tmp_files.append(t)
            zf = zipfile.ZipFile(t, "w", compression=zipfile.ZIP_LZMA, compresslevel=preset)
            zfs.append(zf)
            return zf

        zf = new_part()
        _write_array(zf, "labels.npy", labels)
        _write_array(zf, "usage.npy", usage)
        _write_array(zf, "rows.npy", rows)
        if fp_bytes is not None:
            _write_array(zf, "ferplus_csv.npy", np.frombuffer(fp_bytes, np.uint8))
        last = 0
        for k, sl in enumerate(chunks):
            size = zf.fp.tell()
            if limit is not None and assignment[-1] and size + last + 1e5 > limit:
                assignment.append([])
                zf = new_part()
                size = zf.fp.tell()
            _write_array(zf, f"images_{k:04d}.npy", _delta_encode(images[sl]))
            last = zf.fp.tell() - size
            assignment[-1].append(k)
        names = part_names(out, len(zfs))
        for i, zf in enumerate(zfs):
            meta = {**base, "part": i + 1, "parts": len(zfs), "part_files": names, "part_chunks": assignment[i]}
            _write_array(zf, META, np.array(json.dumps(meta)))
            zf.close()
        biggest = max(t.stat().st_size for t in tmp_files)
        if limit is not None and biggest > limit * 1.02:  # a part holds at least one block of CHUNK images
            raise FerkitError(f"--max-mb {max_mb:g} cannot be met: one block of {CHUNK} faces packs to "
                              f"{biggest / 1e6:.1f} MB here; give --max-mb {np.ceil(biggest / 1e6 + 0.5):g} or more")
        finals = [out.with_name(n) for n in names]
        existing = [f for f in finals if f.exists()]
        if existing and not overwrite:
            raise FerkitError(f"{existing[0]} exists; pass --overwrite (overwrite=True) to replace it")
        for t, f in zip(tmp_files, finals):
            os.replace(t, f)
        # a replaced pack that had more parts: its further parts belong to no pack now
        k = len(names) + 1
        while (stale := out.with_name(part_names(out, k)[-1])).exists() and is_pack(stale):
            stale.unlink()
            k += 1
    finally:
        for z in zfs:  # a no-op for the parts closed above; after an error, release the rest
            try:
                z.close()
            except (OSError, ValueError):
                pass
        for t in tmp_files:
            if t.exists():
                t.unlink()
    files = [(f.name, f.stat().st_size) for f in finals]
    packed = sum(b for _, b in files)
    return {**base, "files": files, "raw_bytes": int(images.nbytes), "packed_bytes": packed, "out": str(out)}


def _open_part(path: Path) -> tuple[zipfile.ZipFile, dict]:
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise FerkitError(f"pack part {path} is missing; all parts of a pack must lie in the same folder") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise FerkitError(f"{path} is not a readable ferkit pack ({e}); copy or write it again") from None
    meta = _read_meta(zf, path)
    if meta.get("format") != PACK_FORMAT:
        zf.close()
        raise FerkitError(f"{path} is a zip/npz file but not a ferkit pack")
    if meta.get("version") != PACK_VERSION:
        zf.close()
        raise FerkitError(f"{path} is a ferkit pack of version {meta.get('version')}; this ferkit reads version {PACK_VERSION}")
    return zf, meta


def load_pack(path: str | os.PathLike) -> Fer2013:
    """Read a pack written by :func:`write_pack` (its first part; the others are found beside it)."""
    path = Path(path)
    zf, meta = _open_part(path)
    with zf:
        if meta["part"] != 1:
            raise FerkitError(f"{path} is part {meta['part']} of {meta['parts']} of a pack; pass its first part, "
                              f"{meta['part_files'][0]}")
        labels, usage, rows = (_read_array(zf, f"{n}.npy", path) for n in ("labels", "usage", "rows"))
        chunks: dict[int, np.ndarray] = {}
        for i, name in enumerate(meta["part_files"]):
            p = path.with_name(name)
            other, m = (zf, meta) if i == 0 else _open_part(p)
            try:
                if m["content_sha256"] != meta["content_sha256"] or m["part"] != i + 1:
                    raise FerkitError(f"{p} belongs to another pack (or is another part) than {path}; "
                                      "write the pack again and keep its parts together")
                for k in m["part_chunks"]:
                    chunks[k] = _delta_decode(_read_array(other, f"images_{k:04d}.npy", p))
            finally:
                if other is not zf:
                    other.close()
    if sorted(chunks) != list(range(meta["chunks"])):
        raise FerkitError(f"{path}: the parts hold {len(chunks)} of {meta['chunks']} image blocks; the pack is incomplete")
    images = np.concatenate([chunks[k] for k in range(meta["chunks"])]) if chunks else np.zeros((0, 48, 48), np.uint8)
    if images.shape[1:] != (48, 48) or not (len(images) == len(labels) == len(usage) == len(rows)):
        raise FerkitError(f"{path}: array shapes disagree ({images.shape}, {len(labels)} labels); the pack is damaged")
    if content_sha256(images, labels, usage, rows) != meta["content_sha256"]:
        raise FerkitError(f"{path}: the decoded images do not match the pack's checksum; the file is damaged")
    return Fer2013(images, labels.astype(np.int64), usage.astype(np.int8), rows.astype(np.int64), meta["source_sha256"],
                   str(path), [(int(r), str(s)) for r, s in meta["skipped"]], source_rows=int(meta["source_rows"]),
                   pack={k: meta[k] for k in ("source", "splits", "counts", "content_sha256", "parts")})


def pack_ferplus_bytes(path: str | os.PathLike) -> tuple[bytes, str]:
    """The fer2013new.csv bytes a pack carries, and their recorded sha256 (checked)."""
    path = Path(path)
    zf, meta = _open_part(path)
    with zf:
        if meta["part"] != 1:
            raise FerkitError(f"{path} is part {meta['part']} of a pack; pass its first part, {meta['part_files'][0]}")
        if not meta.get("ferplus_sha256"):
            raise FerkitError(f"{path} holds no FER+ votes; write the pack again with --ferplus fer2013new.csv")
        raw = _read_array(zf, "ferplus_csv.npy", path).tobytes()
    if hashlib.sha256(raw).hexdigest() != meta["ferplus_sha256"]:
        raise FerkitError(f"{path}: the FER+ votes it carries do not match their checksum; the file is damaged")
    return raw, meta["ferplus_sha256"]

