"""Tokenization: Sluice's token shards (tasks/text/token_shards.py, what publish.tokens runs per part) against
datatrove's DocumentTokenizer and a plain `tokenizer.encode_batch` loop, on the same documents and tokenizer.

    .venv/bin/python bench/tokens.py [--docs 200000] [--work DIR]

Documents: the first --docs rows of the 100k dedup holdout's JSONL (bench/results/dedup-work/corpus), repeated
when asked for more. Tokenizer: the packaged SmolLM2-135M-Instruct tokenizer.json (49,152 ids, EOS
<|endoftext|>), from Sluice's model cache. Each engine reads the same JSONL and writes its shards to disk:
  sluice      read the JSONL with polars, encode in parts of 50,000 rows (publish's shard size), write .bin + .idx
              + .docs.parquet per part; one process (the engine's own threads use both cores). Twice: with the
              engine publish picks (tiktoken loaded with the tokenizer's merges) and with `tokenizers` forced;
              the two runs' .bin files must be byte-identical
  datatrove   JsonlReader -> DocumentTokenizer(shuffle_documents=False), 2 tasks on 2 workers (LocalPipelineExecutor),
              timed inside its script (its pipeline, not the interpreter's start and imports)
  plain loop  `Tokenizer.encode_batch` over batches of 1,024, ids appended to a Python list (no files)
The token counts must agree (datatrove and Sluice both put one EOS after every document).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
HOLDOUT = RESULTS / "dedup-work" / "corpus"
PART_ROWS = 50_000

DATATROVE = r'''
import sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
src, out, tok, tasks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = time.perf_counter()
LocalPipelineExecutor([JsonlReader(src, compression=None),
                       DocumentTokenizer(f"{out}/tokens", tokenizer_name_or_path=tok, eos_token="<|endoftext|>",
                                         shuffle_documents=False)],
                      tasks=tasks, workers=2, logging_dir=f"{out}/logs").run()
print("SECONDS", time.perf_counter() - t)
'''


def corpus(folder: Path, n: int) -> Path:
    """n documents from the holdout, as JSONL files of at most 100,000 lines."""
    import polars as pl

    source = pl.concat([pl.read_ndjson(f) for f in sorted(HOLDOUT.glob("*.jsonl"))]).select("id", "text")
    reps = -(-n // source.height)
    frame = pl.concat([source.with_columns(id=pl.col("id") + f"-{r}") for r in range(reps)]).head(n)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, start in enumerate(range(0, n, 100_000)):
        frame.slice(start, 100_000).write_ndjson(folder / f"docs-{i:03d}.jsonl")
    return folder


def sluice(folder: Path, out: Path, tokenizer_path: str, force_tokenizers: bool = False) -> tuple[float, int]:
    import numpy as np
    import polars as pl

    from tasks.text import token_shards

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    tok = token_shards.load_tokenizer(tokenizer_path, None)
    eos = token_shards.eos_id(tok)
    dtype = token_shards.dtype_for(tok.get_vocab_size())
    encoder = token_shards.TokenizersBPE(tok) if force_tokenizers else token_shards.encoder_for(tok)
    total, part = 0, 0
    for f in sorted(folder.glob("*.jsonl")):
        frame = pl.read_ndjson(f)
        for piece in frame.iter_slices(PART_ROWS):
            enc = token_shards.encode(piece["text"], tok, eos, dtype, token_shards.order_of(piece.height, None, part),
                                      encoder=encoder)
            (out / f"part-{part:05d}.bin").write_bytes(enc.tokens.tobytes())
            (out / f"part-{part:05d}.idx").write_bytes(enc.offsets.tobytes())
            piece.select("id").with_columns(tokens=pl.Series(np.diff(enc.offsets).astype(np.int64))).write_parquet(
                out / f"part-{part:05d}.docs.parquet")
            total += enc.tokens.size
            part += 1
    return time.perf_counter() - t, total


def plain_loop(folder: Path, tokenizer_path: str) -> tuple[float, int]:
    import polars as pl
    from tokenizers import Tokenizer

    t = time.perf_counter()
    tok = Tokenizer.from_file(tokenizer_path)
    eos = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for f in sorted(folder.glob("*.jsonl")):
        texts = pl.read_ndjson(f)["text"].to_list()
        for start in range(0, len(texts), 1024):
            for enc in tok.encode_batch(texts[start:start + 1024], add_special_tokens=False):
                ids.extend(enc.ids)
                ids.append(eos)
    return time.perf_counter() - t, len(ids)


def datatrove(folder: Path, out: Path, tokenizer_path: str) -> tuple[float, int]:
    import numpy as np

    from bench.quality import ensure_datatrove

    py = ensure_datatrove()
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([str(py), "-c", DATATROVE, str(folder), str(out), tokenizer_path,
                           str(len(list(folder.glob("*.jsonl"))))], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    total = sum(np.fromfile(f, dtype=np.uint16).size for f in (out / "tokens").glob("*.ds"))
    return float(proc.stdout.split("SECONDS", 1)[1].split()[0]), total  # its pipeline, not its interpreter's start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--work", default=str(RESULTS / "tokens-work"))
    args = parser.parse_args()
    from schemas.config import SluiceConfig
    from tasks.models.loading import lm_folder

    tokenizer_path = str(lm_folder(SluiceConfig().score.lm) / "tokenizer.json")
    work = Path(args.work)
    folder = corpus(work / "corpus", args.docs)
    rows = []
    for name, run in (("Sluice token shards (tiktoken engine)",
                       lambda: sluice(folder, work / "sluice", tokenizer_path)),
                      ("Sluice token shards, `tokenizers` forced",
                       lambda: sluice(folder, work / "sluice-hf", tokenizer_path, force_tokenizers=True)),
                      ("datatrove 0.10.1 DocumentTokenizer", lambda: datatrove(folder, work / "dt", tokenizer_path)),
                      ("plain encode_batch loop", lambda: plain_loop(folder, tokenizer_path))):
        seconds, tokens = run()
        rows.append({"engine": name, "seconds": round(seconds, 2), "tokens": tokens,
                     "tokens_per_s": round(tokens / seconds)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    lines = [f"{args.docs:,} documents, SmolLM2 tokenizer, this machine ({os.cpu_count()} cores):", "",
             "| engine | seconds | tokens | tokens/s | Sluice's speed over it |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['seconds']:,} | {r['tokens']:,} | {r['tokens_per_s']:,} | "
                     f"{r['seconds'] / base['seconds']:.2f}x |")
    same_ids = all((work / "sluice" / f.name).read_bytes() == f.read_bytes()
                   for f in sorted((work / "sluice-hf").glob("*.bin")))
    agree = len({r["tokens"] for r in rows}) == 1 and same_ids
    lines += ["", f"Token counts agree: {'yes' if agree else 'NO: ' + str([r['tokens'] for r in rows])}; "
              f"the two Sluice engines' .bin files byte-identical: {'yes' if same_ids else 'NO'}"]
    (RESULTS / "tokens.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "tokens.json").write_text(json.dumps({"docs": args.docs, "rows": rows}, indent=2))
    print("\n".join(lines))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
