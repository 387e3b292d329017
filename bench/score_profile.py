"""Where the score stage's model time goes, phase by phase, for the embedder and the LM: tokenization, collation
(padding and pinning), the model's thread waiting for a batch, host->device copies, the forward passes and the
copy of the results back, and how much of each batch is padding.

    python bench/score_profile.py [--docs 4000] [--lm-docs 300] [--device cpu]

Real packaged models (all-MiniLM-L6-v2, SmolLM2-135M), loaded as the stage loads them; documents of 1 to 12
sentences of the CPython documentation (bench/gpu_check.py's corpus). `tokenize` and `collate` run in background
threads, overlapping the model; `starved` is the time the model's thread waited for them, so the host is the
bottleneck exactly when it is large. On CUDA the device phases are CUDA-event times. gpu_check.py prints the same
table for the lent card. Writes bench/results/score_profile.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PHASES = ("tokenize", "collate", "starved", "copy_in", "forward", "copy_out")


def profile_rows(name: str, run, dev) -> list[str]:
    """Markdown rows for one model: `run()` scores the documents; returns the table rows (phase seconds, share of
    the wall time, tokens/s end to end, padding share)."""
    import torch

    from tasks.models import batching

    with batching.profiled() as prof:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        run()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - began
    seconds = prof.resolve()
    padding = 1 - prof.tokens / max(prof.padded_tokens, 1)
    cells = " | ".join(f"{seconds.get(p, 0.0):.2f} ({seconds.get(p, 0.0) / wall:.0%})" for p in PHASES)
    return [f"| {name} | {wall:.2f} | {cells} | {prof.tokens:,} | {prof.tokens / wall:,.0f} | {padding:.1%} |"]


def table(rows: list[str]) -> str:
    head = ["| model | wall s | " + " | ".join(PHASES) + " | tokens | tokens/s | padding |",
            "|---|---:|" + "---:|" * len(PHASES) + "---:|---:|---:|"]
    return "\n".join(head + rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=4000, help="documents embedded")
    ap.add_argument("--lm-docs", type=int, default=300, help="documents scored by the LM (slower on a CPU)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    import os
    import platform

    from gpu_check import corpus
    from tables import publish

    from schemas.config import DecontaminateConfig, ScoreConfig
    from tasks.models import embeddings, perplexity
    from tasks.stages import score
    from tasks.stages.score import ScoreParams

    params = ScoreParams(score=ScoreConfig(device=args.device), decontaminate=DecontaminateConfig(builtins=[]))
    loaded = score.load_models(params)
    docs = corpus(max(args.docs, args.lm_docs))
    cfg, dev = params.score, loaded.device
    embeddings.embed(docs[:64], loaded.embedder, cfg.embedder, dev)  # warm-up
    rows = profile_rows(f"embedder, {args.docs:,} docs", lambda: embeddings.embed(
        docs[:args.docs], loaded.embedder, cfg.embedder, dev), dev)
    rows += profile_rows(f"LM, {args.lm_docs:,} docs", lambda: perplexity.nll(
        docs[:args.lm_docs], loaded.lm, loaded.tokenizer, cfg.lm, dev, loaded.lm_bf16), dev)
    where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores" if dev.type == "cpu" else \
        __import__("torch").cuda.get_device_name(0)
    publish("score_profile.md", f"Device: {dev.type} ({where}); phase seconds (share of wall time)\n\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
