"""Quality rules: Sluice's polars chain vs datatrove's Gopher/C4/FineWeb filters, on the same corpus, in one run.

    .venv/bin/python bench/quality.py [--docs 100000]

Builds a real-text corpus (KJV passages and anime-quote collections from the packaged demo text, with planted junk:
repeated lines and n-grams, bullet and hash lists, lorem ipsum, javascript/policy lines, short-line menus), then
runs datatrove 0.10.1 (its own virtualenv, made here if missing, as ../shared/PEERS.md says) with
LocalPipelineExecutor(tasks=2, workers=2) in a subprocess, and Sluice's quality stage function (language ID and
PII off: datatrove's chain has neither) on the same documents. Reports docs/s, the ratio, and per-rule agreement of the
keep/drop decisions. Writes bench/results/quality.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VENV = HERE.parent / ".bench-venv" / "datatrove"
FILES = 8

DT_FAMILY = {  # datatrove filter reason -> Sluice reason code
    "dup_para_frac": "gopher_repetition.dup_para_frac", "dup_para_char_frac": "gopher_repetition.dup_para_char_frac",
    "dup_line_frac": "gopher_repetition.dup_line_frac", "dup_line_char_frac": "gopher_repetition.dup_line_char_frac",
    **{f"top_{n}_gram": f"gopher_repetition.top_{n}_gram" for n in (2, 3, 4)},
    **{f"duplicated_{n}_n_grams": f"gopher_repetition.dup_{n}_gram" for n in range(5, 11)},
    "gopher_short_doc": "gopher.word_count", "gopher_long_doc": "gopher.word_count",
    "gopher_below_avg_threshold": "gopher.mean_word_length", "gopher_above_avg_threshold": "gopher.mean_word_length",
    "gopher_too_many_hashes": "gopher.symbol_ratio", "gopher_too_many_ellipsis": "gopher.symbol_ratio",
    "gopher_too_many_bullets": "gopher.bullet_lines", "gopher_too_many_end_ellipsis": "gopher.ellipsis_lines",
    "gopher_below_alpha_threshold": "gopher.alpha_words", "gopher_enough_stop_words": "gopher.stop_words",
    "lorem_ipsum": "c4.lorem_ipsum", "curly_bracket": "c4.curly_bracket", "too_few_sentences": "c4.min_sentences",
    "empty": "fineweb.empty", "line_punct_ratio": "fineweb.line_punct_ratio",
    "short_line_ratio": "fineweb.short_line_ratio", "char_dup_ratio": "fineweb.char_dup_ratio",
    "list_ratio": "fineweb.list_ratio",
}

DATATROVE_SCRIPT = r'''
import sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.filters import (GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter,
                                        FineWebQualityFilter)
src, out = sys.argv[1], sys.argv[2]
ex = lambda name: JsonlWriter(f"{out}/excluded/{name}", compression=None)
pipeline = [
    JsonlReader(src, compression=None),
    GopherRepetitionFilter(exclusion_writer=ex("gopher_repetition")),
    GopherQualityFilter(exclusion_writer=ex("gopher")),
    C4QualityFilter(exclusion_writer=ex("c4")),
    FineWebQualityFilter(exclusion_writer=ex("fineweb")),
    JsonlWriter(f"{out}/kept", compression=None),
]
t = time.perf_counter()
LocalPipelineExecutor(pipeline, tasks=2, workers=2, logging_dir=f"{out}/logs").run()
print("SECONDS", time.perf_counter() - t)
'''

JUNK = [
    lambda r, base: "\n".join([base.split(".")[0] + "."] * r.randint(4, 12)),  # repeated line
    lambda r, base: "\n".join(f"- item {i}: {w}" for i, w in enumerate(base.split()[:30])),  # bullet list
    lambda r, base: " ".join(f"#{w}" for w in base.split()[:60]),  # hashtags
    lambda r, base: base + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit, with the rest.",
    lambda r, base: base.replace(". ", ".\nPlease enable JavaScript to view this page.\n", 3),
    lambda r, base: "\n".join(w for w in base.split()[:80]),  # one word per line (menus)
    lambda r, base: (base.split(",")[0] + " ") * r.randint(8, 20),  # repeated n-grams
    lambda r, base: base + "\nfunction f() { return the_value; }",
    lambda r, base: "\n".join(s.strip() + "..." for s in base.split(".") if s.strip()),  # ellipsis lines
    lambda r, base: base + "\nThis site uses cookies. Read our privacy policy and terms of use.",
]


def build_corpus(path: Path, n_docs: int, seed: int = 7) -> int:
    sys.path.insert(0, str(HERE.parent))
    from tasks.ops.demo_corpus import kjv_records, quote_records

    rng = random.Random(seed)
    verses = [r["text"] for r in kjv_records()]
    quotes = [r["text"] for r in quote_records()]
    docs = []
    while len(docs) < n_docs:
        if rng.random() < 0.7:
            i = rng.randrange(len(verses))
            k = rng.randint(1, 14)
            sep = rng.choice([" ", " ", "\n", "\n\n"])
            base = sep.join(verses[i:i + k])
        else:
            base = rng.choice([" ", "\n"]).join(rng.sample(quotes, rng.randint(1, 8)))
        if rng.random() < 0.12:
            base = rng.choice(JUNK)(rng, base)
        if base.strip():
            docs.append(base)
    # several files, so datatrove's 2 tasks each get half (it parallelises by file)
    for old in path.parent.glob("docs-*.jsonl"):
        old.unlink()
    per = -(-len(docs) // FILES)
    for k in range(FILES):
        with open(path.parent / f"docs-{k:02d}.jsonl", "w") as fh:
            for i in range(k * per, min(len(docs), (k + 1) * per)):
                fh.write(json.dumps({"id": f"d{i}", "text": docs[i]}) + "\n")
    return len(docs)


def ensure_datatrove() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "datatrove[io]==0.10.1", "spacy", "xxhash<4", "orjson", "datasketch", "psutil",
                        "regex", "tokenizers"], check=True)
    return py


def run_datatrove(py: Path, corpus: Path, out: Path) -> tuple[float, dict[str, str]]:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.run([str(py), "-c", DATATROVE_SCRIPT, str(corpus.parent), str(out)], capture_output=True,
                          text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    decisions = {}
    for family_dir in (out / "excluded").iterdir():
        for f in family_dir.glob("*.jsonl"):
            for line in f.read_text().splitlines():
                d = json.loads(line)
                decisions[d["id"]] = DT_FAMILY.get(d["metadata"].get("filter_reason"), family_dir.name)
    return wall, decisions


def run_sluice(corpus: Path, datatrove_semantics: bool = True) -> tuple[float, dict[str, str], int]:
    """datatrove_semantics: no reflow of hard-wrapped text and no bound on C4's rewrite (issue 26), which
    datatrove has neither of, so the decisions compare rule for rule; False: Sluice's defaults."""
    sys.path.insert(0, str(HERE.parent))
    import polars as pl

    from schemas.config import LanguageConfig, PIIConfig, QualityConfig
    from tasks.stages.quality import quality

    df = pl.concat([pl.read_ndjson(f) for f in sorted(corpus.parent.glob("docs-*.jsonl"))])
    cfg = QualityConfig(language=LanguageConfig(enabled=False), pii=PIIConfig(enabled=False))
    if datatrove_semantics:
        cfg = cfg.model_copy(update={"reflow_wrapped": False,
                                     "c4": cfg.c4.model_copy(update={"max_removed_fraction": 1.0})})
    shard = 50_000
    t = time.perf_counter()
    results = [quality(df.slice(i, shard), cfg) for i in range(0, df.height, shard)]
    wall = time.perf_counter() - t
    rejected = pl.concat([r.rejected.select("id", "reason") for r in results])
    decisions = {i: r.removeprefix("quality.") for i, r in rejected.iter_rows()}
    return wall, decisions, df.height


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--work", default=str(RESULTS / "quality-work"))
    args = parser.parse_args()
    work = Path(args.work)
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus" / "docs.jsonl"
    n = build_corpus(corpus, args.docs)
    py = ensure_datatrove()
    dt_s, dt = run_datatrove(py, corpus, work / "datatrove")
    sl_s, sl, rows = run_sluice(corpus)
    default_s, default, _ = run_sluice(corpus, datatrove_semantics=False)
    ids = [f"d{i}" for i in range(n)]
    agree = sum((i in dt) == (i in sl) for i in ids)
    lines = [
        f"Corpus: {n:,} documents ({sum(f.stat().st_size for f in corpus.parent.glob('docs-*.jsonl')) / 1e6:.1f}"
        f" MB JSONL in {FILES} files), 2 cores.",
        "",
        "| engine | seconds | docs/s | dropped |",
        "|---|---:|---:|---:|",
        f"| datatrove 0.10.1 (2 tasks, 2 workers) | {dt_s:.1f} | {n / dt_s:,.0f} | {len(dt):,} |",
        f"| Sluice quality stage (polars), datatrove's semantics | {sl_s:.1f} | {n / sl_s:,.0f} | {len(sl):,} |",
        f"| Sluice quality stage, defaults (reflow, bounded edits) | {default_s:.1f} | {n / default_s:,.0f} | "
        f"{len(default):,} |",
        "",
        f"Speed ratio Sluice / datatrove: **{dt_s / sl_s:.1f}x**. Keep/drop agreement: **{agree / n:.2%}**.",
        "",
        "| rule (first failing, datatrove's order) | datatrove drops | Sluice drops | both | agreement on this rule |",
        "|---|---:|---:|---:|---:|",
    ]
    rules = sorted(set(dt.values()) | set(sl.values()))
    for rule in rules:
        d = {i for i, r in dt.items() if r == rule}
        s = {i for i, r in sl.items() if r == rule}
        lines.append(f"| {rule} | {len(d):,} | {len(s):,} | {len(d & s):,} | "
                     f"{1 - len(d ^ s) / n:.2%} |")
    mismatches = [i for i in ids if (i in dt) != (i in sl)][:20]
    table = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.md").write_text(table + "\n")
    (RESULTS / "quality-mismatches.json").write_text(json.dumps(
        [{"id": i, "datatrove": dt.get(i), "sluice": sl.get(i)} for i in mismatches], indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    sys.exit(main())
