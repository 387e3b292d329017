"""Decontamination: Sluice's decontaminate stage vs datatrove's NGramsDecontIndexer + NGramsDecontFilter, same corpus
and the same benchmark items, in one run.

    .venv/bin/python bench/decontaminate.py [--docs 100000]

Corpus: documents of 6 random KJV verses, with planted GSM8K test and HumanEval items in seven forms (verbatim in the
middle of a long document; case, whitespace and punctuation changed; a contiguous 60% of the item; the answer only;
the question only; HumanEval prompt + solution; HumanEval prompt only) and hard negatives (a document holding the
first 9 words of an item, or a common templated phrase). Both engines index GSM8K (question + answer) and HumanEval
(prompt + canonical_solution) with 13-grams; datatrove with find_query_ngrams=True so questions count, run by
LocalPipelineExecutor(tasks=2, workers=2) in its own virtualenv (bench/quality.py makes it). The index is built with
the indexer's own compute_hashes and file format; its run() is not called because it imports lighteval's task
registry, whose dependency tree is not installable offline, for no tasks here.
Sluice runs its stage function over the same 8 JSONL files on 2 threads,
reading included. Reported: docs/s, ratio, recall per planted form, false positives (any document flagged that was
not planted). Writes bench/results/decontaminate.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
FILES = 8

DATATROVE_SCRIPT = r'''
import json, sys, time
from collections import defaultdict
import numpy as np
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
src, items_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = NGramsDecontConfig(n_grams=13, find_query_ngrams=True, find_overlap_ngrams=True)
items = json.load(open(items_path))
t = time.perf_counter()
# NGramsDecontIndexer.run() minus its lighteval task registry (no registry tasks here; lighteval's own dependency
# tree is not installable offline): the same compute_hashes and the same index files
indexer = NGramsDecontIndexer(f"{out}/index", lighteval_tasks=[], config=cfg)
hashes = defaultdict(set)
for i in items:
    hashes[i["task"]].update(indexer.compute_hashes(i["label"], i["query"]))
for task, task_hashes in hashes.items():
    with indexer.output_folder.open(f"{task}.index.hashes", mode="wb") as f:
        np.array(list(task_hashes), dtype=cfg.hash_config.np_descr).tofile(f)
index_s = time.perf_counter() - t
pipeline = [JsonlReader(src, compression=None),
            NGramsDecontFilter(f"{out}/index", config=cfg,
                               exclusion_writer=JsonlWriter(f"{out}/excluded", compression=None)),
            JsonlWriter(f"{out}/kept", compression=None)]
LocalPipelineExecutor(pipeline, tasks=2, workers=2, logging_dir=f"{out}/logs").run()
print("SECONDS", time.perf_counter() - t, "INDEX", index_s)
'''


def load_items() -> tuple[list[dict], list[dict]]:
    from tasks.stages.decontaminate import builtin_path

    gsm = [json.loads(line) for line in Path(builtin_path("gsm8k")).read_text().splitlines() if line.strip()]
    he = [json.loads(line) for line in gzip.decompress(Path(builtin_path("humaneval")).read_bytes()).splitlines()
          if line.strip()]
    return gsm, he


def build(folder: Path, n_docs: int, seed: int = 17) -> dict[str, str]:
    """Writes the corpus; returns planted doc id -> form."""
    from tasks.ops.demo_corpus import kjv_records

    verses = [r["text"] for r in kjv_records()]
    gsm, he = load_items()
    rng = random.Random(seed)

    def filler(k: int) -> str:
        return " ".join(rng.sample(verses, k))

    per_form = max(20, n_docs // 1000)  # 0.1% of the corpus per form
    forms = {
        "gsm8k verbatim, mid-document": lambda g, h: f"{filler(12)}\n{g['question']}\n{g['answer']}\n{filler(12)}",
        "gsm8k case/space/punct": lambda g, h: re.sub(r"\s+", "  ", (g["question"] + " " + g["answer"]).upper())
        .replace(",", ";").replace("?", "!").replace(".", " ."),
        "gsm8k 60% span": lambda g, h: filler(3) + " " + " ".join(
            (g["question"] + " " + g["answer"]).split()[: int(0.6 * len((g["question"] + " " + g["answer"]).split()))]),
        "gsm8k answer only": lambda g, h: filler(4) + "\nSolution: " + g["answer"],
        "gsm8k question only": lambda g, h: filler(4) + " " + g["question"] + " " + filler(4),
        "humaneval prompt+solution": lambda g, h: filler(3) + "\n" + h["prompt"] + h["canonical_solution"],
        "humaneval prompt only": lambda g, h: "Exercise:\n" + h["prompt"] + "\n" + filler(3),
    }
    docs, planted = [], {}
    for form, make in forms.items():
        for _ in range(per_form):
            doc_id = f"plant-{len(planted)}"
            planted[doc_id] = form
            docs.append((doc_id, make(rng.choice(gsm), rng.choice(he))))
    for k in range(per_form * 3):  # hard negatives: a shared opening, a templated phrase
        g = rng.choice(gsm)
        docs.append((f"neg-{k}", f"{filler(3)} {' '.join(g['question'].split()[:9])} {filler(3)}"))
    docs.append(("neg-template", "Let's think step by step. " + filler(5)))
    while len(docs) < n_docs:
        docs.append((f"b{len(docs)}", filler(6)))
    rng.shuffle(docs)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    per = -(-len(docs) // FILES)
    for f in range(FILES):
        with open(folder / f"docs-{f:02d}.jsonl", "w") as fh:
            for doc_id, text in docs[f * per:(f + 1) * per]:
                fh.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return planted


def run_datatrove(py: Path, corpus: Path, work: Path) -> tuple[float, float, set[str]]:
    gsm, he = load_items()
    items = ([{"task": "gsm8k", "query": g["question"], "label": g["answer"]} for g in gsm]
             + [{"task": "humaneval", "query": h["prompt"], "label": h["canonical_solution"]} for h in he])
    items_path = work / "items.json"
    items_path.write_text(json.dumps(items))
    out = work / "datatrove"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.run([str(py), "-c", DATATROVE_SCRIPT, str(corpus), str(items_path), str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    index_s = float(re.search(r"INDEX ([\d.]+)", proc.stdout).group(1))
    flagged = set()
    for f in (out / "excluded").glob("*.jsonl"):
        flagged |= {json.loads(line)["id"] for line in f.read_text().splitlines()}
    return wall, index_s, flagged


def run_sluice(corpus: Path) -> tuple[float, float, set[str]]:
    import polars as pl

    from schemas.config import DecontaminateConfig
    from tasks.stages.decontaminate import decontaminate, load_index

    cfg = DecontaminateConfig()
    t = time.perf_counter()
    index = load_index(cfg)  # the stage's setup, once per process
    index_s = time.perf_counter() - t

    def one(path: Path) -> set[str]:
        df = pl.read_ndjson(path, schema={"id": pl.String, "text": pl.String}).with_columns(
            timestamp=pl.lit(None, pl.Datetime("us", "UTC")))
        return set(decontaminate(df, cfg, index).rejected["id"])

    with ThreadPoolExecutor(2) as pool:
        flagged = set().union(*pool.map(one, sorted(corpus.glob("*.jsonl"))))
    return time.perf_counter() - t, index_s, flagged


def score(flagged: set[str], planted: dict[str, str]) -> dict:
    forms = sorted(set(planted.values()))
    recall = {f: sum(1 for d, pf in planted.items() if pf == f and d in flagged) /
              sum(1 for pf in planted.values() if pf == f) for f in forms}
    return {"recall": recall, "recall_all": sum(1 for d in planted if d in flagged) / len(planted),
            "false_positives": len(flagged - set(planted)),
            "false_positive_ids": sorted(flagged - set(planted))[:10]}


def main() -> int:
    from quality import ensure_datatrove

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--work", default=str(RESULTS / "decontaminate-work"))
    args = parser.parse_args()
    work = Path(args.work)
    corpus = work / "corpus"
    planted = build(corpus, args.docs)
    py = ensure_datatrove()
    s_wall, s_index, s_flagged = run_sluice(corpus)
    print(f"sluice    {s_wall:8.2f} s (index {s_index:.2f} s)", flush=True)
    d_wall, d_index, d_flagged = run_datatrove(py, corpus, work)
    print(f"datatrove {d_wall:8.2f} s (index {d_index:.2f} s)", flush=True)
    s, d = score(s_flagged, planted), score(d_flagged, planted)
    lines = [f"{args.docs:,} docs, {len(planted):,} planted ({len(set(planted.values()))} forms), 2 cores", "",
             "| | Sluice | datatrove |", "|---|---:|---:|",
             f"| wall (s) | {s_wall:.1f} | {d_wall:.1f} |",
             f"| index build (s) | {s_index:.2f} | {d_index:.2f} |",
             f"| docs/s | {args.docs / s_wall:,.0f} | {args.docs / d_wall:,.0f} |",
             f"| speed ratio | **{d_wall / s_wall:.1f}x** | 1x |",
             f"| recall, all plants | {s['recall_all']:.1%} | {d['recall_all']:.1%} |"]
    lines += [f"| recall: {form} | {s['recall'][form]:.1%} | {d['recall'][form]:.1%} |" for form in s["recall"]]
    lines += [f"| false positives | {s['false_positives']} | {d['false_positives']} |"]
    table = "\n".join(lines)
    print("\n" + table)
    print("sluice false positives:", s["false_positive_ids"], "datatrove:", d["false_positive_ids"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decontaminate.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
