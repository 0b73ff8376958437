"""Settings of the ferkit web server (``ferkit serve``), one frozen dataclass.

The settings travel to uvicorn worker processes as JSON in the ``FERKIT_SERVE_SETTINGS`` environment
variable (``--workers N`` starts N processes, each building its own app and loading the model once).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import FerkitError

SETTINGS_ENV = "FERKIT_SERVE_SETTINGS"
DATA_DIR_ENV = "FERKIT_SERVER_DATA"

MB = 1024 * 1024


def default_data_dir() -> Path:
    """``$FERKIT_SERVER_DATA``, else ``$XDG_DATA_HOME/ferkit/server``, else ``~/.local/share/ferkit/server``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ferkit" / "server"


MAX_RETENTION_HOURS = 100 * 365 * 24  # expiry dates must stay representable (datetime ends at year 9999)


@dataclass(frozen=True)
class ServerSettings:
    """Everything the app needs; sizes in bytes, durations in seconds unless the name says hours.

    - ``data_dir``: where the SQLite result store (``results.sqlite3``) and derived images live.
    - ``keep_uploads``: keep the original uploaded/fetched bytes next to the derived images.
    - ``retention_hours``: derived images (annotated PNG, thumbnails, originals) are deleted this long
      after the analysis; the result record (numbers only) stays until DELETE.
    - ``allow_private_urls``: let ``{"url": ...}`` reach loopback/private/link-local addresses (off: SSRF guard).
    - ``max_upload_bytes``: largest accepted upload or fetched image, enforced while streaming.
    - ``max_pixels``: largest accepted width*height, checked from the image header before decoding.
    - ``url_timeout_s``: total time allowed to fetch one URL (all redirects included).
    - ``url_max_redirects``: redirect hops followed (each hop's address is checked again).
    - ``model`` / ``detector``: passed to the ferkit pipeline (None = bundled default model / auto detector).
    - ``analyzer``: ``"module:attr"`` of a custom analyzer object or factory (tests, plug-ins); None = ferkit's.
    - ``max_concurrency``: analyses running at once in one worker (more requests wait in line).
    - ``max_queue``: requests allowed to wait for an analysis slot in one worker; beyond it 503 (overload).
    - ``cleanup_interval_s``: how often expired images are swept (also swept, throttled, on requests).
    - ``annotated_max_side``: the annotated PNG is downscaled so its longer side is at most this many pixels.
    - ``thumbnail_size``: side of the square face thumbnails, pixels.
    - ``max_requests``: a supervised worker is restarted after about this many requests (0 = never); from
      that request on its responses close their connection (see ``app.CloseBeforeRecycling``).
    """

    data_dir: Path = field(default_factory=default_data_dir)
    keep_uploads: bool = False
    retention_hours: float = 24.0
    allow_private_urls: bool = False
    max_upload_bytes: int = 20 * MB
    max_pixels: int = 50_000_000
    url_timeout_s: float = 10.0
    url_max_redirects: int = 5
    model: str | None = None
    detector: str | None = None
    analyzer: str | None = None
    max_concurrency: int = 2
    max_queue: int = 64
    cleanup_interval_s: float = 600.0
    annotated_max_side: int = 2048
    thumbnail_size: int = 128
    max_requests: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if not 0 < self.retention_hours <= MAX_RETENTION_HOURS:  # also refuses NaN and inf
            raise FerkitError(f"--retention-hours must be positive and at most {MAX_RETENTION_HOURS:,} "
                              f"(100 years), got {self.retention_hours}")
        if self.max_upload_bytes < 1024:
            raise FerkitError(f"the upload limit must be at least 1 KiB, got {self.max_upload_bytes} bytes")
        if self.max_pixels < 64 * 64:
            raise FerkitError(f"the pixel limit must be at least 4096 pixels, got {self.max_pixels}")
        if not self.url_timeout_s > 0:
            raise FerkitError(f"the URL timeout must be positive, got {self.url_timeout_s}")
        if self.url_max_redirects < 0:
            raise FerkitError(f"the redirect limit cannot be negative, got {self.url_max_redirects}")
        if self.max_concurrency < 1:
            raise FerkitError(f"max concurrency must be at least 1, got {self.max_concurrency}")
        if self.max_queue < 0:
            raise FerkitError(f"the queue limit cannot be negative, got {self.max_queue}")
        if self.max_requests < 0:
            raise FerkitError(f"--max-requests must be 0 (never restart) or positive, got {self.max_requests}")
        if not self.cleanup_interval_s > 0:
            raise FerkitError(f"the cleanup interval must be positive, got {self.cleanup_interval_s}")

    @property
    def retention_s(self) -> float:
        return self.retention_hours * 3600.0

    def with_changes(self, **changes: Any) -> "ServerSettings":
        return replace(self, **changes)

    def to_json(self) -> str:
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServerSettings":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise FerkitError(f"server settings are not valid JSON: {e}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FerkitError(f"unknown server settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_env(cls) -> "ServerSettings":
        """Settings from ``$FERKIT_SERVE_SETTINGS`` (JSON) or the defaults."""
        text = os.environ.get(SETTINGS_ENV)
        return cls.from_json(text) if text else cls()
