"""GPT-3's redaction rule (Brown et al. 2020, appendix C), on character spans of the original text."""

from __future__ import annotations

from schemas.config import DecontaminateConfig


def spans_for_redaction(offsets: list[tuple[int, int]], word_ranges: list[tuple[int, int]]
                         ) -> list[tuple[int, int]] | None:
    spans = []
    for start, end in word_ranges:
        if end >= len(offsets):
            return None
        spans.append((offsets[start][0], offsets[end][1]))
    return spans


def redact(text: str, spans: list[tuple[int, int]], cfg: DecontaminateConfig) -> tuple[str | None, int]:
    """GPT-3's rule: cut each span and `window` characters around it; drop pieces under `min_chars`; a doc cut more
    than `max_cuts` times, or with nothing long enough left, is dropped (None)."""
    w = cfg.redact_window_chars
    cuts = sorted((max(0, s - w), min(len(text), e + w)) for s, e in spans)
    merged: list[list[int]] = []
    for s, e in cuts:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    if len(merged) > cfg.redact_max_cuts:
        return None, len(merged)
    pieces, last = [], 0
    for s, e in merged:
        pieces.append(text[last:s])
        last = e
    pieces.append(text[last:])
    kept = [p.strip() for p in pieces if len(p.strip()) >= cfg.redact_min_chars]
    return ("\n\n".join(kept) if kept else None), len(merged)


