"""How fast the score stage's two tokenizers turn documents into the tokens a model keeps: the transformers wrapper on
whole texts (how the stage tokenized before, and how NeMo Curator's and most classifiers' feeders call it) against
`tokenizing.encoder` (the Rust backend, only the leading part of a long text), on one thread and on all of them.

    python bench/tokenizer_speed.py [--docs 4096] [--threads 1,0] [--name tokenizer_speed.md]

Tokens/s counts the tokens kept (256 for the embedder, 511 for the LM at most), the ones a model scores; the ids
are checked equal. `--threads 0` is every core (tokenizers' own thread pool, RAYON_NUM_THREADS unset). Each thread
count runs in its own process, because the pool's size is fixed at its first use.
Corpora: `long`, the CPython documentation's topics whole (mean 5.9 KB, up to 62 KB); `short`, gpu_check.py's 1 to 12
sentence documents (mean 0.95 KB). The packaged tokenizers when installed; otherwise nothing is measured.
Writes bench/results/tokenizer_speed.md (or --name under --out); gpu_check.py runs it on the lent machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

TOKENIZERS = {"embedder": (256, True, False), "lm": (511, False, True)}  # kept tokens, special tokens, chars


def corpora(n: int) -> dict[str, list[str]]:
    from pydoc_data.topics import topics

    import gpu_check

    whole = list(topics.values())
    return {"long": (whole * (n // len(whole) + 1))[:n], "short": gpu_check.corpus(n)}


def measure(n: int) -> list[dict]:
    """This process's rows: best of 3 for each tokenizer x corpus x path; the ids of both paths must agree."""
    from transformers import AutoTokenizer

    from schemas.config import ScoreConfig
    from tasks.models import loading, tokenizing

    cfg = ScoreConfig()
    folders = {"embedder": loading.embedder_folder(cfg.embedder), "lm": loading.lm_folder(cfg.lm)}
    rows = []
    for which, (length, special, chars) in TOKENIZERS.items():
        tok = AutoTokenizer.from_pretrained(folders[which], local_files_only=True)
        encode = tokenizing.encoder(tok, length, special, chars)
        for corpus, docs in corpora(n).items():
            def wrapper(docs=docs, tok=tok, length=length, special=special, chars=chars):
                return tok(docs, truncation=True, max_length=length, add_special_tokens=special,
                           return_offsets_mapping=chars)  # what the LM took its bits per character from before

            seconds, ids = {}, {}
            for path, run in (("wrapper", wrapper), ("encoder", lambda docs=docs, encode=encode: encode(docs))):
                best = float("inf")
                for _ in range(3):
                    began = time.perf_counter()
                    ids[path] = run()["input_ids"]
                    best = min(best, time.perf_counter() - began)
                seconds[path] = best
            if ids["wrapper"] != ids["encoder"]:
                raise SystemExit(f"{which} on {corpus}: the encoder's ids differ from the wrapper's")
            rows.append({"tokenizer": which, "corpus": corpus, "chars": sum(map(len, docs)) / len(docs),
                         "tokens": sum(map(len, ids["encoder"])), **seconds})
    return rows


def table(by_threads: dict[int, list[dict]]) -> str:
    lines = ["| tokenizer | corpus | threads | wrapper, whole texts (tokens/s) | encoder (tokens/s) | ratio |",
             "|---|---|---:|---:|---:|---:|"]
    for threads, rows in by_threads.items():
        for r in rows:
            lines.append(f"| {r['tokenizer']} | {r['corpus']} ({r['chars']:,.0f} chars) | {threads} | "
                         f"{r['tokens'] / r['wrapper']:,.0f} | {r['tokens'] / r['encoder']:,.0f} | "
                         f"{r['wrapper'] / r['encoder']:.1f}x |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=4096, help="documents per corpus (one tokenizer call)")
    ap.add_argument("--threads", default="1,0", help="thread counts, comma-separated; 0 = every core")
    ap.add_argument("--out", default=None, help="folder to write --name in (default bench/results/)")
    ap.add_argument("--name", default="tokenizer_speed.md")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: print this process's rows
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one)))
        return 0
    by_threads = {}
    for threads in (int(t) for t in args.threads.split(",")):
        env = dict(os.environ)
        env.pop("RAYON_NUM_THREADS", None)
        env.pop("TOKENIZERS_PARALLELISM", None)
        if threads:
            env["RAYON_NUM_THREADS"] = str(threads)
        child = subprocess.run([sys.executable, __file__, "--one", str(args.docs)], env=env, capture_output=True,
                               text=True)
        if child.returncode:
            print(child.stderr[-2000:], file=sys.stderr)
            return child.returncode
        by_threads[threads or os.cpu_count()] = json.loads(child.stdout.strip().splitlines()[-1])
    text = (f"Tokenization, {args.docs:,} documents per call, {os.cpu_count()} cores:\n\n" + table(by_threads))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / args.name).write_text(text + "\n")
        print(text)
    else:
        import tables

        tables.publish(args.name, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
