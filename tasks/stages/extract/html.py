"""One page's main text, title and declared language. The extractor is a library (resiliparse by default, or
trafilatura: bench/extract.py compares them); ftfy repairs mojibake only where its badness check finds some."""

from __future__ import annotations

import re
from dataclasses import dataclass

_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_LANG = re.compile(r"<html[^>]*\blang\s*=\s*[\"']?([A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*)", re.I)
_TAG = re.compile(r"<[a-zA-Z!/?]")
# UTF-8 read as windows-1252/latin-1 always shows one of these lead characters; ftfy's own check (half the
# extraction's time when run on every page, bench/extract.py) runs only on text that has one
_MOJIBAKE_LEAD = re.compile("[\u00c2\u00c3\u00c5\u00c4\u00ce\u00cf\u00d0\u00d1\u00e2\u00ef]")


@dataclass(frozen=True)
class Extracted:
    text: str
    title: str | None
    language: str | None
    repaired: bool  # ftfy changed the text


def looks_like_html(text: str) -> bool:
    """A WET conversion or a text/plain response is already text; markup in its first 1,000 characters says HTML."""
    return bool(_TAG.search(text[:1000]))


def _extract(html: str, extractor: str) -> str:
    if extractor == "trafilatura":
        import trafilatura

        return trafilatura.extract(html, include_comments=False) or ""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=True)


def _repaired(text: str) -> tuple[str, bool]:
    """ftfy on the lines its badness check flags, not on the whole page (a long page with one bad line would
    otherwise cost ftfy's full pass: 3x the extraction, measured on Node's docs)."""
    import ftfy
    from ftfy.badness import is_bad

    lines = text.split("\n")
    changed = False
    for i, line in enumerate(lines):
        if _MOJIBAKE_LEAD.search(line) and is_bad(line):
            fixed = ftfy.fix_text(line)
            changed |= fixed != line
            lines[i] = fixed
    return ("\n".join(lines), True) if changed else (text, False)


def main_text(html: str, extractor: str = "resiliparse", repair: bool = True) -> Extracted:
    import html as htmllib

    text = _extract(html, extractor).strip()
    repaired = False
    if repair and text and _MOJIBAKE_LEAD.search(text):
        text, repaired = _repaired(text)
    title = _TITLE.search(html[:20_000])
    lang = _LANG.search(html[:5_000])
    return Extracted(text, " ".join(htmllib.unescape(title.group(1)).split()) or None if title else None,
                     lang.group(1).lower().replace("_", "-") if lang else None, repaired)
