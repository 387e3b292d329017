"""Hard-wrapped text through the quality stage: rows and characters kept, before and after issue 26.

    .venv/bin/python bench/wrapped.py [--man-pages 300]

Real wrapped text from this machine, one paragraph (>= 40 words) a row:
  development set (the thresholds in tasks/text/wrapped.py were chosen on it): Debian's common-licenses texts and
  the docstrings of Python's standard library;
  held-out set (not looked at while tuning): man pages rendered by `man` at 80 columns, and the README/NEWS files
  under /usr/share/doc.
Text that is not wrapped, where nothing may change: bench/quality.py's corpus (real KJV/quote text with planted
junk lines, 20,000 docs) and the demo corpus.

Each set runs through the quality stage function (language ID on, as in a real run) three ways: as landed before
(no reflow, no bound on edits), reflow only, and the new default (reflow + max_removed_fraction 0.5). Writes
bench/results/wrapped.md.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import polars as pl  # noqa: E402

from schemas.config import QualityConfig  # noqa: E402
from tasks.stages.quality import load_language_model, quality  # noqa: E402

MIN_WORDS = 40


def paragraphs(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = "\n".join(line.rstrip() for line in para.strip("\n").split("\n"))
        if len(para.split()) >= MIN_WORDS:
            out.append(para)
    return out


def licenses() -> list[str]:
    root = Path("/usr/share/common-licenses")
    return [p for f in sorted(root.iterdir()) if f.is_file() for p in paragraphs(f.read_text(errors="replace"))]


def docstrings(limit: int = 3000) -> list[str]:
    out = []
    lib = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    for f in sorted(lib.glob("*.py")):
        try:
            tree = ast.parse(f.read_text(errors="replace"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    out.extend(paragraphs(doc))
        if len(out) >= limit:
            break
    return out[:limit]


def man_pages(n: int) -> list[str]:
    pages = sorted(p.name.split(".")[0] for p in Path("/usr/share/man/man1").iterdir())
    rng = random.Random(5)
    out = []
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0"}
    for name in rng.sample(pages, min(n, len(pages))):
        done = subprocess.run(["man", "-P", "cat", "1", name], capture_output=True, text=True, env=env, timeout=30)
        if done.returncode == 0:  # without a terminal man overstrikes bold and underlined text: undo it
            out.extend(paragraphs(re.sub(r".\x08", "", done.stdout)))
    return out


def doc_readmes(limit: int = 4000) -> list[str]:
    out = []
    for f in sorted(Path("/usr/share/doc").glob("*/*")):
        if not re.match(r"(README|NEWS)(\.Debian)?(\.gz)?$", f.name) or not f.is_file():
            continue
        raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        out.extend(paragraphs(raw.decode(errors="replace")))
    return random.Random(9).sample(out, min(limit, len(out)))


def unwrapped(n: int) -> list[str]:
    sys.path.insert(0, str(HERE))
    from quality import build_corpus

    tmp = HERE / "results" / "wrapped-work"
    tmp.mkdir(parents=True, exist_ok=True)
    build_corpus(tmp / "docs.jsonl", n)
    return pl.concat([pl.read_ndjson(f) for f in sorted(tmp.glob("docs-*.jsonl"))])["text"].to_list()


def demo() -> list[str]:
    from tasks.ops.demo_corpus import kjv_records, quote_records

    return [r["text"] for r in kjv_records()] + [r["text"] for r in quote_records()]


CONFIGS = {
    "before": {"reflow_wrapped": False, "c4": {"max_removed_fraction": 1.0}, "pii": {"max_removed_fraction": 1.0}},
    "reflow only": {"c4": {"max_removed_fraction": 1.0}, "pii": {"max_removed_fraction": 1.0}},
    "new default": {},
}


def run(texts: list[str], cfg: dict, model) -> tuple[pl.DataFrame, float, dict]:
    df = pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts})
    params = QualityConfig.model_validate(cfg)
    started = time.perf_counter()
    res = [quality(df.slice(i, 20_000), params, model) for i in range(0, df.height, 20_000)]
    seconds = time.perf_counter() - started
    kept = pl.concat([r.kept.select("id", "text") for r in res])
    rejected = pl.concat([r.rejected.select("id", "reason") for r in res])
    counts: dict = {}
    for r in res:
        for k, v in r.stats.counts.items():
            counts[k] = counts.get(k, 0) + v
    out = df.select("id", arrived="text").join(kept, on="id", how="left").join(rejected, on="id", how="left")
    return out, seconds, counts


def measure(name: str, texts: list[str], model) -> dict:
    chars_in = sum(len(t) for t in texts)
    row = {"set": name, "rows": len(texts), "chars": chars_in}
    outs = {}
    for label, cfg in CONFIGS.items():
        out, seconds, counts = run(texts, cfg, model)
        outs[label] = out
        kept = out.filter(pl.col("text").is_not_null())
        # every word kept (C4 strips each line's indentation, which is not a loss)
        whole = kept.filter(pl.col("text").str.split(" ").list.eval(pl.element().str.strip_chars()).list.join(" ")
                            .str.replace_all(r"\s+", " ") == pl.col("arrived").str.replace_all(r"\s+", " ")
                            .str.strip_chars()).height
        row[label] = {"kept": kept.height, "kept_whole": whole, "chars_kept": int(kept["text"].str.len_chars().sum()),
                      "wrapped_rows": counts.get("c4.wrapped_rows", 0), "seconds": round(seconds, 2),
                      "reasons": out.filter(pl.col("reason").is_not_null())["reason"].value_counts(sort=True)
                      .head(4).rows()}
    # the target: the same paragraphs on one line each, as extracted web text has them
    flat, _, _ = run([" ".join(t.split()) for t in texts], CONFIGS["new default"], model)
    target = flat.select("id", kept_flat=pl.col("text").is_not_null())
    for label in CONFIGS:
        agree = outs[label].select("id", kept=pl.col("text").is_not_null()).join(target, on="id")
        row[label]["same_as_one_line"] = agree.filter(pl.col("kept") == pl.col("kept_flat")).height
    row["kept_one_line"] = target["kept_flat"].sum()
    a, b = outs["before"], outs["reflow only"]
    both = a.join(b, on="id", suffix="_b")
    row["decision_changed"] = both.filter(pl.col("reason").ne_missing(pl.col("reason_b"))).height
    row["text_changed"] = both.filter(pl.col("text").is_not_null() & pl.col("text_b").is_not_null()
                                      & (pl.col("text") != pl.col("text_b"))).height
    return row


def table(rows: list[dict]) -> str:
    lines = ["| set | rows | config | rows kept | every word kept | chars kept | seen as wrapped | "
             "decision as on one line |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for label in CONFIGS:
            c = r[label]
            lines.append(f"| {r['set']} | {r['rows']:,} | {label} | {c['kept']:,} ({c['kept'] / r['rows']:.1%}) | "
                         f"{c['kept_whole']:,} | {c['chars_kept'] / r['chars']:.1%} | {c['wrapped_rows']:,} | "
                         f"{c['same_as_one_line'] / r['rows']:.1%} |")
        lines.append(f"| {r['set']} | | target: one line a paragraph | {r['kept_one_line']:,} | | | | |")
    lines += ["", "| set | decisions changed by reflow | kept texts changed by reflow |", "|---|---:|---:|"]
    lines += [f"| {r['set']} | {r['decision_changed']:,} | {r['text_changed']:,} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--man-pages", type=int, default=300)
    ap.add_argument("--unwrapped-docs", type=int, default=20_000)
    args = ap.parse_args()
    model = load_language_model(QualityConfig())
    sets = [("dev: common-licenses", licenses()), ("dev: stdlib docstrings", docstrings()),
            ("held-out: man pages", man_pages(args.man_pages)), ("held-out: /usr/share/doc README/NEWS", doc_readmes()),
            ("not wrapped: bench/quality corpus", unwrapped(args.unwrapped_docs)),
            ("not wrapped: demo text", demo())]
    rows = []
    for name, texts in sets:
        rows.append(measure(name, texts, model))
        print(json.dumps(rows[-1]), flush=True)
    md = table(rows)
    print(md)
    out = HERE / "results" / "wrapped.md"
    out.write_text(f"# bench/wrapped.py ({time.strftime('%Y-%m-%d')})\n\n{md}\n\n```json\n"
                   + "\n".join(json.dumps(r) for r in rows) + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
