"""The result store: SQLite (WAL) for records, plain files for derived images, under the data dir.

Layout::

    DATA_DIR/results.sqlite3            one row per analysis (numbers, labels, times; no pixels)
    DATA_DIR/images/<id[:2]>/<id>/      annotated.png, face-<i>.png thumbnails, original.<ext> (--keep-uploads)

Durability: image files are written first (to a temporary name, then renamed), then the row is committed
with ``synchronous=FULL``; the API answers only after the commit. A crash before the commit leaves at most
an orphan image folder, which :meth:`ResultStore.cleanup` removes; a crash after it loses nothing.

Retention: each row has ``expires_at``; after it the image files are deleted (by :meth:`cleanup`, and
refused at read time even before the sweep) and the row stays, marked ``images_deleted``, until DELETE.
Several worker processes can share one store (SQLite locking; ``busy_timeout`` waits for the writer).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_NAME = "results.sqlite3"
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
ORPHAN_GRACE_S = 3600.0  # image folders without a row are removed once they are this old

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    created_at     REAL NOT NULL,          -- unix seconds
    expires_at     REAL NOT NULL,          -- unix seconds; images are deleted after this
    width          INTEGER NOT NULL,
    height         INTEGER NOT NULL,
    model          TEXT NOT NULL,
    elapsed_ms     REAL NOT NULL,
    source         TEXT NOT NULL,          -- 'upload' or 'url'
    source_name    TEXT,                   -- file name or URL
    faces_json     TEXT NOT NULL,          -- list of {box, emotion, score, probabilities}
    face_count     INTEGER NOT NULL,
    has_original   INTEGER NOT NULL DEFAULT 0,
    original_ext   TEXT,
    images_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS results_expiry ON results (images_deleted, expires_at);
"""


@dataclass
class StoredResult:
    """One row of the store. Times are unix seconds; ``faces`` are plain dicts (box = [x, y, w, h] pixels)."""

    seq: int
    id: str
    created_at: float
    expires_at: float
    width: int
    height: int
    model: str
    elapsed_ms: float
    source: str
    source_name: str | None
    faces: list[dict[str, Any]]
    has_original: bool
    original_ext: str | None
    images_deleted: bool

    def images_available(self, now: float | None = None) -> bool:
        return not self.images_deleted and (now if now is not None else time.time()) < self.expires_at


def valid_id(result_id: str) -> bool:
    return bool(ID_PATTERN.match(result_id or ""))


class ResultStore:
    """SQLite-backed result store; safe to share between threads (one connection behind a lock)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / DB_NAME
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.db_path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # pragma: no cover - e.g. a network file system
                raise RuntimeError(f"SQLite refused WAL mode on {self.db_path} (got {mode})")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- paths -------------------------------------------------------------------------------------------------
    def result_dir(self, result_id: str) -> Path:
        if not valid_id(result_id):  # ids become path components: never let anything else through
            raise ValueError(f"invalid result id {result_id!r}")
        return self.images_dir / result_id[:2] / result_id

    def annotated_path(self, result_id: str) -> Path:
        return self.result_dir(result_id) / "annotated.png"

    def thumbnail_path(self, result_id: str, index: int) -> Path:
        return self.result_dir(result_id) / f"face-{int(index)}.png"

    def original_path(self, result_id: str, ext: str) -> Path:
        return self.result_dir(result_id) / f"original{ext}"

    # -- writes ------------------------------------------------------------------------------------------------
    def write_files(self, result_id: str, files: dict[str, bytes]) -> None:
        """Write ``{file name: bytes}`` into the result's folder, each atomically (temp name, then rename)."""
        folder = self.result_dir(result_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"bad file name {name!r}")
            tmp = folder / f".{name}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, folder / name)

    def insert(self, row: dict[str, Any]) -> None:
        """Commit one result (keys as the table's columns, ``faces`` as a list). Returns after the commit."""
        faces = row["faces"]
        values = (
            row["id"], row["created_at"], row["expires_at"], row["width"], row["height"], row["model"],
            row["elapsed_ms"], row["source"], row.get("source_name"), json.dumps(faces), len(faces),
            int(bool(row.get("has_original"))), row.get("original_ext"),
        )
        with self._lock:
            self._conn.execute(
                "INSERT INTO results (id, created_at, expires_at, width, height, model, elapsed_ms, source, "
                "source_name, faces_json, face_count, has_original, original_ext) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                values,
            )

    def delete(self, result_id: str) -> bool:
        """Delete the row and its images; False when there was no such result."""
        if not valid_id(result_id):
            return False
        with self._lock:
            cur = self._conn.execute("DELETE FROM results WHERE id = ?", (result_id,))
            existed = cur.rowcount > 0
        folder = self.result_dir(result_id)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        return existed

    # -- reads -------------------------------------------------------------------------------------------------
    @staticmethod
    def _row(r: sqlite3.Row) -> StoredResult:
        return StoredResult(
            seq=r["seq"], id=r["id"], created_at=r["created_at"], expires_at=r["expires_at"], width=r["width"],
            height=r["height"], model=r["model"], elapsed_ms=r["elapsed_ms"], source=r["source"],
            source_name=r["source_name"], faces=json.loads(r["faces_json"]), has_original=bool(r["has_original"]),
            original_ext=r["original_ext"], images_deleted=bool(r["images_deleted"]),
        )

    def get(self, result_id: str) -> StoredResult | None:
        if not valid_id(result_id):
            return None
        with self._lock:
            r = self._conn.execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()
        return self._row(r) if r else None

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def recent(self, limit: int, before_seq: int | None = None) -> tuple[list[StoredResult], int]:
        """Newest first: up to ``limit`` results older than ``before_seq`` (a cursor), and the total count."""
        with self._lock:
            if before_seq is None:
                rows = self._conn.execute("SELECT * FROM results ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT * FROM results WHERE seq < ? ORDER BY seq DESC LIMIT ?", (before_seq, limit)
                ).fetchall()
            total = int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        return [self._row(r) for r in rows], total

    def integrity_ok(self) -> bool:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # -- retention ---------------------------------------------------------------------------------------------
    def expire_images(self, result_id: str) -> None:
        """Delete one result's image files now and mark the row (used when a read finds them expired)."""
        shutil.rmtree(self.result_dir(result_id), ignore_errors=True)
        with self._lock:
            self._conn.execute("UPDATE results SET images_deleted = 1 WHERE id = ?", (result_id,))

    def cleanup(self, now: float | None = None) -> dict[str, int]:
        """Delete expired image folders and orphan folders (no row, older than an hour). Returns counts."""
        now = time.time() if now is None else now
        with self._lock:
            expired = [r[0] for r in self._conn.execute(
                "SELECT id FROM results WHERE images_deleted = 0 AND expires_at <= ?", (now,)
            ).fetchall()]
        for rid in expired:
            shutil.rmtree(self.result_dir(rid), ignore_errors=True)
        if expired:
            with self._lock:
                self._conn.executemany("UPDATE results SET images_deleted = 1 WHERE id = ?", [(r,) for r in expired])
        orphans = 0
        for bucket in self.images_dir.iterdir() if self.images_dir.is_dir() else []:
            if not bucket.is_dir():
                continue
            for folder in bucket.iterdir():
                if not valid_id(folder.name):
                    continue
                try:
                    age = now - folder.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < ORPHAN_GRACE_S:
                    continue
                with self._lock:
                    known = self._conn.execute("SELECT 1 FROM results WHERE id = ?", (folder.name,)).fetchone()
                if not known:
                    shutil.rmtree(folder, ignore_errors=True)
                    orphans += 1
        return {"expired": len(expired), "orphans": orphans}
