"""Extract: a web page becomes its main text (map, CPU).

Rows whose text is HTML (from the WARC/ARC/HTML readers, or any input) are first checked against the URL filter
(urls.py), then run through the extractor (html.py: resiliparse or trafilatura, ftfy where it finds mojibake). A page
with no main text left is quarantined as `extract.empty` with the page as it arrived; a refused URL as
`extract.url.blocked_domain` / `blocked_substring`, naming the rule. Every kept page records the rewrite in the
edit ledger (rule `extract.main_text`: the markup's characters removed), so the text that arrived stays findable
(`sluice edits`, `publish.keep_original_text`). Text that is not HTML (a WET conversion, plain text) passes unchanged.
Adds the page's title and declared language.
"""

from __future__ import annotations

import orjson
import polars as pl

from schemas.config import ExtractConfig
from schemas.record import CANONICAL
from tasks.runtime import edits
from tasks.runtime.externals import ExternalInputs, Externals
from tasks.runtime.stage import ROW, Stage, StageResult
from tasks.runtime.stats import Stats
from tasks.stages.extract import urls
from tasks.stages.extract.html import main_text

RULE = "extract.main_text"
ADDS = {"extract_title": pl.String(), "extract_lang": pl.String()}
TAG = r"<[a-zA-Z!/?]"


def load_blocklist(params: ExtractConfig, inputs: ExternalInputs | None = None) -> pl.DataFrame:
    return urls.blocked_domains(params.url_filter, inputs)


def externals(params: ExtractConfig) -> Externals:
    """The blocklist files the setup reads (checked to exist before a run: urls.check_files)."""
    return Externals(files=tuple(params.url_filter.blocklist_files))


def _url_rejections(batch: pl.DataFrame, refused: pl.DataFrame) -> pl.DataFrame:
    rows = batch.join(refused, on=ROW)
    return rows.with_columns(evidence=pl.struct(url=pl.col("url"), rule=pl.col("rule"), list=pl.col("list"))
                             .struct.json_encode()).drop("rule", "list")


def extract(batch: pl.DataFrame, params: ExtractConfig, blocked: pl.DataFrame) -> StageResult:
    stats = Stats()
    batch = batch.with_row_index(ROW)
    refused = urls.refused(batch, ROW, blocked, params.url_filter.substrings)
    rejected = [_url_rejections(batch, refused)]
    rest = batch.join(refused.select(ROW), on=ROW, how="anti")
    is_html = pl.col("text").str.slice(0, 1000).str.contains(TAG)
    pages, plain = rest.filter(is_html), rest.filter(~is_html)
    got = [main_text(h, params.extractor, params.repair) for h in pages["text"].to_list()]
    pages = pages.with_columns(
        _html=pl.col("text"), text=pl.Series([g.text for g in got], dtype=pl.String),
        extract_title=pl.Series([g.title for g in got], dtype=pl.String),
        extract_lang=pl.Series([g.language for g in got], dtype=pl.String))
    empty = pl.col("text").str.len_chars() < params.min_chars
    gone = pages.filter(empty)
    if gone.height:
        evidence = [orjson.dumps({"html_chars": len(h), "text_chars": len(t), "min_chars": params.min_chars,
                                  "title": title, "url": url, "extractor": params.extractor}).decode()
                    for h, t, title, url in gone.select("_html", "text", "extract_title", "url").iter_rows()]
        rejected.append(gone.with_columns(text=pl.col("_html"), reason=pl.lit("extract.empty"),
                                          evidence=pl.Series(evidence, dtype=pl.String)))
    pages = pages.filter(~empty)
    ledger = edits.record(pages, RULE, "_html", "text", pl.col("_html").str.count_matches(TAG), "tag")
    kept = pl.concat([pages.drop("_html"), plain.with_columns(extract_title=pl.lit(None, pl.String),
                                                              extract_lang=pl.lit(None, pl.String))],
                     how="vertical_relaxed").sort(ROW).drop(ROW)
    stats.counts.update({"extract.pages": pages.height + gone.height, "extract.plain": plain.height,
                         "extract.repaired": sum(g.repaired for g in got),
                         "extract.url_refused": refused.height})
    out = pl.concat([r.drop("_html", strict=False) for r in rejected], how="diagonal_relaxed")
    out = out.sort(ROW).drop(ROW) if out.height else out.drop(ROW, strict=False)
    return StageResult(kept=kept, rejected=out, stats=stats, edits=ledger)


def check_params(params: ExtractConfig) -> list[str]:
    return urls.check_files(params.url_filter)


STAGE = Stage(
    name="extract",
    fn=extract,
    params=lambda cfg: cfg.extract,
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"], "url": CANONICAL["url"]},
    adds=ADDS,
    suite="extract",
    setup=load_blocklist,
    externals=externals,
    needs=("resiliparse", "ftfy"),
    check=check_params,
    description="main text from HTML (resiliparse or trafilatura), ftfy repair, URL filter",
)
