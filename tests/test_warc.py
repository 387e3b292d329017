"""WARC, WET, ARC and saved HTML pages in (tasks/io/readers/warc.py, html.py): every record a row, a quarantine row with
its byte offset, or a counted non-document record; reading goes on after damage; local files and S3 alike."""

from __future__ import annotations

import boto3
import polars as pl
from web import arc, response, warc

from schemas.config import IngestConfig
from tasks.io.readers import detect_format, read_batches, resolve_inputs
from tasks.stages.ingest import ingest

PAGE = "<html><head><title>Ünïcode</title></head><body><p>First page, in UTF-8.</p></body></html>".encode()
LATIN = "<html><body><p>café crème brûlée</p></body></html>".encode("cp1252")


def _read(uri: str, cfg: IngestConfig | None = None, s3: dict | None = None):
    cfg = cfg or IngestConfig()
    (file,) = resolve_inputs([uri], s3)
    fmt, comp = detect_format(file.uri, cfg.format)
    read = read_batches(file, fmt, comp, cfg, s3)
    kept, rejected = [], []
    for batch in read:
        result = ingest(batch, cfg)
        assert batch.height == result.kept.height + result.rejected.height
        kept.append(result.kept)
        rejected.append(result.rejected)
    return fmt, pl.concat(kept), pl.concat(rejected), read.audit


def _crawl(gzip: bool) -> tuple[bytes, list[int]]:
    return warc([
        {"kind": "request", "url": "http://a.example/1"},
        response("http://a.example/1", PAGE, date="2024-05-01T10:00:00Z"),
        response("http://a.example/latin", LATIN, content_type="text/html; charset=windows-1252"),
        {"kind": "garbage", "bytes": b"NOT A RECORD\n" * 4},
        response("http://a.example/logo.png", b"\x89PNG\r\n\x1a\n....", content_type="image/png"),
        response("http://a.example/gone", b"<html>gone</html>", status="404 Not Found"),
        response("http://a.example/plain", b"Plain text is a document too.", content_type="text/plain"),
        # the header says UTF-8, the bytes are windows-1252 and the page says so itself
        response("http://a.example/lies", b'<html><head><meta charset="windows-1252"></head><body>'
                 + "Gr\u00fc\u00dfe aus M\u00fcnchen".encode("cp1252") + b"</body></html>"),
    ], gzip=gzip)


def test_every_record_is_a_row_a_quarantine_row_with_its_offset_or_counted(tmp_path):
    for gzip in (True, False):
        data, offsets = _crawl(gzip)
        path = tmp_path / ("crawl.warc.gz" if gzip else "crawl.warc")
        path.write_bytes(data)
        fmt, kept, rejected, audit = _read(str(path))
        assert fmt == "warc"
        assert kept["url"].to_list() == ["http://a.example/1", "http://a.example/latin", "http://a.example/plain",
                                         "http://a.example/lies"]
        assert kept["text"].to_list()[:3] == [PAGE.decode(), "<html><body><p>café crème brûlée</p></body></html>",
                                              "Plain text is a document too."]
        assert "Grüße aus München" in kept["text"][3] and "\ufffd" not in kept["text"][3]
        assert str(kept["timestamp"][0]) == "2024-05-01 10:00:00+00:00"
        meta = kept["meta"].str.json_decode().to_list()
        assert [m["charset"] for m in meta] == ["utf-8", "cp1252", "utf-8", "cp1252"]
        assert [m["warc_offset"] for m in meta] == [offsets[1], offsets[2], offsets[6], offsets[7]]
        assert all(m["warc_record_id"].startswith("<urn:uuid:") for m in meta)
        reasons = dict(zip(rejected["reason"], rejected["evidence"].str.json_decode().struct.field("detail"),
                           strict=True))
        assert set(reasons) == {"ingest.warc.malformed", "ingest.warc.not_html", "ingest.warc.http_status"}
        # the damage is named at the byte it starts, and the file holds the garbage there
        assert reasons["ingest.warc.malformed"].startswith(f"byte {offsets[3]:,}: no WARC/ARC record here")
        assert data[offsets[3]:offsets[3] + 12] == b"NOT A RECORD"
        assert rejected.filter(pl.col("reason") == "ingest.warc.malformed")["raw"][0].startswith("NOT A RECORD")
        assert reasons["ingest.warc.not_html"] == (
            f"byte {offsets[4]:,}: " + reasons["ingest.warc.not_html"].split(": ", 1)[1])
        assert "content type 'image/png' is not HTML or text" in reasons["ingest.warc.not_html"]
        assert "HTTP status 404" in reasons["ingest.warc.http_status"]
        # 1 warcinfo + 1 request skipped; 4 rows; 3 quarantined (the garbage counts as one record)
        assert (audit.unit, audit.read, audit.covered, audit.skipped, audit.unaccounted) == ("records", 9, 7, 2, 0)


def test_a_record_cut_by_the_end_of_the_file_is_quarantined_as_truncated(tmp_path):
    data, _ = warc([response("http://a.example/1", PAGE),
                    response("http://a.example/cut", b"<html><body>" + b"words " * 200 + b"</body></html>")])
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(data[:-40])
    _, kept, rejected, audit = _read(str(path))
    assert kept["url"].to_list() == ["http://a.example/1"]
    assert rejected["reason"].to_list() == ["ingest.warc.truncated"]
    assert "bytes early" in rejected["evidence"][0]
    assert audit.unaccounted == 0


def test_oversize_payload_is_quarantined_not_cut(tmp_path):
    data, _ = warc([response("http://a.example/big", b"<html>" + b"x" * 5_000 + b"</html>")], gzip=False)
    path = tmp_path / "big.warc"
    path.write_bytes(data)
    _, kept, rejected, _ = _read(str(path), IngestConfig(max_record_bytes=1_000, evidence_chars=50))
    assert kept.height == 0 and rejected["reason"].to_list() == ["ingest.record.oversize"]
    assert rejected["raw"][0] == "<html>" + "x" * 44


def test_arc_files_are_read_as_warc(tmp_path):
    path = tmp_path / "old.arc"
    path.write_bytes(arc([("http://old.example/a", b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n"
                                                  b"<html><body><p>an ARC page</p></body></html>")]))
    fmt, kept, rejected, audit = _read(str(path))
    assert fmt == "warc" and rejected.height == 0
    assert kept.select("url", "text").row(0) == ("http://old.example/a",
                                                 "<html><body><p>an ARC page</p></body></html>")
    assert str(kept["timestamp"][0]) == "2001-02-03 04:05:06+00:00"
    assert (audit.read, audit.skipped, audit.unaccounted) == (2, 1, 0)


def test_saved_html_pages_one_row_each_with_their_declared_charset(tmp_path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "a.html").write_bytes(b'<html><head><meta charset="windows-1252"></head><body>'
                                                + "naïve".encode("cp1252") + b"</body></html>")
    (tmp_path / "pages" / "b.htm").write_bytes(b"")
    files = resolve_inputs([str(tmp_path / "pages")])
    assert [detect_format(f.uri)[0] for f in files] == ["html", "html"]
    _, kept, _, audit = _read(str(tmp_path / "pages" / "a.html"))
    assert "naïve" in kept["text"][0] and kept["meta"].str.json_decode()[0]["charset"] == "cp1252"
    assert (audit.unit, audit.read, audit.unaccounted) == ("files", 1, 0)
    _, kept, rejected, audit = _read(str(tmp_path / "pages" / "b.htm"))
    assert kept.height == 0 and rejected["reason"].to_list() == ["ingest.read.empty_file"]
    assert audit.unaccounted == 0


def test_warc_from_s3_streams_like_a_local_file(s3_env, tmp_path):
    data, offsets = _crawl(gzip=True)
    s3 = boto3.client("s3", endpoint_url=s3_env)
    s3.create_bucket(Bucket="crawl")
    s3.put_object(Bucket="crawl", Key="cc/crawl.warc.gz", Body=data)
    path = tmp_path / "crawl.warc.gz"
    path.write_bytes(data)
    _, kept, rejected, audit = _read("s3://crawl/cc/crawl.warc.gz")
    _, local_kept, local_rejected, _ = _read(str(path))
    assert kept.drop("id", "src_file", "source").equals(local_kept.drop("id", "src_file", "source"))
    assert rejected["reason"].to_list() == local_rejected["reason"].to_list()
    assert audit.unaccounted == 0
