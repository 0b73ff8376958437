"""The project's Markdown documentation: every relative link points at a file that exists, and every
``#anchor`` at a heading of the file it names (GitHub's rule for heading anchors)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, seen = set(), {}
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-zA-Z][a-zA-Z+.-]*:", t)]


def test_slug_follows_github():
    assert slug("Release model: where it stands") == "release-model-where-it-stands"
    assert slug("`default`, `fer2013` and `accurate`") == "default-fer2013-and-accurate"
    assert slug("On real photographs (faces-dev, 1,094 photos)") == "on-real-photographs-faces-dev-1094-photos"


def test_finds_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n[ok](#top) [missing](b.md) [bad anchor](#nowhere)\n")
    bad = [t for t in links(tmp_path / "a.md") if broken(tmp_path / "a.md", t)]
    assert bad == ["b.md", "#nowhere"]


def broken(doc: Path, target: str) -> bool:
    path, _, anchor = target.partition("#")
    dest = (doc.parent / path) if path else doc
    if not dest.exists():
        return True
    return bool(anchor) and dest.suffix == ".md" and anchor not in anchors(dest)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_links_resolve(doc):
    bad = [t for t in links(doc) if broken(doc, t)]
    assert not bad, f"{doc.relative_to(ROOT)}: broken links {bad}"
