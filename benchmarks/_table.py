"""The Markdown table every benchmark script prints (shared, so the tables look alike)."""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence


def print_table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                fmt: Callable[[Any], str] = str) -> None:
    """Print ``## title`` and a left-aligned Markdown table; each cell goes through ``fmt``."""
    if title:
        print(f"\n## {title}\n")
    cells = [[str(h) for h in headers]] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells[1:]:
        print("| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |")
    sys.stdout.flush()
