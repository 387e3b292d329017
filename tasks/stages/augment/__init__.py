"""Augment: synthetic rows for scarce slices, each through a gate, each with its provenance.

A partitioned global stage (the steps in steps.py; no step holds every row):
  features  per shard: slice counts; the text of rows in a slice (the parents and their neighbours) or in the
            proxy classifier's hashed sample; every row's normalized-text hash, partitioned by hash;
  generate  each slice's shortfall under its target and the share cap, one request per missing row
            (tasks/stages/augment/plan.py), generation (generators.py, cached), the gate's checks before
            `duplicate` (gate.py);
  duplicates  per hash partition: the candidates a real row already says;
  gate      `duplicate` and the checks after it; the decisions are the generated rows, passed or failed;
  apply     per shard: real rows unchanged (provenance columns null, `label_source` human where labeled), the
            generated rows whose parent is in the shard: passed ones join as synthetic rows, failed ones go to
            quarantine as `augment.gate.<check>`, so rows_in + rows_synthetic == rows_out + rows_rejected.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

import numpy as np
import orjson
import polars as pl

from schemas.config import AugmentParams
from schemas.record import CANONICAL
from tasks.runtime.externals import ExternalInputs, Externals, gather
from tasks.runtime.plan import run_in_memory
from tasks.runtime.stage import PROVENANCE, Stage, StageInputError, StageResult
from tasks.runtime.stats import Stats
from tasks.stages.augment import gate, generators, plan, steps
from tasks.stages.augment.plan import SLICE

log = logging.getLogger("sluice")

ADDS: dict[str, pl.DataType] = {**PROVENANCE, "syn_instruction": pl.String(), "label_source": pl.String()}
PLAN_FILE = "augment_plan.json"


@dataclass
class AugmentModels:
    """What `load` loads once per worker process: the gate's models, the generator, and their identity (part of
    the generation cache's key)."""

    models: gate.GateModels
    device: object
    generator: object | None  # LocalLM or Endpoint; the word-level baseline is built in decide (it needs words)
    identity: dict
    cache_root: object


def _identity_text(identity: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(identity.items()))


def externals(params: AugmentParams) -> Externals:
    """The benchmark files the gate's contamination check reads, and the cache folder (the LM's conversion,
    generations)."""
    from tasks.models import loading
    from tasks.stages.decontaminate import benchmarks

    cfg, dec = params.augment, params.decontaminate
    files = benchmarks.files(dec).files if cfg.gate.decontaminate and (dec.builtins or dec.benchmarks) else ()
    return Externals(files=files, caches=(loading.cache_root(params.score.lm),))


def load(params: AugmentParams, inputs: ExternalInputs | None = None) -> AugmentModels:
    """The gate's models (the score stage's embedder and LM, the quality stage's language ID, the decontaminate
    stage's index) and the generator, once per worker process."""
    from schemas.config import resolve_secret
    from tasks.models import loading, shared
    from tasks.stages.decontaminate import load_index
    from tasks.stages.quality import load_language_model

    cfg, score = params.augment, params.score
    inputs = inputs if inputs is not None else gather(externals(params))
    dev = loading.device(score.device)
    embedder = shared.embedder(score.embedder, dev, score.cpu_precision)  # the score stage's, when it ran here
    need_lm = cfg.generator == "local" or cfg.gate.max_perplexity is not None
    lm = shared.language_model(score.lm, dev, score.cpu_precision) if need_lm else None
    gate_models = gate.GateModels(
        embed=gate.remembered(embedder.embed), lm=lm,
        language_model=load_language_model(params.quality) if cfg.gate.quality else None,
        benchmark_index=(load_index(params.decontaminate, inputs) if cfg.gate.decontaminate
                         and (params.decontaminate.builtins or params.decontaminate.benchmarks) else None))
    lm_pins = ",".join(f"{k}:{v[:16]}" for k, v in sorted(score.lm.sha256.items()))
    if cfg.generator == "local":
        identity = {"generator": "local", "model": score.lm.path or "SmolLM2-135M-Instruct", "sha256": lm_pins}
        if lm.bf16:  # sampling from bfloat16 logits: other texts than float32's, so another cache key
            identity["precision"] = "bfloat16"
        generator = generators.LocalLM(lm, identity, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.max_tokens)
    elif cfg.generator == "endpoint":
        key = resolve_secret(cfg.endpoint.api_key, "augment.endpoint.api_key") if cfg.endpoint.api_key else None
        generator = generators.Endpoint(cfg.endpoint, key, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                        cfg.max_tokens)
        identity = {"generator": "endpoint", **generator.identity}
    else:
        generator, identity = None, dict(generators.WordLevel.identity)
    return AugmentModels(gate_models, dev, generator, identity, loading.cache_root(score.lm) / "generations")


def release(loaded: AugmentModels) -> None:
    loaded.generator = None
    loaded.models = gate.GateModels()


def features(batch: pl.DataFrame, params: AugmentParams, proxy_fraction: float | None = None) -> pl.DataFrame:
    """Per-shard features: every row's id, slice, label and text hash, and the text of the rows in a slice or in
    the proxy classifier's hashed sample (`proxy_fraction` of labeled rows, default `gate.proxy_sample`)."""
    from tasks.models import sampling
    from tasks.stages.dedup import normalized

    cfg = params.augment
    missing = [c for c in plan.columns_read(cfg) if c not in batch.columns and c != cfg.label]
    if missing:
        raise StageInputError(f"augment: the slices read column(s) {', '.join(missing)}, which the data does not have "
                         f"(columns: {', '.join(batch.columns)})")
    label = pl.col(cfg.label).cast(pl.String) if cfg.label in batch.columns else pl.lit(None, pl.String)
    synthetic = pl.col("syn_origin").is_not_null() if "syn_origin" in batch.columns else pl.lit(False)
    framed = batch.with_columns(plan.membership(cfg))
    fraction = cfg.gate.proxy_sample if proxy_fraction is None else proxy_fraction
    proxy = label.is_not_null() & ~synthetic & sampling.chosen(pl.col("id"), fraction, "augment.proxy")
    return framed.select(
        "id", SLICE, label=label, _synthetic=synthetic, _proxy=proxy,
        _hash=normalized(pl.col("text")).hash(seed=0),
        text=pl.when(pl.col(SLICE).is_not_null() | proxy).then(pl.col("text")))


def _proxy(feats: pl.DataFrame, params: AugmentParams, loaded: AugmentModels):
    """The proxy classifier (tasks/models/classifiers.py) on the embedded sample of real labeled rows."""
    from tasks.models import classifiers

    sample = feats.filter("_proxy")
    classes = sorted(sample["label"].unique().to_list())
    if len(classes) < 2:
        return None
    emb = loaded.models.embed(sample["text"].to_list())
    y = sample["label"].cast(pl.Enum(classes)).to_physical().to_numpy().astype(np.int64)
    return classifiers.fit_proxy(emb, y, len(classes), params.score.dynamics, loaded.device, params.augment.seed), \
        classes


def generate(pool: pl.DataFrame, slice_counts: pl.DataFrame, params: AugmentParams, loaded: AugmentModels
             ) -> tuple[pl.DataFrame, dict]:
    """Each slice's shortfall (from the corpus's slice counts), one request per candidate, generation (cached) and
    the gate's checks before `duplicate`. `pool`: the features of the rows in a slice or the proxy sample.
    Returns the candidates (reason/evidence set where a check failed) and the plan's report so far."""
    cfg = params.augment
    tmpl, prompt_sha = plan.template(cfg)
    shortfall = plan.shortfalls_of(slice_counts, cfg)
    req = plan.requests(pool, cfg, shortfall)
    if cfg.generator == "eda":
        slice_texts = pool.filter(pl.col(SLICE).is_not_null() & ~pl.col("_synthetic"))["text"]
        words = sorted(set(" ".join(slice_texts.to_list()).split()))
        generate_fn, inputs = generators.WordLevel(words), req["parent_text"].to_list()
        params_key = generate_fn.params
        prompt_sha = hashlib.sha256(orjson.dumps(params_key, option=orjson.OPT_SORT_KEYS)).hexdigest()  # no prompt
    else:
        generate_fn, params_key = loaded.generator, loaded.generator.params
        inputs = [plan.render(tmpl, t, lab, shots) for t, lab, shots in
                  zip(req["parent_text"], req["label"], req["shots"], strict=True)]
    cache = generators.GenerationCache(loaded.cache_root, loaded.identity, params_key)
    got = generators.cached_generate(cache, inputs, req["seed"].to_list(), generate_fn, cfg.batch_size)
    for error in got.errors[:5]:
        log.warning(f"augment: a generation request failed after retries: {error}")
    made = req.with_columns(text=pl.Series(got.texts, dtype=pl.String)).filter(pl.col("text").is_not_null())
    made = made.with_columns(  # a one-paragraph parent gets one paragraph back: small LMs append commentary
        text=pl.when(pl.col("parent_text").str.contains("\n\n", literal=True)).then(pl.col("text"))
        .otherwise(pl.col("text").str.split("\n\n").list.first().str.strip_chars()))
    made = made.with_columns(
        id=pl.concat_str(pl.lit("syn-"), pl.col("parent_id"), pl.lit("-"), pl.col("variant").cast(pl.String),
                         pl.lit("-"), pl.lit(hashlib.sha256(orjson.dumps(loaded.identity, option=orjson.OPT_SORT_KEYS)
                                                            ).hexdigest()[:8]))).drop("shots")
    real = pool.filter(pl.col(SLICE).is_not_null() & ~pl.col("_synthetic")).select("id", "text", SLICE)
    candidates = gate.before_duplicates(made, real, loaded.models, params)
    report = {"slices": shortfall, "requested": req.height, "generated": made.height,
              "not_generated": req.height - made.height, "cached": got.cached, "tokens": got.tokens,
              "cost": round(got.cost, 6), "stopped": got.stopped, "errors": len(got.errors),
              "generator": loaded.identity, "prompt_sha256": prompt_sha, "error_samples": got.errors[:5]}
    return candidates, report


def gate_decisions(candidates: pl.DataFrame, real_dup_ids: pl.Series, pool: pl.DataFrame, report: dict,
          params: AugmentParams, loaded: AugmentModels) -> tuple[pl.DataFrame, dict[str, bytes], Stats]:
    """The gate's checks from `duplicate` on (`real_dup_ids`: candidates whose text a real row has), the decisions
    table (every generated row, passed or failed, with provenance), the plan's report and the request counts."""
    cfg = params.augment
    judged = gate.from_duplicates(candidates, real_dup_ids, loaded.models, params, _proxy(pool, params, loaded),
                                  limits={p["slice"]: p["asked"] for p in report["slices"]})
    backtranslate = cfg.task == "backtranslate"
    decisions = judged.select(
        "id", "slice", "label", "reason", "evidence",
        text=pl.col("parent_text") if backtranslate else pl.col("text"),
        syn_instruction=pl.col("text") if backtranslate else pl.lit(None, pl.String),
        syn_origin=pl.lit(f"augment.{cfg.task}"), syn_generator=pl.lit(_identity_text(loaded.identity)),
        syn_parent_id=pl.col("parent_id"), syn_prompt_sha256=pl.lit(report["prompt_sha256"]),
        syn_seed=pl.col("seed"), label_source=pl.lit("weak" if cfg.generator == "eda" else "llm"))
    errors = report.pop("error_samples", [])
    report = {**report, "rejected_by_check": dict(judged.group_by("reason").len().drop_nulls().iter_rows())}
    log.info(f"augment: {report['generated']} of {report['requested']} candidates generated ({report['cached']} "
             f"from the cache), {int(judged['reason'].is_null().sum())} passed the gate")
    failed = Stats(counts={"augment.requests": report["requested"], "augment.requests_failed": report["errors"]},
                   records={"generation_errors": [{"error": e} for e in errors]})
    return decisions, {PLAN_FILE: orjson.dumps(report, option=orjson.OPT_INDENT_2)}, failed


def decide(feats: pl.DataFrame, params: AugmentParams, loaded: AugmentModels | None = None
           ) -> tuple[pl.DataFrame, dict[str, bytes], Stats]:
    """The whole decision over one frame of features (what the plan's steps do apart, in memory)."""
    loaded = loaded if loaded is not None else load(params)
    pool = feats.filter(pl.col(SLICE).is_not_null() | pl.col("_proxy"))
    candidates, report = generate(pool, plan.slice_counts(feats), params, loaded)
    real_dup_ids = candidates.filter(gate.text_hash(candidates).is_in(feats["_hash"].implode()))["id"]
    return gate_decisions(candidates, real_dup_ids, pool, report, params, loaded)


def _synthetic_rows(batch: pl.DataFrame, generated: pl.DataFrame, label_col: str) -> pl.DataFrame:
    """Generated rows in the batch's schema (+ ADDS): id, text, label and provenance from the generation, the
    parent's source, content_sha256 of the new text; every other column null (it described the parent)."""
    parents = batch.select(pl.col("id").alias("syn_parent_id"), pl.col("source") if "source" in batch.columns
                           else pl.lit(None, pl.String).alias("source"))
    rows = generated.join(parents, on="syn_parent_id", how="left").with_columns(content_sha256=gate.content_sha256())
    if label_col in batch.columns:
        rows = rows.with_columns(pl.col("label").alias(label_col))
    out_schema = {**batch.schema, **{c: t for c, t in ADDS.items() if c not in batch.columns}}
    return rows.select([(pl.col(c) if c in rows.columns else pl.lit(None)).cast(t).alias(c)
                        for c, t in out_schema.items()] + [pl.col("reason"), pl.col("evidence")])


def apply(batch: pl.DataFrame, decisions: pl.DataFrame, params: AugmentParams) -> StageResult:
    cfg = params.augment
    label_col = cfg.label
    labeled = pl.col(label_col).is_not_null() if label_col in batch.columns else pl.lit(False)
    kept = batch.with_columns([pl.lit(None, t).alias(c) for c, t in ADDS.items() if c not in batch.columns])
    kept = kept.with_columns(label_source=pl.when(pl.col("label_source").is_null() & labeled)
                             .then(pl.lit("human")).otherwise(pl.col("label_source")))
    mine = decisions.filter(pl.col("syn_parent_id").is_in(batch["id"].implode()))
    rows = _synthetic_rows(batch, mine, label_col)
    passed = rows.filter(pl.col("reason").is_null()).drop("reason", "evidence")
    failed = rows.filter(pl.col("reason").is_not_null())
    counts = {"augment.real": batch.height, "augment.synthetic": passed.height, "augment.gate_failed": failed.height}
    for (name,), part in mine.group_by("slice"):
        counts[f"augment.synthetic.{name}"] = int(part["reason"].is_null().sum())
    for (reason,), part in failed.group_by("reason"):
        counts[reason] = part.height
    sliced = batch.with_columns(plan.membership(cfg)).filter(pl.col(SLICE).is_not_null())
    for name, n in sliced.group_by(SLICE).len().iter_rows():
        counts[f"augment.real.{name}"] = n
    every = pl.concat([kept.select("label_source"), passed.select("label_source")])
    counts["augment.labels.human"] = int((every["label_source"] == "human").sum())
    counts["augment.labels.all"] = int(every["label_source"].is_not_null().sum())
    empty_rejected = kept.clear().with_columns(reason=pl.lit(None, pl.String), evidence=pl.lit(None, pl.String))
    return StageResult(kept=kept, rejected=pl.concat([empty_rejected, failed], how="vertical_relaxed")
                       if failed.height else empty_rejected, stats=Stats(counts=counts),
                       synthetic=passed if passed.height else None, synthetic_rejected=failed.height)


def apply_routed(batch: pl.DataFrame, routed: dict[str, pl.DataFrame], params: AugmentParams) -> StageResult:
    """The shard's rows with the generated rows routed to it; the one shard that gets `requests` also counts the
    generation requests (once for the stage)."""
    generated = routed.get("generated")
    result = apply(batch, generated if generated is not None and generated.width else _NO_DECISIONS, params)
    requests = routed.get("requests")
    if requests is None or not requests.height:
        return result
    asked = Stats.model_validate(orjson.loads(requests["stats"][0]))
    return replace(result, stats=Stats.merge([result.stats, asked]))


_NO_DECISIONS = pl.DataFrame(schema={"id": pl.String, "slice": pl.String, "label": pl.String, "reason": pl.String,
                                     "evidence": pl.String, "text": pl.String, "syn_instruction": pl.String,
                                     "syn_origin": pl.String, "syn_generator": pl.String,
                                     "syn_parent_id": pl.String, "syn_prompt_sha256": pl.String,
                                     "syn_seed": pl.Int64, "label_source": pl.String})
PLAN = steps.plan_of(apply_routed)


def augment_one_shard(batch: pl.DataFrame, params: AugmentParams, loaded: AugmentModels | None = None) -> StageResult:
    """The whole stage on one frame (every step in memory): what `stage.fn(df)` means for augment."""
    loaded = loaded if loaded is not None else load(params)
    (result,), _, _ = run_in_memory(PLAN, [batch], params, loaded=loaded)
    return result


def rate_checks(stats: Stats, rows_in: int, params: AugmentParams) -> list[dict]:
    """Generation requests that failed after retries warn (naming the first error); the human-label floor
    (`augment.min_human_label_share`) is part of the contract."""
    asked, failed = stats.counts.get("augment.requests", 0), stats.counts.get("augment.requests_failed", 0)
    first = (stats.records.get("generation_errors") or [{}])[0].get("error", "")
    checks = [{"name": "augment.requests_failed", "count": failed, "rate": failed / asked if asked else 0.0,
               "warn": 0.0, "max": 1.0,
               "warning": f"augment: {failed:,} of {asked:,} generation requests failed after retries (first: "
                          f"{first})"}]
    floor = params.augment.min_human_label_share
    if floor is None:
        return checks
    human, labeled = stats.counts.get("augment.labels.human", 0), stats.counts.get("augment.labels.all", 0)
    share = human / labeled if labeled else 1.0
    return checks + [{"name": "augment.human_label_share", "count": labeled - human,
                      "rate": 1.0 if share < floor else 0.0,
             "warn": 1.0, "max": 0.0,
             "message": f"only {share:.1%} of labeled rows keep a human label ({human:,} of {labeled:,}); the "
                        f"contract asks at least {floor:.1%} (augment.min_human_label_share)"}]


def summarize(stats: Stats, params: AugmentParams) -> dict:
    c = stats.counts
    slices = {}
    for s in params.augment.slices:
        real, syn = c.get(f"augment.real.{s.name}", 0), c.get(f"augment.synthetic.{s.name}", 0)
        slices[s.name] = {"real": real, "synthetic": syn, "synthetic_share": round(syn / (real + syn), 4)
                          if real + syn else 0.0}
    return {"generator": params.augment.generator, "task": params.augment.task, "slices": slices,
            "synthetic": c.get("augment.synthetic", 0), "gate_failed": c.get("augment.gate_failed", 0),
            "gate": {k: v for k, v in c.items() if k.startswith("augment.gate.")}}


STAGE = Stage(
    name="augment",
    fn=augment_one_shard,
    params=lambda cfg: AugmentParams(augment=cfg.augment, score=cfg.score, quality=cfg.quality,
                                     decontaminate=cfg.decontaminate),
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"]},
    adds=ADDS,
    suite="augment",
    resources="gpu",
    kind="global",
    plan=PLAN,
    setup=load,
    externals=externals,
    teardown=release,
    needs=("torch", "transformers", "sentence_transformers", "rapidfuzz", "openai"),
    rate_checks=rate_checks,
    summarize=summarize,
    description="synthetic rows for scarce slices (local LM, OpenAI-compatible server, word-level baseline), "
                "each through a gate that reuses the other stages' checks",
)
