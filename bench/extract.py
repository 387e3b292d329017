"""Main-text extraction from HTML: trafilatura against resiliparse on the same pages, with all visible text as the
baseline (issue 28 item 2: compare at least two, pick by measurement).

    .venv/bin/python bench/extract.py [--per-site 60]

Pages with a known main text, from documentation sites installed on this machine: each site's HTML wraps its
content in one element (mdBook: <main>; Node's API docs: #apicontent; npm's docs: #_content), around navigation,
sidebars, headers and footers. The reference is that element's text (lxml); an extractor is scored per page by
word-level precision, recall and F1 of its output against the reference (multisets of lowercased words, as in
trafilatura's and the article-extraction benchmarks' evaluations), averaged over pages; and by pages per second on
one core. The development sites (the Rust book, the Cargo book) are where settings were looked at; Node's and npm's
docs are reported as held out. A site missing on a machine is skipped and said so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
RUST = Path.home() / ".rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html"
SITES = {  # name: (folder glob, XPath of the main content, split)
    "rust-book": (RUST / "book", "ch*.html", "//main", "dev"),
    "cargo-book": (RUST / "cargo", "**/*.html", "//main", "dev"),
    "node-api": (Path("/usr/share/doc/nodejs/api"), "*.html", "//*[@id='apicontent']", "held out"),
    "npm-docs": (Path("/usr/lib/node_modules/npm/docs/output"), "*/*.html", "//*[@id='_content']", "held out"),
}
WORD = re.compile(r"\w+", re.U)


def reference(html: str, xpath: str) -> str | None:
    import lxml.html

    tree = lxml.html.fromstring(html)
    for bad in tree.xpath("//script|//style|//noscript"):
        bad.drop_tree()
    found = tree.xpath(xpath)
    return found[0].text_content() if found else None


def words(text: str) -> Counter:
    return Counter(w.lower() for w in WORD.findall(text or ""))


def scores(got: str, want: str) -> tuple[float, float, float]:
    g, w = words(got), words(want)
    common = sum((g & w).values())
    p = common / max(sum(g.values()), 1)
    r = common / max(sum(w.values()), 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def extractors() -> dict:
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text

    from tasks.stages.extract.html import main_text

    return {
        "all visible text (baseline)": lambda h: extract_plain_text(h, main_content=False),
        "resiliparse main_content": lambda h: extract_plain_text(h, main_content=True),
        "trafilatura (defaults)": lambda h: trafilatura.extract(h, include_comments=False) or "",
        "trafilatura favor_recall": lambda h: trafilatura.extract(h, include_comments=False, favor_recall=True) or "",
        "Sluice extract stage": lambda h: main_text(h).text,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-site", type=int, default=60)
    args = parser.parse_args()
    pages = []
    for site, (folder, pattern, xpath, split) in SITES.items():
        files = sorted(folder.glob(pattern))[: args.per_site] if folder.exists() else []
        if not files:
            print(f"{site}: not on this machine, skipped")
        for f in files:
            html = f.read_text(errors="replace")
            ref = reference(html, xpath)
            if ref and len(WORD.findall(ref)) >= 50:
                pages.append((site, split, html, ref))
    rows = []
    for name, fn in extractors().items():
        per_site: dict[str, list] = {}
        started = time.perf_counter()
        outs = [fn(html) for _, _, html, _ in pages]
        seconds = time.perf_counter() - started
        for (site, split, _, ref), out in zip(pages, outs, strict=True):
            per_site.setdefault((site, split), []).append(scores(out, ref))
        for (site, split), s in per_site.items():
            n = len(s)
            rows.append({"extractor": name, "site": site, "split": split, "pages": n,
                         "precision": sum(x[0] for x in s) / n, "recall": sum(x[1] for x in s) / n,
                         "f1": sum(x[2] for x in s) / n, "pages_per_s": len(pages) / seconds})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "extract.json").write_text(json.dumps(rows, indent=2))
    print("| extractor | site | split | pages | precision | recall | F1 | pages/s (all sites) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['extractor']} | {r['site']} | {r['split']} | {r['pages']} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['f1']:.3f} | {r['pages_per_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
