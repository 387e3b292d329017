"""`sluice edits`: a stage's edit ledger, and rows before and after with the removed spans marked.

The ledger (tasks/runtime/edits.py) says per row and rule how much went; the text itself is already in the run:
the stage's input part (what it read) and its output part (what it kept) of the same shard, named by the shard's
receipt. So nothing is stored twice, and the spans are found here, for the few rows shown, by a word-level diff.
"""

from __future__ import annotations

import difflib
import re
from pathlib import PurePosixPath

import polars as pl

from tasks.io import layout
from tasks.io.manifests import Receipt, StageManifest

_TOKEN = re.compile(r"\s+|[^\s]+")
_SHARD = re.compile(r"part-(.+)\.parquet$")


def spans(before: str, after: str) -> tuple[list[dict], list[dict]]:
    """(removed, inserted): removed spans as character offsets into `before` with their text; inserted text with
    the offset in `before` it went in at. Word-level, so a cut line or a placeholder shows as one span."""
    a, b = _TOKEN.findall(before), _TOKEN.findall(after)
    starts = [0]
    for tok in a:
        starts.append(starts[-1] + len(tok))
    removed, inserted = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            removed.append({"start": starts[i1], "end": starts[i2], "text": "".join(a[i1:i2])})
        if op in ("insert", "replace"):
            inserted.append({"at": starts[i1], "text": "".join(b[j1:j2])})
    return removed, inserted


def marked(before: str, removed: list[dict], inserted: list[dict]) -> str:
    """`before` with each removed span as [-...-] and each insertion as {+...+} (git's word-diff marks)."""
    adds = {}
    for ins in inserted:
        adds[ins["at"]] = adds.get(ins["at"], "") + "{+" + ins["text"] + "+}"
    out, last = [], 0
    for span in removed:
        out.append(before[last:span["start"]])
        out.append("[-" + span["text"] + "-]" + adds.pop(span["start"], ""))
        last = span["end"]
    out.append(before[last:])
    text = "".join(out)
    for at in sorted(adds, reverse=True):  # pure insertions
        text = text[:at] + adds[at] + text[at:]
    return text


def ledger(storage, manifest: StageManifest, rule: str | None = None) -> pl.DataFrame:
    """Every ledger row of the stage (each with its shard), only `rule`'s (or rules starting with it) if given."""
    frames = []
    for obj in manifest.edits:
        match = _SHARD.search(PurePosixPath(obj.path).name)
        frames.append(storage.read_parquet(obj.path).with_columns(shard=pl.lit(match.group(1) if match else None)))
    if not frames:
        return pl.DataFrame()
    df = pl.concat(frames, how="vertical_relaxed")
    return df.filter(pl.col("rule").str.starts_with(rule)) if rule else df


def summary(df: pl.DataFrame) -> pl.DataFrame:
    """Per rule: rows edited, characters removed, units removed, and the median share of a row removed."""
    return df.group_by("rule", "unit").agg(
        rows=pl.col("id").n_unique(), chars_removed=pl.col("chars_removed").sum(),
        units_removed=pl.col("units_removed").sum(),
        median_removed=(pl.col("chars_removed") / pl.col("chars_before")).median(),
    ).sort("chars_removed", descending=True)


def before_after(storage, run_id: str, stage: str, shown: pl.DataFrame) -> pl.DataFrame:
    """id, before, after of the rows in `shown` (ledger rows with their shard): the shard's input and output."""
    frames = []
    for shard in shown["shard"].unique(maintain_order=True).to_list():
        ids = shown.filter(pl.col("shard") == shard)["id"].unique().implode()
        receipt = storage.read_record_if_exists(Receipt, layout.shard_receipt(run_id, stage, shard))
        if receipt is None or not receipt.inputs or not receipt.outputs:
            continue
        source = receipt.inputs[0].get("path") if isinstance(receipt.inputs[0], dict) else None
        if not source:
            continue
        before = storage.read_parquet(source).select("id", before="text").filter(pl.col("id").is_in(ids))
        after = storage.read_parquet(receipt.outputs[0].path).select("id", after="text")
        frames.append(before.join(after, on="id", how="left"))
    if not frames:
        return pl.DataFrame(schema={"id": pl.String, "before": pl.String, "after": pl.String})
    return pl.concat(frames)
