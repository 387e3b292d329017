"""The extract stage alone: HTML to main text with the edit recorded, empty pages and refused URLs quarantined with
evidence, plain text untouched; and through a real run from a WARC to published rows."""

from __future__ import annotations

import json

import polars as pl
import pytest
from judge import judge, records
from judge import run as run_stage
from web import response, warc

from schemas.config import ExtractConfig, SluiceConfig, UrlFilterConfig
from tasks.runtime.registry import preflight
from tasks.stages.extract.html import main_text

BOILERPLATE_ONLY = ("<!DOCTYPE html><html><head><title>Shop</title></head><body><nav><a href='/'>Home</a> | "
                    "<a href='/about'>About us</a></nav><footer>Copyright 2024. All rights reserved.</footer></body>"
                    "</html>")
ARTICLE = ("<p>" + "The river carried the boats past the old mill every spring. " * 8 + "</p>")


def page(body: str, title: str = "A page", lang: str = "en") -> str:
    return (f"<!DOCTYPE html><html lang='{lang}'><head><title>{title}</title></head><body>"
            "<nav><a href='/'>Home</a> | <a href='/about'>About us</a> | <a href='/shop'>Shop</a></nav>"
            f"<main><article><h1>{title}</h1>{body}</article></main>"
            "<footer>Copyright 2024. All rights reserved. Privacy policy. Cookie settings.</footer></body></html>")


def _with_urls(frame: pl.DataFrame, urls: list[str | None]) -> pl.DataFrame:
    return frame.with_columns(url=pl.Series(urls, dtype=pl.String))


def test_judge_extract_alone():
    assert judge("extract", page(ARTICLE), "plain text stays as it is", "<html><body><script>x()</script></body>"
                 "</html>") == [None, None, "extract.empty"]


def test_main_text_title_language_and_the_ledger():
    batch = records(page(ARTICLE, "Mill &amp; River", "en_GB"), "plain text stays as it is")
    result = run_stage("extract", batch)
    first, plain = result.kept.row(0, named=True), result.kept.row(1, named=True)
    assert "The river carried the boats" in first["text"] and "<" not in first["text"]
    assert "Home" not in first["text"] and "Copyright" not in first["text"]  # boilerplate left out
    assert (first["extract_title"], first["extract_lang"]) == ("Mill & River", "en-gb")
    assert plain["text"] == "plain text stays as it is" and plain["extract_title"] is None
    (edit,) = result.edits.iter_rows(named=True)
    html = batch["text"][0]
    assert (edit["id"], edit["rule"], edit["chars_before"]) == ("d0", "extract.main_text", len(html))
    assert edit["chars_removed"] == len(html) - len(first["text"]) and edit["unit"] == "tag"
    assert result.stats.counts["extract.pages"] == 1 and result.stats.counts["extract.plain"] == 1


def test_refused_urls_and_empty_pages_are_quarantined_with_evidence(tmp_path):
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text("# a hosts file and a domain list\n0.0.0.0 tracker.example\nspam.example\n")
    cfg = SluiceConfig(extract=ExtractConfig(url_filter=UrlFilterConfig(
        domains=["*.Ads.Example"], blocklist_files=[str(blocklist)], substrings=["/Casino/"])))
    batch = _with_urls(records(*[page(ARTICLE)] * 6 + ["<html><body><img src=x></body></html>"]),
                       ["https://www.ads.example/a", "http://spam.example:8080/x", "http://user@tracker.example/",
                        "https://fine.example/casino/win", "https://notspam.example/ok", None,
                        "https://fine.example/blank"])
    result = run_stage("extract", batch, cfg.extract)
    got = {r["id"]: (r["reason"], json.loads(r["evidence"])) for r in result.rejected.iter_rows(named=True)}
    assert got["d0"] == ("extract.url.blocked_domain", {"url": "https://www.ads.example/a", "rule": "ads.example",
                                                        "list": "extract.url_filter.domains"})
    assert got["d1"][1]["rule"] == "spam.example" and got["d1"][1]["list"] == "blocked.txt"
    assert got["d2"][1]["rule"] == "tracker.example"
    assert got["d3"] == ("extract.url.blocked_substring", {"url": "https://fine.example/casino/win",
                                                           "rule": "/casino/", "list": "extract.url_filter.substrings"})
    assert got["d6"][0] == "extract.empty" and got["d6"][1]["text_chars"] == 0
    # the page as it arrived is what quarantine keeps
    assert result.rejected.filter(pl.col("id") == "d6")["text"][0].startswith("<html>")
    assert result.kept["id"].to_list() == ["d4", "d5"]  # notspam.example is not a subdomain of spam.example


def test_a_missing_blocklist_file_fails_before_the_run(tmp_path):
    cfg = SluiceConfig(stages=["ingest", "extract"], extract=ExtractConfig(
        url_filter=UrlFilterConfig(blocklist_files=[str(tmp_path / "nope.txt")])))
    with pytest.raises(ValueError, match="nope.txt is not a readable file"):
        preflight(cfg, None)


def test_trafilatura_and_ftfy_on_request():
    broken = page("<p>" + "The cafÃ© serves crÃ¨me brÃ»lÃ©e every day of the week. " * 6 + "</p>")
    got = main_text(broken, "trafilatura")
    assert "café serves crème brûlée" in got.text and got.repaired
    assert "crÃ¨me" in main_text(broken, "resiliparse", repair=False).text


def test_warc_to_published_rows(prefect_server, tmp_path):
    from flows.curate import run_curate

    data, _ = warc([response(f"https://site{i}.example/p", page(f"<p>Page {i} says: " + ARTICLE[3:]).encode())
                    for i in range(3)] + [response("https://shop.example/", BOILERPLATE_ONLY.encode())])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "crawl.warc.gz").write_bytes(data)
    config = tmp_path / "web.toml"
    config.write_text('stages = ["ingest", "extract", "publish"]\n[publish]\ndataset = "web"\n')
    run = run_curate([str(tmp_path / "in")], str(tmp_path / "out"), str(config), run_id="web")
    assert run["status"] == "succeeded"
    rows = pl.read_parquet(tmp_path / "out" / "datasets" / "web" / "v1" / "data")
    assert sorted(rows["url"].to_list()) == [f"https://site{i}.example/p" for i in range(3)]
    assert all(t.startswith("A page\n\nPage ") for t in rows.sort("url")["text"].to_list())
    manifest = json.loads((tmp_path / "out" / "runs" / "web" / "extract" / "_manifest.json").read_text())
    assert manifest["rejected_by_reason"] == {"extract.empty": 1}
    assert manifest["stats"]["counts"]["edits.extract.main_text.rows"] == 3
    assert not manifest["warnings"]  # markup removal is a conversion, not a share of content cut


def test_web_demo_from_warc_records_to_token_shards(prefect_server, tmp_path):
    """`sluice demo --web`'s corpus and config: every planted record ends where it should, no boilerplate reaches
    the published text, and the token shards count both crawls."""
    from conftest import REPO

    from flows.curate import run_curate
    from tasks.ops import web_demo

    info = web_demo.build(tmp_path / "corpus")
    assert web_demo.is_current(tmp_path / "corpus") and set(info["files"]) == set(web_demo.FILES)
    assert web_demo.build(tmp_path / "again")["files"] == info["files"]  # deterministic
    for name in web_demo.FILES:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "corpus" / name).read_bytes()
    run = run_curate([str(tmp_path / "corpus")], str(tmp_path / "out"), str(REPO / "infra" / "demo-web.toml"),
                     run_id="web-demo")
    assert run["status"] == "succeeded"
    stage = {s: json.loads((tmp_path / "out" / "runs" / "web-demo" / s / "_manifest.json").read_text())
             for s in ("ingest", "extract")}
    assert stage["ingest"]["rejected_by_reason"] == {"ingest.warc.not_html": 2, "ingest.warc.http_status": 2,
                                                     "ingest.warc.malformed": 1, "ingest.warc.truncated": 1}
    assert stage["ingest"]["stats"]["counts"]["input.unaccounted"] == 0
    assert stage["extract"]["rejected_by_reason"] == {"extract.empty": 4, "extract.url.blocked_domain": 4}
    rows = pl.read_parquet(tmp_path / "out" / "datasets" / "demo-web" / "v1" / "data")
    text = "\n".join(rows["text"].to_list())
    for boilerplate in ("cookies", "Sponsored", "Privacy policy", "Sign in", "analytics"):
        assert boilerplate not in text
    assert "In the beginning God created the heaven and the earth." in text
    assert "\ufffd" not in text and "Ã" not in text  # the page whose header lies about its charset
    assert sorted(rows["source"].unique().to_list()) == sorted(web_demo.FILES)
    published = json.loads((tmp_path / "out" / "runs" / "web-demo" / "publish" / "_manifest.json").read_text())
    by_source = published["published"]["tokens"]["tokens_by_source"]
    assert set(by_source) == set(web_demo.FILES) and all(n > 100_000 for n in by_source.values())
