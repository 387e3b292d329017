"""The edit ledger: what a stage did to the text of the rows it kept.

Whole rows are never lost (a rejected row goes to quarantine); this is the same promise for parts of rows. A stage
that rewrites text (C4's line filter, PII redaction, paragraph dedup cuts, contamination redaction) returns, beside
its kept and rejected rows, one ledger row per (row, rule) that changed the text: characters removed and inserted,
and the units (lines, paragraphs, spans) removed. Before a rewrite lands the stage bounds it: a row a rule would cut
by more than that rule's `max_removed_fraction` is rejected with the evidence instead of published as a fragment.

The runner holds stages to it (`unrecorded`): a kept row whose text differs from its input with no ledger row fails
the stage's declaration, so a future rewrite cannot skip the ledger. The ledger is written beside the shard
(`runs/<run>/<stage>/edits/`), counted in the manifest, and read by `sluice edits`.
"""

from __future__ import annotations

import polars as pl

LEDGER: dict[str, pl.DataType] = {
    "id": pl.String(),
    "rule": pl.String(),  # e.g. quality.c4.line_filter
    "chars_before": pl.Int64(),  # the text's length before this rule
    "chars_removed": pl.Int64(),
    "chars_inserted": pl.Int64(),  # placeholders a redaction put in
    "units_removed": pl.Int64(),  # lines, paragraphs, spans: see `unit`
    "unit": pl.String(),
}


# Rules that convert a format rather than cut content (HTML to its main text removes the markup of every page):
# recorded like any edit, but not part of the stage-wide share of characters removed, which they would always top.
CONVERSIONS = ("extract.main_text",)


def empty() -> pl.DataFrame:
    return pl.DataFrame(schema=LEDGER)


def removed_chars(before: pl.Expr, after: pl.Expr, inserted: pl.Expr | None = None) -> pl.Expr:
    """Characters a rewrite took out: what the text lost, plus what replaced it (a redaction's placeholders)."""
    grown = inserted if inserted is not None else pl.lit(0)
    return (before.str.len_chars().cast(pl.Int64) - after.str.len_chars().cast(pl.Int64) + grown).clip(0)


def removed_fraction(before: pl.Expr, after: pl.Expr, inserted: pl.Expr | None = None) -> pl.Expr:
    chars = before.str.len_chars().cast(pl.Float64)
    return pl.when(chars > 0).then(removed_chars(before, after, inserted) / chars).otherwise(0.0)


def over_bound(before: pl.Expr, after: pl.Expr, max_fraction: float, inserted: pl.Expr | None = None) -> pl.Expr:
    """True where the rewrite would remove more than `max_fraction` of the row (such a row is rejected)."""
    return removed_fraction(before, after, inserted) > max_fraction


def bound_evidence(rule: str, before: pl.Expr, after: pl.Expr, max_fraction: float, units: pl.Expr, unit: str,
                   inserted: pl.Expr | None = None) -> pl.Expr:
    """The evidence of a row rejected by the bound: what the rule would have removed, against the limit."""
    return pl.struct(
        rule=pl.lit(rule), chars_before=before.str.len_chars().cast(pl.Int64),
        chars_removed=removed_chars(before, after, inserted),
        removed_fraction=removed_fraction(before, after, inserted).round(4),
        max_removed_fraction=pl.lit(max_fraction), **{f"{unit}s_removed": units.cast(pl.Int64)},
    ).struct.json_encode()


def bound_reason(rule: str) -> str:
    return f"{rule}.removed_too_much"


def _changed(frame: pl.DataFrame, before: str, after: str) -> pl.DataFrame:
    """The rows whose text changed in more than whitespace (a line's indentation stripped, blank lines dropped: a
    normalisation, not an edit). The byte comparison first, so the regex runs on changed rows only."""
    differ = frame.filter(pl.col(before) != pl.col(after))
    return differ.filter(pl.col(before).str.replace_all(r"\s+", "") != pl.col(after).str.replace_all(r"\s+", ""))


def record(frame: pl.DataFrame, rule: str, before: str, after: str, units: pl.Expr, unit: str,
           inserted: pl.Expr | None = None) -> pl.DataFrame:
    """Ledger rows for the rows of `frame` whose `after` text differs from `before` in more than whitespace."""
    changed = _changed(frame, before, after)
    if not changed.height:
        return empty()
    grown = inserted if inserted is not None else pl.lit(0)
    return changed.select(
        pl.col("id"), rule=pl.lit(rule), chars_before=pl.col(before).str.len_chars().cast(pl.Int64),
        chars_removed=removed_chars(pl.col(before), pl.col(after), inserted),
        chars_inserted=grown.cast(pl.Int64), units_removed=units.cast(pl.Int64), unit=pl.lit(unit),
    ).select(list(LEDGER))


def unrecorded(before: pl.DataFrame, kept: pl.DataFrame, ledger: pl.DataFrame | None) -> list[str]:
    """Ids of kept rows whose text differs from their input (beyond whitespace) and that have no ledger row (a
    stage's bug). A source stage's input is raw file content, not rows with ids: nothing to compare."""
    if any(c not in f.columns for f in (before, kept) for c in ("id", "text")):
        return []
    pairs = kept.select("id", "text").join(before.select("id", pl.col("text").alias("_before")), on="id")
    changed = _changed(pairs, "_before", "text").select("id")
    if ledger is not None and ledger.height:
        changed = changed.join(ledger.select("id").unique(), on="id", how="anti")
    return changed["id"].head(5).to_list() if changed.height else []


def counts(ledger: pl.DataFrame | None, before: pl.DataFrame) -> dict[str, int]:
    """The manifest's counters: rows edited and characters removed, in all and per rule, and the characters the
    stage read (the base of the stage-wide share)."""
    out = {"edits.chars_in": int(before["text"].str.len_chars().sum() or 0)} if "text" in before.columns else {}
    if ledger is None or not ledger.height:
        return out
    out["edits.rows"] = ledger["id"].n_unique()
    out["edits.chars_removed"] = int(ledger["chars_removed"].sum())
    for rule, rows, chars in ledger.group_by("rule").agg(pl.col("id").n_unique(), pl.col("chars_removed").sum()
                                                         ).iter_rows():
        out[f"edits.{rule}.rows"] = int(rows)
        out[f"edits.{rule}.chars_removed"] = int(chars)
    return out


def removed_share_check(contracts_cfg, stage_name: str, stats_counts: dict[str, int]) -> list[dict]:
    """Stage-wide: the share of all input characters the stage's edits removed. Above the warning level it warns
    loudly (log, manifest, report); above the stage's `max_removed_chars_rate` the contract fails."""
    chars_in = stats_counts.get("edits.chars_in", 0)
    removed = stats_counts.get("edits.chars_removed", 0) - sum(
        stats_counts.get(f"edits.{rule}.chars_removed", 0) for rule in CONVERSIONS)
    if not chars_in or not removed:
        return []
    rate = removed / chars_in
    rows = stats_counts.get("edits.rows", 0)
    ceiling = contracts_cfg.max_removed_chars_rate.get(stage_name, 1.0)
    return [{"name": "edits.removed_chars", "count": removed, "rate": rate,
             "warn": contracts_cfg.warn_removed_chars_rate, "max": ceiling,
             "message": f"edits removed {rate:.2%} of all characters ({removed:,} of {chars_in:,}, in {rows:,} rows) "
                        f"> contracts.max_removed_chars_rate.{stage_name} = {ceiling:.2%}",
             "warning": f"edits removed {rate:.1%} of all characters ({removed:,} of {chars_in:,}, in {rows:,} "
                        f"rows) > warning level {contracts_cfg.warn_removed_chars_rate:.0%}: see `sluice edits RUN "
                        f"--stage {stage_name}`; contracts.max_removed_chars_rate.{stage_name} makes it fail"}]
