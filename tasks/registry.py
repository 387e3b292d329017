"""The stages a run can name, in pipeline order. Adding a method = one module with a STAGE, listed here."""

from __future__ import annotations

from tasks import contamination, dedup, ingest, quality
from tasks.stage import Stage

STAGES: dict[str, Stage] = {s.name: s for s in (ingest.STAGE, contamination.STAGE, quality.STAGE, dedup.STAGE)}
SINK = "publish"
ORDER = [*STAGES, SINK]


class StageSelectionError(ValueError):
    pass


def select(names: list[str]) -> list[str]:
    """Validate a --stages list: known names, each once, in pipeline order (so a typo never silently skips work)."""
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        raise StageSelectionError(f"unknown stage(s) {', '.join(unknown)}; known stages: {', '.join(ORDER)}")
    if len(set(names)) != len(names):
        raise StageSelectionError(f"a stage is listed twice in {','.join(names)}")
    if names != sorted(names, key=ORDER.index):
        raise StageSelectionError(f"stages must be in pipeline order: {','.join(sorted(names, key=ORDER.index))}")
    if not names:
        raise StageSelectionError("no stages selected")
    return names
