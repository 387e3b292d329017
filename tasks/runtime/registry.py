"""The stages a run can name, in pipeline order: the one source of truth for stage names and their order.

Adding a method = one module under tasks/stages/ with a STAGE, listed here (tests/test_conformance.py checks that it
brings its suite, params model, README row and unit test).
"""

from __future__ import annotations

from schemas.errors import BadInput
from tasks.runtime.stage import Stage
from tasks.stages import audit, augment, decontaminate, dedup, extract, ingest, publish, quality, score, select

STAGES: dict[str, Stage] = {s.name: s for s in (ingest.STAGE, extract.STAGE, decontaminate.STAGE, quality.STAGE,
                                                audit.STAGE, dedup.STAGE, score.STAGE, select.STAGE, augment.STAGE,
                                                publish.STAGE)}
ORDER = list(STAGES)
DEFAULT_PIPELINE = ["ingest", "decontaminate", "quality", "dedup", "publish"]
SINKS = [name for name, s in STAGES.items() if s.kind == "sink"]


class StageSelectionError(BadInput):
    pass


def select(names: list[str]) -> list[str]:
    """Validate a --stages list: known names, each once, in pipeline order (so a typo never silently skips work),
    and every package the selected stages need importable (named when missing)."""
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        raise StageSelectionError(f"unknown stage(s) {', '.join(unknown)}; known stages: {', '.join(ORDER)}")
    if len(set(names)) != len(names):
        raise StageSelectionError(f"a stage is listed twice in {','.join(names)}")
    if names != sorted(names, key=ORDER.index):
        raise StageSelectionError(f"stages must be in pipeline order: {','.join(sorted(names, key=ORDER.index))}")
    if not names:
        raise StageSelectionError("no stages selected")
    for name in names:
        missing = STAGES[name].missing_packages()
        if missing:
            raise StageSelectionError(f"stage {name} needs the package(s) {', '.join(missing)}, which are not "
                                      "installed (pip install -r requirements.lock)")
    return names


def previous_stages(name: str) -> list[str]:
    """The stages before `name` in pipeline order, nearest first."""
    return list(reversed(ORDER[: ORDER.index(name)]))


def preflight(config, stages: list[str] | None) -> list[str]:
    """Everything that can be known wrong before a flow run starts: the stage list (names, order, packages) and
    each selected stage's own check of its params. Returns the stages; raises StageSelectionError naming all."""
    names = select(stages or config.stages or DEFAULT_PIPELINE)
    problems = [p for name in names if STAGES[name].check is not None
                for p in STAGES[name].check(STAGES[name].params(config))]
    if problems:
        raise StageSelectionError("; ".join(problems))
    return names
