"""Which synthetic rows to ask for: slice membership, each slice's shortfall under its target, the share cap and the
run's budget, and one request per row (parent, few-shot examples, seed, prompt). Pure polars over the features."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import polars as pl

from schemas.config import AugmentConfig, AugmentSlice

PROMPTS = Path(__file__).resolve().parents[3] / "schemas" / "prompts"
SLICE = "_slice"


def condition(s: AugmentSlice) -> pl.Expr:
    return pl.col(s.column) == s.value if s.column is not None else pl.sql_expr(s.where)


def columns_read(cfg: AugmentConfig) -> list[str]:
    """Columns the slice conditions read (a `where` expression's columns, found by polars' own parser)."""
    cols = [cfg.label]
    for s in cfg.slices:
        cols += [s.column] if s.column is not None else pl.sql_expr(s.where).meta.root_names()
    return list(dict.fromkeys(cols))


def membership(cfg: AugmentConfig) -> pl.Expr:
    """The first configured slice a row belongs to (null: none)."""
    expr = pl.lit(None, pl.String)
    for s in reversed(cfg.slices):
        expr = pl.when(condition(s).fill_null(False)).then(pl.lit(s.name)).otherwise(expr)
    return expr.alias(SLICE)


def intended_label(s: AugmentSlice, label_col: str) -> str | None:
    if s.label is not None:
        return s.label
    return str(s.value) if s.column == label_col else None


def template(cfg: AugmentConfig) -> tuple[str, str]:
    """(prompt template text, its sha256): the file named in config or the task's default under schemas/prompts/."""
    path = Path(cfg.prompt_file).expanduser() if cfg.prompt_file else PROMPTS / f"{cfg.task}.txt"
    data = path.read_bytes()
    return data.decode("utf-8"), hashlib.sha256(data).hexdigest()


def render(tmpl: str, text: str, label: str | None, examples: list[str]) -> str:
    hint = f" (label: {label})" if label else ""
    return tmpl.format_map({"text": text, "label": label or "", "label_hint": hint,
                            "examples": "\n\n".join(f"Example {i + 1}: {e}" for i, e in enumerate(examples))})


def request_seed(seed: int, parent: str, variant: int) -> int:
    digest = hashlib.sha256(f"{seed}\x00{parent}\x00{variant}".encode()).digest()
    return int.from_bytes(digest[:7], "big")  # fits an Int64


def slice_counts(feats: pl.DataFrame) -> pl.DataFrame:
    """Per slice (null: no slice): real rows, synthetic rows, all rows; sums of these over shards are the corpus's."""
    synthetic = pl.col("_synthetic")
    return feats.group_by(SLICE).agg(real=(~synthetic).sum().cast(pl.Int64), syn=synthetic.sum().cast(pl.Int64),
                                     rows=pl.len().cast(pl.Int64))


def shortfalls(feats: pl.DataFrame, cfg: AugmentConfig) -> list[dict]:
    """Per slice: real and already-synthetic rows, the target, the shortfall and how many rows this run asks for
    (capped by the share cap and the run's row budget, in config order)."""
    return shortfalls_of(slice_counts(feats), cfg)


def shortfalls_of(slice_counts: pl.DataFrame, cfg: AugmentConfig) -> list[dict]:
    """`shortfalls` from the corpus's slice counts (summed over shards)."""
    total = int(slice_counts["rows"].sum())
    counts = {r[SLICE]: r for r in slice_counts.group_by(SLICE).agg(pl.col("real", "syn").sum())
              .iter_rows(named=True)}
    budget, out = cfg.max_rows, []
    cap = cfg.gate.max_synthetic_share
    for s in cfg.slices:
        real = int(counts.get(s.name, {}).get("real", 0))
        syn = int(counts.get(s.name, {}).get("syn", 0))
        have = real + syn
        if s.target is not None:
            want = max(0, s.target - have)
        else:  # grow to `share` of all rows, counting the rows it adds: (have + x) = share * (total + x)
            want = max(0, math.ceil((s.share * total - have) / (1 - s.share)))
        allowed = max(0, math.floor((cap * have - syn) / (1 - cap) + 1e-9))  # (syn + x) <= cap * (have + x)
        asked = min(want, allowed, budget) if real else 0
        budget -= asked
        out.append({"slice": s.name, "real": real, "synthetic_before": syn, "target": s.target,
                    "share": s.share, "shortfall": want, "share_cap_allows": allowed, "asked": asked,
                    "note": None if real or not want else "no real row in the slice to start from"})
    return out


def requests(feats: pl.DataFrame, cfg: AugmentConfig, plan: list[dict]) -> pl.DataFrame:
    """One row per candidate (`candidates_per_row` per synthetic row asked for): parent id and text, few-shot
    examples, intended label, seed. Parents are the slice's real rows in a seeded hash order, cycled (a parent's
    second candidate is its variant 1, with its own seed); the examples are the rows after the parent."""
    frames = []
    by_name = {s.name: s for s in cfg.slices}
    for p in plan:
        if not p["asked"]:
            continue
        rows = (feats.filter((pl.col(SLICE) == p["slice"]) & ~pl.col("_synthetic"))
                .with_columns(_order=pl.col("id").hash(seed=cfg.seed)).sort("_order", "id"))
        n, k = rows.height, min(cfg.shots, max(rows.height - 1, 1))
        j = pl.int_range(p["asked"] * cfg.candidates_per_row, eager=True)
        parent = (j % n).to_numpy()
        texts, ids = rows["text"].to_list(), rows["id"].to_list()
        shots = [[texts[(i + 1 + m) % n] for m in range(k)] if cfg.task == "few_shot" else [] for i in parent]
        frames.append(pl.DataFrame({
            "slice": p["slice"], "parent_id": [ids[i] for i in parent], "parent_text": [texts[i] for i in parent],
            "shots": shots, "variant": (j // n).to_list(),
            "label": intended_label(by_name[p["slice"]], cfg.label)},
            schema_overrides={"shots": pl.List(pl.String), "label": pl.String}))
    if not frames:
        return pl.DataFrame(schema={"slice": pl.String, "parent_id": pl.String, "parent_text": pl.String,
                                    "shots": pl.List(pl.String), "variant": pl.Int64, "label": pl.String,
                                    "seed": pl.Int64})
    out = pl.concat(frames)
    return out.with_columns(seed=pl.Series([request_seed(cfg.seed, p, v) for p, v in
                                            zip(out["parent_id"], out["variant"], strict=True)], dtype=pl.Int64))
