"""The Markdown table every benchmark script prints (shared, so the tables look alike)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ferkit.tables import markdown_table  # noqa: E402


def print_table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                fmt: Callable[[Any], str] = str) -> None:
    """Print ``## title`` and a left-aligned Markdown table; each cell goes through ``fmt``."""
    if title:
        print(f"\n## {title}\n")
    print("\n".join(markdown_table(headers, [[fmt(v) for v in r] for r in rows])))
    sys.stdout.flush()
