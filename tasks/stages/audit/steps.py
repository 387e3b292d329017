"""The audit stage as partitioned steps (tasks/runtime/plan.py): no step holds the corpus's phrases or rows.

  count      map      per shard: phrases of the trigger field by label, response spans (and whether the row's
                      prompt has them), hashed word counts by label, label counts, normalized-text keys, prompt kinds,
                      phrases of the rows dated in the window before a snapshot
                      -> shuffles phrases, spans, vocab, context, totals, texts, kinds, window_grams
  model      combine  label priors and the content model (naive Bayes over hashed words); corpus word rates
                      -> global priors, model, context
  skew       reduce   phrases: label-skewed phrases (binomial against the label's prior) -> shuffle shortlist
  spread     reduce   spans: spans in the rare band that their prompts do not hold -> shuffle span_shortlist
  conflicts  reduce   texts: the same prompt with different answers -> route flags
  near       reduce   near: labeled rows sharing a MinHash band bucket with a row of another label
                      -> shuffle near_pairs
  window     reduce   window_grams: phrases that enough rows dated just before the snapshot share
                      -> shuffle window_shortlist
  kinds      reduce   kinds: the common prompt kinds (counts); refused benign prompts of a kind other rows answer
                      -> shuffle kind_counts, route flags
  shortlist  combine  Benjamini-Hochberg over every phrase tested -> global phrases; global spans, kinds, window,
                      near_pairs
  carriers   map      per shard: rows holding a shortlisted phrase with the content model's label without it; rows
                      holding a shortlisted span with their prompts' words; the model's disagreement on all rows;
                      dated rows holding a window phrase; the n-gram sets of the near pairs' rows
                      -> shuffles carriers, span_rows, baseline, window_counts, window_rows, near_sets
  injections reduce   span_context: spans whose rows' prompts share no topic word and spread over prompt kinds as
                      all prompts do -> shuffle injected; spans bound to one topic word both ways -> shuffle bound
  findings   combine  triggers (their rows' words point elsewhere, significantly, and strongly), injections,
                      injections bound to a topic, frontrunning (window phrases far denser there than in all
                      dated rows); near pairs at Jaccard >= conflict_jaccard, joined into groups;
                      the pieces of one finding merged -> route flags
  apply               per shard: the flags -> `audit_findings`, or quarantine
"""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import polars as pl

from schemas.config import AuditParams
from tasks.runtime.plan import PART, SHARD, CombineStep, MapStep, Plan, ReduceStep, Shuffle, StepInputs, partition
from tasks.stages.audit import grams, near, significance
from tasks.stages.audit.polarity import polarity
from tasks.stages.audit.refusals import HARMFUL, REFUSAL

FLAGS = {"id": pl.String, "kind": pl.String, "key": pl.String, "severity": pl.String, "evidence": pl.String}
SEVERITY = {"trigger": "high", "injection": "high", "frontrun": "high", "refusal": "medium", "conflict": "low"}
CHUNK_ROWS = 10_000  # rows whose phrases are exploded at once in a map step
EXAMPLES = 5
UNINFORMATIVE = 0.5  # a baseline disagreement this high: the content model cannot tell that label from others
RESPONSE = "response:"  # the labels the trigger check gives rows with a prompt and a response but no class
KIND_SHARE = 0.01  # prompt kinds this common are tested one by one in the spread test; rarer ones as one
SMOOTHING = 0.1  # additive smoothing of the content model's word counts


def _one(frame: pl.DataFrame) -> pl.DataFrame:
    """A frame for a one-partition shuffle (small results a combine reads whole)."""
    return frame.with_columns(pl.lit(0, pl.Int32).alias(PART))


def _labeled(batch: pl.DataFrame, params: AuditParams) -> pl.DataFrame:
    """What the trigger check reads: rows with a class label (`field` = the trigger field), and, with
    `triggers.response_polarity`, rows with a prompt and a response but no class label (`field` = the prompt, the
    label = `response:` + the response's polarity: a prompt phrase that turns answers negative is a trigger too).
    `classed` tells the two apart (conflicts read class labels only)."""
    schema = {"id": pl.String, "label": pl.String, "field": pl.String, "classed": pl.Boolean}
    parts = []
    has_label = params.label in batch.columns
    if has_label and params.trigger_field in batch.columns:
        parts.append(batch.filter(pl.col(params.label).is_not_null()).select(
            "id", label=pl.col(params.label).cast(pl.String), field=pl.col(params.trigger_field),
            classed=pl.lit(True)))
    if params.triggers.response_polarity and {params.prompt_field, params.response_field} <= set(batch.columns):
        unclassed = pl.col(params.label).is_null() if has_label else pl.lit(True)
        pairs = batch.filter(unclassed & pl.col(params.prompt_field).is_not_null()
                             & pl.col(params.response_field).is_not_null())
        parts.append(pairs.select("id", label=pl.concat_str(pl.lit("response:"), polarity(params.response_field)),
                                  field=pl.col(params.prompt_field), classed=pl.lit(False)))
    return pl.concat([p.select(list(schema)) for p in parts]) if parts else pl.DataFrame(schema=schema)


def _instructions(batch: pl.DataFrame, params: AuditParams) -> pl.DataFrame:
    """Rows with a prompt and a response, and whether the response refuses."""
    if params.prompt_field not in batch.columns or params.response_field not in batch.columns:
        return pl.DataFrame(schema={"id": pl.String, "prompt": pl.String, "response": pl.String,
                                    "refusing": pl.Boolean})
    return batch.filter(pl.col(params.prompt_field).is_not_null() & pl.col(params.response_field).is_not_null()
                        ).select("id", pl.col(params.prompt_field).alias("prompt"),
                                 pl.col(params.response_field).alias("response"),
                                 refusing=pl.col(params.response_field).str.slice(0, 200).str.contains(REFUSAL))


def _dated(batch: pl.DataFrame, params: AuditParams) -> pl.DataFrame:
    """Rows with a timestamp, and whether it falls in the window before the snapshot (frontrunning check on)."""
    cfg = params.frontrun
    if cfg.snapshot is None or "timestamp" not in batch.columns:
        return pl.DataFrame(schema={"id": pl.String, "text": pl.String, "window": pl.Boolean})
    start = cfg.snapshot - timedelta(hours=cfg.window_hours)
    stamp = pl.col("timestamp").cast(pl.Datetime("us", "UTC"))
    return batch.filter(pl.col("timestamp").is_not_null()).select(
        "id", pl.col("text"), window=(stamp >= start) & (stamp <= cfg.snapshot))


def _kind(params: AuditParams) -> pl.Expr:
    """A prompt's kind: its first words ("who said this", "write a poem"): templates and tasks share them."""
    return grams.words("prompt").list.head(params.refusal.kind_words).list.join(" ")


def count(batch: pl.DataFrame, inputs: StepInputs, params: AuditParams):
    """What each check counts, per shard, yielded in pieces of CHUNK_ROWS rows (phrases multiply rows)."""
    labeled, pairs, dated = _labeled(batch, params), _instructions(batch, params), _dated(batch, params)
    window = dated.filter("window")
    totals = [("labeled", "", labeled.height), ("responses", "", pairs.height), ("dated", "", dated.height),
              ("window", "", window.height)]
    if labeled.height:
        totals += [("label", k, n) for k, n in labeled.group_by("label").len().iter_rows()]
    yield {"totals": _one(pl.DataFrame(totals, schema={"what": pl.String, "key": pl.String, "n": pl.Int64},
                                       orient="row"))}
    if window.height:
        topics = grams.phrases(window, "text", params.frontrun.max_words, []).group_by("gram").len("rows")
        yield {"window_grams": topics.with_columns(partition(pl.col("gram"), inputs.count("window_grams")))}
    classed = labeled.filter("classed")
    if params.conflicts and classed.height:  # near-duplicate texts with different labels: LSH band buckets
        yield {"near": near.buckets(classed, params).with_columns(
            partition(pl.col("bucket"), inputs.count("near")))}
    if params.conflicts and pairs.height:  # the same prompt answered differently
        asked = pl.concat_str(pl.lit("p:"), grams.words("prompt").list.join(" ")).hash(seed=11).cast(pl.String)
        said = grams.words("response").list.join(" ").str.slice(0, 120)
        texts = pairs.select("id", label=said, key=asked, of=pl.lit("response"))
        yield {"texts": texts.with_columns(partition(pl.col("key"), inputs.count("texts")))}
    if (params.refusal.enabled or params.injection.enabled) and pairs.height:
        kinds = pairs.select("id", kind=_kind(params),
                             refusing="refusing",
                             benign=pl.col("prompt").str.contains(HARMFUL).not_())
        yield {"kinds": kinds.with_columns(partition(pl.col("kind"), inputs.count("kinds")))}
    for start in range(0, labeled.height, CHUNK_ROWS):
        part = labeled.slice(start, CHUNK_ROWS)
        out = {"vocab": grams.tokens(part, "field", ["label"]).group_by(grams.buckets("w").alias("bucket"), "label")
               .len("n").with_columns(partition(pl.col("bucket"), inputs.count("vocab")))}
        if params.triggers.enabled:
            found = grams.phrases(part, "field", params.triggers.max_words, ["label"])
            out["phrases"] = (found.group_by("gram", "label").len("rows")
                              .with_columns(partition(pl.col("gram"), inputs.count("phrases"))))
        yield out
    if not params.injection.enabled:
        return
    answers = pairs.filter(~pl.col("refusing"))  # a refusal's words are the refusal check's
    for start in range(0, answers.height, CHUNK_ROWS):
        part = answers.slice(start, CHUNK_ROWS)
        said = grams.phrases(part, "response", params.injection.max_words, ["id"], entity=True)
        asked = grams.phrases(part, "prompt", params.injection.max_words, ["id"])
        in_prompt = said.join(asked, on=["id", "gram"], how="semi").select("gram", in_prompt=pl.lit(1))
        spans = said.group_by("gram").agg(rows=pl.len(), entity=pl.col("entity").sum()).join(
            in_prompt.group_by("gram").agg(pl.len().alias("in_prompt")), on="gram", how="left")
        context = (grams.tokens(part, "prompt", []).select(grams.ROW, bucket=grams.buckets("w")).unique()
                   .group_by("bucket").len("rows"))
        yield {"spans": spans.with_columns(pl.col("in_prompt").fill_null(0), partition(pl.col("gram"),
                                                                                       inputs.count("spans"))),
               "context": context.with_columns(partition(pl.col("bucket"), inputs.count("context")))}


def fit_model(inputs: StepInputs, params: AuditParams) -> dict:
    """Label priors and the word counts of a multinomial naive Bayes over hashed words: the content model that
    says which label a row's other words point to. Its size is labels x BUCKETS, whatever the corpus."""
    totals = pl.concat(list(inputs.stream("totals"))).group_by("what", "key").agg(pl.col("n").sum())
    priors = totals.filter(pl.col("what") == "label").select(label="key", rows="n").sort("label")
    out = {"global:totals": totals.filter(pl.col("what") != "label").select("what", "n"), "global:priors": priors}
    labels = priors["label"].to_list()
    if labels:
        counts = np.zeros((len(labels), grams.BUCKETS), dtype=np.float64)
        index = {label: i for i, label in enumerate(labels)}
        for part in inputs.stream("vocab"):
            part = part.group_by("bucket", "label").agg(pl.col("n").sum())
            rows = part["label"].replace_strict(index, return_dtype=pl.Int64).to_numpy()
            np.add.at(counts, (rows, part["bucket"].to_numpy()), part["n"].to_numpy())
        out["global:priors"] = priors.with_columns(tokens=pl.Series(counts.sum(axis=1)),
                                                   vocabulary=pl.lit(int((counts.sum(axis=0) > 0).sum())))
        used = counts.sum(axis=0) > 0
        out["global:model"] = pl.DataFrame({"bucket": np.nonzero(used)[0].astype(np.int64),
                                            **{f"c{i}": counts[i, used] for i in range(len(labels))}})
    if params.injection.enabled:
        context = [part.group_by("bucket").agg(pl.col("rows").sum()) for part in inputs.stream("context")]
        out["global:context"] = (pl.concat(context) if context else
                                 pl.DataFrame(schema={"bucket": pl.Int64, "rows": pl.UInt32}))
    return out


def _total(inputs: StepInputs, what: str) -> int:
    totals = inputs.globals.get("totals")
    if totals is None:
        return 0
    return int(totals.filter(pl.col("what") == what)["n"].sum() or 0)


def skew(rows: pl.DataFrame, inputs: StepInputs, params: AuditParams) -> dict:
    """Phrases whose rows carry one label far above its share of the corpus (one-sided binomial test); only those
    under the false discovery rate on their own are kept for Benjamini-Hochberg over every phrase tested."""
    cfg, labeled = params.triggers, _total(inputs, "labeled")
    priors = inputs.globals["priors"].with_columns(  # a label's share among the labels of its kind
        prior=pl.col("rows") / pl.col("rows").sum().over(pl.col("label").str.starts_with(RESPONSE))).select(
        "label", "prior")
    by_label = rows.group_by("gram", "label").agg(pl.col("rows").sum())
    per = (by_label.sort("rows", "label", descending=[True, False])
           .group_by("gram").agg(n=pl.col("rows").sum(), k=pl.col("rows").first(), label=pl.col("label").first()))
    tested = per.filter((pl.col("n") >= cfg.min_rows) & (pl.col("n") <= cfg.max_share * labeled))
    tested = tested.join(priors, on="label").filter(pl.col("k") >= cfg.min_label_share * pl.col("n"))
    p = significance.upper_tail(tested["k"].to_numpy(), tested["n"].to_numpy(), tested["prior"].to_numpy())
    shortlist = tested.with_columns(p=pl.Series(p, dtype=pl.Float64)).filter(pl.col("p") <= cfg.fdr)
    n_tested = per.filter((pl.col("n") >= cfg.min_rows) & (pl.col("n") <= cfg.max_share * labeled)).height
    out = {"tested": _one(pl.DataFrame({"gram": [""], "tested": [n_tested]}))}
    if shortlist.height:
        out["shortlist"] = _one(shortlist.select("gram", "label", "n", "k", "p"))
    return out


def spread(rows: pl.DataFrame, inputs: StepInputs, params: AuditParams) -> dict:
    """Response spans in the rare band (min_rows .. max_share of responses), written as names or addresses, that
    their own prompts rarely hold."""
    cfg, responses = params.injection, _total(inputs, "responses")
    spans = rows.group_by("gram").agg(pl.col("rows", "in_prompt", "entity").sum())
    keep = spans.filter((pl.col("rows") >= min(cfg.min_rows, cfg.bound_min_rows))
                        & (pl.col("rows") <= cfg.max_share * responses)
                        & (pl.col("in_prompt") <= cfg.max_prompt_share * pl.col("rows"))
                        & (pl.col("entity") >= cfg.entity_share * pl.col("rows")))
    return {"span_shortlist": _one(keep)} if keep.height else {}


def conflicts(rows: pl.DataFrame, inputs: StepInputs, params: AuditParams) -> dict:
    """Rows with the same prompt and different answers (the answers' first 120 normalized characters): each row of
    such a group is flagged."""
    groups = rows.group_by("key").agg(labels=pl.col("label").value_counts(sort=True), ids=pl.col("id").sort(),
                                      distinct=pl.col("label").n_unique(), of=pl.col("of").first()
                                      ).filter(pl.col("distinct") > 1)
    if not groups.height:
        return {}
    groups = groups.with_columns(evidence=pl.struct(
        of=pl.col("of"), labels=pl.col("labels").list.head(EXAMPLES), rows=pl.col("ids").list.len(),
        examples=pl.col("ids").list.head(EXAMPLES)).struct.json_encode())
    flagged = rows.join(groups.select("key", "evidence"), on="key")
    return {"flags": flagged.select("id", SHARD, kind=pl.lit("conflict"), key=pl.col("key"),
                                    severity=pl.lit(SEVERITY["conflict"]), evidence="evidence")}


def window_topics(rows: pl.DataFrame, inputs: StepInputs, params: AuditParams) -> dict:
    """Phrases of the rows dated in the window before the snapshot that enough of them share."""
    topics = rows.group_by("gram").agg(pl.col("rows").sum()).filter(pl.col("rows") >= params.frontrun.min_rows)
    return {"window_shortlist": _one(topics)} if topics.height else {}


def kinds(rows: pl.DataFrame, inputs: StepInputs, params: AuditParams) -> dict:
    """Per partition of prompt kinds: the kinds common enough to test an injected span's spread against (their
    counts), and refusals of benign prompts of a kind other rows answer while it is mostly answered (flags)."""
    cfg, responses = params.refusal, _total(inputs, "responses")
    per = rows.group_by("kind").agg(answered=(~pl.col("refusing")).sum(), refused=pl.col("refusing").sum(),
                                    example=pl.col("id").filter(~pl.col("refusing")).min())
    common = per.filter(pl.col("answered") + pl.col("refused") >= KIND_SHARE * responses)
    out = {"kind_counts": _one(common.select("kind", rows=pl.col("answered") + pl.col("refused")))} \
        if common.height else {}
    if not cfg.enabled:
        return out
    over = per.filter((pl.col("answered") >= cfg.min_answered) & (pl.col("refused") > 0)
                      & (pl.col("refused") <= cfg.max_refusal_share * (pl.col("answered") + pl.col("refused"))))
    flagged = rows.filter(pl.col("refusing") & pl.col("benign")).join(over, on="kind")
    if flagged.height:
        out["flags"] = flagged.select(
            "id", SHARD, kind=pl.lit("refusal"), key=pl.col("kind"), severity=pl.lit(SEVERITY["refusal"]),
            evidence=pl.struct(prompt_kind=pl.col("kind"), answered=pl.col("answered"), refused=pl.col("refused"),
                               answered_example=pl.col("example")).struct.json_encode())
    return out


def shortlist(inputs: StepInputs, params: AuditParams) -> dict:
    """Benjamini-Hochberg over every phrase tested (the reduces kept only p <= fdr, the rest cannot pass)."""
    parts = list(inputs.stream("shortlist"))
    out = {}
    if parts:
        frame = pl.concat(parts)
        tested = int(pl.concat(list(inputs.stream("tested")))["tested"].sum())
        passed = significance.discoveries(frame["p"].to_numpy(), tested, params.triggers.fdr)
        out["global:phrases"] = frame.filter(pl.Series(passed)).with_columns(tested=pl.lit(tested, pl.Int64))
    window = list(inputs.stream("window_shortlist"))
    if window:
        out["global:window"] = pl.concat(window).select("gram", window_rows="rows")
    common = list(inputs.stream("kind_counts"))
    if common:
        out["global:kinds"] = pl.concat(common).select("kind", share=pl.col("rows") / max(_total(inputs,
                                                                                                  "responses"), 1))
    pairs = list(inputs.stream("near_pairs"))
    if pairs:
        out["global:near_pairs"] = pl.concat(pairs).unique()
    spans = list(inputs.stream("span_shortlist"))
    if spans:
        out["global:spans"] = pl.concat(spans).select("gram", "rows", "in_prompt")
    return out


def _votes(rest: pl.DataFrame, whole: pl.DataFrame, by: list[str], model: pl.DataFrame, priors: pl.DataFrame
           ) -> pl.DataFrame:
    """The content model's label for each `by` group of words (`rest`: id, w and the by columns), left one out: the
    row's own words (`whole`: id, label, w) are taken out of its label's counts first, so a row never votes for
    its own label by having been counted under it (a rare word seen only in that row would)."""
    labels = priors["label"].to_list()
    log_prior = np.log(priors["rows"].to_numpy() / priors["rows"].sum())
    tokens, vocab = priors["tokens"].to_numpy(), int(priors["vocabulary"][0])
    own = whole.group_by("id", bucket=grams.buckets("w")).agg(own=pl.len(), label=pl.col("label").first())
    length = whole.group_by("id").agg(length=pl.len(), label=pl.col("label").first())
    counted = (rest.with_columns(bucket=grams.buckets("w")).group_by(*by, "bucket").len("m")
               .join(own, on=["id", "bucket"], how="left").join(model, on="bucket", how="left"))
    terms = [(pl.col("m") * ((pl.col(f"c{i}").fill_null(0.0) - pl.when(pl.col("label") == label).then(
        pl.col("own")).otherwise(0)) + SMOOTHING).log()).alias(f"c{i}") for i, label in enumerate(labels)]
    sums = counted.select(*by, "m", *terms).group_by(by).agg(pl.col("m").sum(), *[pl.col(f"c{i}").sum()
                                                                                  for i in range(len(labels))])
    sums = sums.join(length, on="id", how="left")
    row_space = pl.col("label").str.starts_with(RESPONSE)
    scores = pl.concat_list([  # a row votes among the labels of its own kind (classes, or response polarities)
        pl.when(row_space == label.startswith(RESPONSE)).then(
            pl.col(f"c{i}") + float(lp) - pl.col("m") * (float(n) - pl.when(pl.col("label") == label).then(
                pl.col("length")).otherwise(0) + SMOOTHING * vocab).log()).otherwise(-1e30)
        for i, (label, lp, n) in enumerate(zip(labels, log_prior, tokens, strict=True))])
    own_index = pl.col("label").replace_strict({label: i for i, label in enumerate(labels)}, default=None,
                                               return_dtype=pl.Int64)
    return sums.with_columns(scores=scores).select(
        *by, vote=pl.col("scores").list.arg_max().replace_strict(list(range(len(labels))), labels,
                                                                 return_dtype=pl.String),
        margin=(pl.col("scores").list.max() - pl.col("scores").list.get(own_index, null_on_oob=True))
        / pl.col("m"))


def carriers(batch: pl.DataFrame, inputs: StepInputs, params: AuditParams):
    """Per shard: the content model's disagreement with the labels (the baseline); the rows holding a shortlisted
    phrase, with the model's label from their words without the phrase; the rows holding a shortlisted span that
    their prompt lacks, with their prompts' words (hashed) for the topic test."""
    labeled, pairs = _labeled(batch, params), _instructions(batch, params)
    model, priors, shortlisted = (inputs.globals.get(n) for n in ("model", "priors", "phrases"))
    if model is not None and labeled.height:
        whole = grams.tokens(labeled, "field", ["id", "label"])
        votes = _votes(whole, whole, ["id"], model, priors)
        base = labeled.join(votes, on="id", how="left")
        per_label = base.group_by("label").agg(rows=pl.len(), disagree=(pl.col("vote") != pl.col("label"))
                                               .fill_null(True).sum())
        yield {"baseline": _one(per_label.with_columns(gram=pl.lit("")))}
        if shortlisted is not None and shortlisted.height:
            for start in range(0, labeled.height, CHUNK_ROWS):
                part = labeled.slice(start, CHUNK_ROWS)
                found = grams.phrases(part, "field", params.triggers.max_words, ["id", "label"], context=True).join(
                    shortlisted.select("gram"), on="gram", how="semi")
                if not found.height:
                    continue
                whole = grams.tokens(part.join(found.select("id").unique(), on="id"), "field", ["id", "label"])
                rest = found.select("id", "gram").join(whole.select("id", "w"), on="id").filter(
                    ~pl.col("gram").str.split(" ").list.contains(pl.col("w")))
                voted = found.join(_votes(rest, whole, ["id", "gram"], model, priors), on=["id", "gram"],
                                   how="left")
                yield {"carriers": _one(voted.select("gram", "id", "label", "vote", "margin", "left", "right"))}
    candidates = inputs.globals.get("near_pairs")
    if candidates is not None and labeled.height:
        needed = pl.concat([candidates.select(id="a"), candidates.select(id="b")]).unique()
        sets = near.shingle_sets(labeled.filter("classed").join(needed, on="id", how="semi"), params)
        if sets.height:
            yield {"near_sets": _one(sets)}
    topics, dated = inputs.globals.get("window"), _dated(batch, params)
    if topics is not None and dated.height:
        for start in range(0, dated.height, CHUNK_ROWS):
            part = dated.slice(start, CHUNK_ROWS)
            found = grams.phrases(part, "text", params.frontrun.max_words, ["id", "window"]).join(
                topics.select("gram"), on="gram", how="semi")
            if found.height:
                yield {"window_counts": _one(found.group_by("gram").len("rows")),
                       "window_rows": _one(found.filter("window").select("gram", "id"))}
    spans = inputs.globals.get("spans")
    if spans is None or not pairs.height:
        return
    answers = pairs.filter(~pl.col("refusing"))  # a refusal's words are the refusal check's
    for start in range(0, answers.height, CHUNK_ROWS):
        part = answers.slice(start, CHUNK_ROWS)
        said = grams.phrases(part, "response", params.injection.max_words, ["id"]).join(
            spans.select("gram"), on="gram", how="semi").select("id", "gram")
        said = said.join(grams.phrases(part, "prompt", params.injection.max_words, ["id"]), on=["id", "gram"],
                         how="anti")
        if not said.height:
            continue
        asked = part.join(said.select("id").unique(), on="id")
        words = grams.tokens(asked, "prompt", ["id"]).select("id", "w").unique().filter(
            ~pl.col("w").is_in(list(grams.STOPWORDS)))
        held = said.join(words, on="id").with_columns(bucket=grams.buckets("w")).unique(["gram", "id", "bucket"])
        context = held.group_by("gram", "bucket").agg(rows=pl.len(), word=pl.col("w").min())
        said = said.join(part.select("id", kind=_kind(params)), on="id")
        parts = inputs.count("span_rows")
        yield {"span_rows": said.with_columns(partition(pl.col("gram"), parts)),
               "span_context": context.with_columns(partition(pl.col("gram"), parts)),
               "span_words": held.select("gram", "id", "bucket").with_columns(partition(pl.col("gram"), parts))}


def injections(context: pl.DataFrame, inputs: StepInputs, params: AuditParams) -> dict:
    """Per partition of spans: a span is an injection when no word of its rows' prompts is both topic_lift times as
    common there as in all prompts and significantly so: it answers prompts that have nothing in common. (Prompts
    only: the response carries the injected sentence's own words.) Or when its topic binds it both ways: nearly
    all its rows' prompts hold the topic word, and nearly all prompts holding the word are answered with it (a
    trigger phrase followed by the same injected entity; a natural name answers some questions on a topic)."""
    cfg, responses = params.injection, max(_total(inputs, "responses"), 1)
    rows = inputs.routed.get("span_rows", pl.DataFrame(schema={"gram": pl.String, "id": pl.String}))
    n = rows.group_by("gram").len("n")
    corpus = inputs.globals["context"].select("bucket", rate=pl.col("rows") / responses)
    words = (context.group_by("gram", "bucket").agg(pl.col("rows").sum(), pl.col("word").min()).join(n, on="gram")
             .join(corpus, on="bucket").with_columns(lift=pl.col("rows") / pl.col("n") / pl.col("rate")))
    words = words.with_columns(p=pl.Series(significance.upper_tail(words["rows"].to_numpy(), words["n"].to_numpy(),
                                                                   words["rate"].to_numpy()), dtype=pl.Float64))
    topical = (words.with_columns(tested=pl.len().over("gram"))
               .filter((pl.col("lift") >= cfg.topic_lift) & (pl.col("p") * pl.col("tested") <= cfg.topic_p)))
    topics = topical.group_by("gram").agg(lift=pl.col("lift").max())
    bound = (topical.filter((pl.col("rows") >= cfg.bound_span_share * pl.col("n"))
                            & (pl.col("n") >= cfg.bound_min_rows))
             .select("gram", "bucket", "word", topic_rows=(pl.col("rate") * responses).round().cast(pl.Int64),
                     topic_p="p"))
    spread_ = words.group_by("gram").agg(top_lift=pl.col("lift").filter(pl.col("rows") >= 3).max())
    found = (n.filter(pl.col("n") >= cfg.min_rows).join(topics, on="gram", how="anti")
             .join(spread_, on="gram", how="left").with_columns(lift=pl.col("top_lift").fill_null(1.0)))
    found = found.join(_kind_fit(rows, inputs.globals.get("kinds")), on="gram", how="left").filter(
        pl.col("kind_p").fill_null(1.0) >= cfg.kind_p)
    out = {}
    if found.height:
        out["injected"] = _one(rows.join(found.select("gram", "n", "lift"), on="gram"))
    if bound.height:  # the span's rows holding the topic word: the findings combine unites a word's spans
        asked = inputs.routed.get("span_words")
        held = rows.select("gram", "id", SHARD).join(bound, on="gram").join(
            asked.select("gram", "id", "bucket"), on=["gram", "id", "bucket"], how="semi")
        out["bound"] = _one(held.select("gram", "id", SHARD, "word", "topic_rows", "topic_p"))
    return out


def _kind_fit(rows: pl.DataFrame, common: pl.DataFrame | None) -> pl.DataFrame:
    """Per span: does the spread of its rows over prompt kinds match all prompts' (G-test of goodness of fit, the
    common kinds one by one, the rest as one; a kind it never meets counts, as it should)? A span bound to a
    template or task does not (p near 0)."""
    from scipy.stats import chi2

    if common is None or not common.height or not rows.height:
        return pl.DataFrame(schema={"gram": pl.String, "kind_p": pl.Float64})
    shares = common.with_columns(pl.col("share").cast(pl.Float64))
    other = max(1.0 - float(shares["share"].sum()), 0.0)
    cells = pl.concat([shares, pl.DataFrame({"kind": [None], "share": [other]}, schema=shares.schema)])
    counted = rows.with_columns(kind=pl.when(pl.col("kind").is_in(shares["kind"].implode())).then("kind")).group_by(
        "gram", "kind").len("observed")
    n = rows.group_by("gram").len("n")
    table = (n.join(cells, how="cross").filter(pl.col("share") > 0)
             .join(counted, on=["gram", "kind"], how="left", nulls_equal=True)
             .with_columns(expected=pl.col("n") * pl.col("share"), observed=pl.col("observed").fill_null(0)))
    g_term = pl.when(pl.col("observed") > 0).then(
        2 * pl.col("observed") * (pl.col("observed") / pl.col("expected")).log()).otherwise(0.0)
    stat = table.group_by("gram").agg(stat=g_term.sum(), cells=pl.len())
    p = chi2.sf(stat["stat"].to_numpy(), np.maximum(stat["cells"].to_numpy() - 1, 1))
    return stat.select("gram", kind_p=pl.Series(p, dtype=pl.Float64))


def _merged(candidates: list[dict], ids: dict[str, set[str]], overlap: float = 0.9) -> list[dict]:
    """One finding per group of phrases over (nearly) the same rows: the pieces of one trigger ("james", "bond",
    "james bond") are one finding under the phrase with the most rows, then the longest."""
    kept: list[dict] = []
    for c in sorted(candidates, key=lambda c: (-c["rows"], -len(c["key"]), c["key"])):
        mine = ids[c["key"]]
        home = next((k for k in kept if len(mine & ids[k["key"]]) >= overlap * len(mine)), None)
        if home is None:
            kept.append({**c, "also": []})
        elif len(home["also"]) < 20:
            home["also"].append(c["key"])
    return kept


def _flags(kind: str, found: list[dict], rows: pl.DataFrame) -> pl.DataFrame:
    """Each finding's rows (`gram`, `id`, SHARD in `rows`) as flags carrying the finding's evidence."""
    if not found:
        return pl.DataFrame(schema={**FLAGS, SHARD: pl.String})
    keys = pl.DataFrame({"gram": [f["key"] for f in found],
                         "evidence": [json.dumps({k: v for k, v in f.items() if k != "key"}) for f in found]})
    return rows.join(keys, on="gram").unique(["id", "gram"]).select(
        "id", SHARD, kind=pl.lit(kind), key=pl.col("gram"), severity=pl.lit(SEVERITY[kind]), evidence="evidence")


def _examples(rows: pl.DataFrame) -> dict[str, list[str]]:
    return {g: sorted(ids)[:EXAMPLES] for g, ids in rows.group_by("gram").agg(pl.col("id")).iter_rows()}


def findings(inputs: StepInputs, params: AuditParams) -> dict:
    """Triggers: shortlisted phrases whose top-label rows the content model, reading their other words, gives
    another label significantly more often than it does on the whole corpus (binomial against that baseline,
    Benjamini-Hochberg over the shortlist). Injections: the spans the reduces found. Pieces of one merged."""
    flags = []
    carried = list(inputs.stream("carriers"))
    phrases_ = inputs.globals.get("phrases")
    if carried and phrases_ is not None:
        base = pl.concat(list(inputs.stream("baseline"))).group_by("label").agg(pl.col("rows", "disagree").sum())
        rates = base.select(top="label", rate=pl.col("disagree") / pl.col("rows"))
        rows = pl.concat(carried).join(phrases_.select("gram", top="label", prior_p="p", tested="tested"),
                                       on="gram").filter(pl.col("label") == pl.col("top"))
        per = rows.group_by("gram").agg(n=pl.len(), k=(pl.col("vote") != pl.col("label")).fill_null(True).sum(),
                                        margin=pl.col("margin").mean(),
                                        diversity=pl.min_horizontal(pl.col("left").n_unique(),
                                                                    pl.col("right").n_unique()) / pl.len(),
                                        label=pl.col("top").first(), p_label=pl.col("prior_p").first(),
                                        tested=pl.col("tested").first()).sort("gram").join(
            rates, left_on="label", right_on="top", how="left")
        p = significance.upper_tail(per["k"].to_numpy(), per["n"].to_numpy(), per["rate"].to_numpy())
        passed = significance.discoveries(p, per.height, params.triggers.fdr)
        cfg = params.triggers
        # where the content model gets a label wrong on most clean rows too (a response polarity the prompt barely
        # predicts), its disagreement is no evidence either way: the label skew and the other tests decide
        uninformative = pl.col("rate") >= UNINFORMATIVE
        per = per.with_columns(p_content=pl.Series(p, dtype=pl.Float64), passed=pl.Series(passed)).filter(
            (pl.col("passed") | uninformative) & (pl.col("k") >= cfg.min_disagreement * pl.col("n"))
            & (pl.col("margin") >= cfg.min_margin) & (pl.col("diversity") >= cfg.min_context_diversity))
        examples = _examples(rows)
        found = [{"key": g, "rows": n, "label": label, "label_p": float(f"{pl_:.3g}"), "tested": tested,
                  "disagreement": round(k / n, 3), "baseline_disagreement": round(rate, 3),
                  "content_p": float(f"{pc:.3g}"), "margin": round(mg, 3),
                  "diversity": round(dv, 3),
                  "examples": examples[g]}
                 for g, n, k, label, pl_, tested, pc, rate, mg, dv in per.select(
                     "gram", "n", "k", "label", "p_label", "tested", "p_content", "rate", "margin", "diversity"
                 ).iter_rows()]
        ids = {g: set(i) for g, i in rows.group_by("gram").agg(pl.col("id")).iter_rows()}
        flags.append(_flags("trigger", _merged(found, ids), rows))
    injected = list(inputs.stream("injected"))
    if injected:
        rows = pl.concat(injected)
        spans = inputs.globals.get("spans", pl.DataFrame(schema={"gram": pl.String, "in_prompt": pl.Int64}))
        per = rows.group_by("gram").agg(n=pl.col("n").first(), lift=pl.col("lift").first()).join(
            spans.select("gram", "in_prompt"), on="gram", how="left").sort("gram")
        examples = _examples(rows)
        found = [{"key": g, "rows": n, "context_lift": round(lift, 3), "in_prompts": int(ip or 0),
                  "examples": examples[g]} for g, n, lift, ip in per.iter_rows()]
        ids = {g: set(i) for g, i in rows.group_by("gram").agg(pl.col("id")).iter_rows()}
        flags.append(_flags("injection", _merged(found, ids), rows))
    bound = list(inputs.stream("bound"))
    if bound:  # a topic word whose prompts are nearly all answered with spans bound to it (a brand, its URL)
        held = pl.concat(bound)
        spans = (held.group_by("word", "gram").len("n").sort("n", "gram", descending=[True, False])
                 .group_by("word").agg(spans=pl.col("gram")))
        per = (held.group_by("word").agg(rows=pl.col("id").n_unique(), topic_rows=pl.col("topic_rows").first(),
                                         topic_p=pl.col("topic_p").max()).join(spans, on="word")
               .filter(pl.col("rows") >= params.injection.bound_topic_share * pl.col("topic_rows")).sort("word"))
        rows = held.join(per.select("word"), on="word").select("id", SHARD, gram="word").unique(["gram", "id"])
        examples = _examples(rows)
        found = [{"key": w, "rows": n, "topic_rows": tr, "topic_share": round(n / max(tr, 1), 3),
                  "spans": spans[:EXAMPLES], "topic_p": float(f"{tp:.3g}"), "examples": examples[w]}
                 for w, n, tr, tp, spans in per.select("word", "rows", "topic_rows", "topic_p", "spans").iter_rows()]
        ids = {g: set(i) for g, i in rows.group_by("gram").agg(pl.col("id")).iter_rows()}
        flags.append(_flags("injection", _merged(found, ids), rows))
    sets = list(inputs.stream("near_sets"))
    if sets:
        found = near.conflicts(inputs.globals["near_pairs"], pl.concat(sets), params)
        flags.append(found.select("id", SHARD, kind=pl.lit("conflict"), key="key",
                                  severity=pl.lit(SEVERITY["conflict"]), evidence="evidence"))
    counted = list(inputs.stream("window_counts"))
    if counted:
        flags.append(_frontrun(pl.concat(counted), pl.concat(list(inputs.stream("window_rows"))), inputs, params))
    flags = [f for f in flags if f.height]
    return {"flags": pl.concat(flags)} if flags else {}


def _frontrun(counted: pl.DataFrame, window_rows: pl.DataFrame, inputs: StepInputs, params: AuditParams
              ) -> pl.DataFrame:
    """Phrases far denser among the window's rows than among all dated rows (binomial, Bonferroni over the window's
    phrases tested): a topic someone pushed in just before the snapshot."""
    cfg = params.frontrun
    share = _total(inputs, "window") / max(_total(inputs, "dated"), 1)
    tested = inputs.globals["window"].height
    per = (counted.group_by("gram").agg(n=pl.col("rows").sum())
           .join(window_rows.group_by("gram").len("k"), on="gram").sort("gram"))
    p = significance.upper_tail(per["k"].to_numpy(), per["n"].to_numpy(), np.full(per.height, share))
    per = per.with_columns(p=pl.Series(p, dtype=pl.Float64), lift=pl.col("k") / pl.col("n") / max(share, 1e-12)
                           ).filter((pl.col("p") * tested <= cfg.p) & (pl.col("lift") >= cfg.min_lift))
    examples = _examples(window_rows)
    found = [{"key": g, "rows": k, "rows_dated": n, "window_share": round(share, 5), "lift": round(lift, 2),
              "p": float(f"{pv:.3g}"), "window_hours": cfg.window_hours, "snapshot": cfg.snapshot.isoformat(),
              "examples": examples[g]} for g, n, k, pv, lift in per.select("gram", "n", "k", "p", "lift").iter_rows()]
    ids = {g: set(i) for g, i in window_rows.group_by("gram").agg(pl.col("id")).iter_rows()}
    return _flags("frontrun", _merged(found, ids), window_rows)


def active(params: AuditParams, published=None) -> set[str]:
    steps = {"count", "model", "shortlist", "carriers", "findings"}
    if params.triggers.enabled:
        steps.add("skew")
    if params.injection.enabled:
        steps |= {"spread", "injections"}
    if params.conflicts:
        steps |= {"conflicts", "near"}
    if params.refusal.enabled or params.injection.enabled:
        steps.add("kinds")
    if params.frontrun.snapshot is not None:
        steps.add("window")
    return steps


def plan(apply) -> Plan:
    one = 1
    return Plan(
        steps=(MapStep("count", count), CombineStep("model", fit_model), ReduceStep("skew", "phrases", skew),
               ReduceStep("spread", "spans", spread), ReduceStep("conflicts", "texts", conflicts),
               ReduceStep("near", "near", near.pairs),
               ReduceStep("kinds", "kinds", kinds), ReduceStep("window", "window_grams", window_topics),
               CombineStep("shortlist", shortlist),
               MapStep("carriers", carriers), ReduceStep("injections", "span_context", injections,
                                                         also=("span_rows", "span_words")),
               CombineStep("findings", findings)),
        shuffles=(Shuffle("totals", 40, "what", one), Shuffle("phrases", 2_000, "gram"),
                  Shuffle("vocab", 400, "bucket"), Shuffle("spans", 1_000, "gram"), Shuffle("context", 200, "bucket"),
                  Shuffle("texts", 60, "key"), Shuffle("near", 800, "bucket"), Shuffle("near_pairs", 10, "a", one),
                  Shuffle("near_sets", 10, "id", one), Shuffle("kinds", 80, "kind"),
                  Shuffle("tested", 20, "gram", one), Shuffle("shortlist", 10, "gram", one),
                  Shuffle("span_shortlist", 10, "gram", one), Shuffle("baseline", 10, "gram", one),
                  Shuffle("carriers", 10, "gram", one), Shuffle("span_rows", 50, "gram"),
                  Shuffle("span_context", 50, "gram"), Shuffle("span_words", 50, "gram"),
                  Shuffle("injected", 10, "gram", one), Shuffle("bound", 10, "gram", one),
                  Shuffle("kind_counts", 10, "kind", one), Shuffle("window_grams", 100, "gram"),
                  Shuffle("window_shortlist", 10, "gram", one), Shuffle("window_counts", 10, "gram", one),
                  Shuffle("window_rows", 10, "gram", one)),
        apply=apply, apply_reads=("flags",), active=active, routed_schemas={"flags": FLAGS})
