"""The left-aligned Markdown table that ferkit's reports and the benchmark scripts print (one layout everywhere)."""
from __future__ import annotations

from typing import Sequence


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a Markdown table: header, separator, one line per row; columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(v) for v in r] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |" for c in cells]
    return [lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]]
