"""Web archives for tests, written with warcio's own writer (WARC) or byte for byte (ARC, which warcio only reads)."""

from __future__ import annotations

import io

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter


def response(url: str, body: bytes, content_type: str = "text/html; charset=utf-8", status: str = "200 OK",
              date: str | None = None) -> dict:
    return {"kind": "response", "url": url, "body": body, "content_type": content_type, "status": status,
            "date": date}


def warc(records: list[dict], gzip: bool = True) -> tuple[bytes, list[int]]:
    """(file bytes, the byte offset each record starts at). A warcinfo record first, then `records`; a
    {"kind": "request"} entry writes a request record, {"kind": "garbage", "bytes": b"..."} writes raw bytes."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gzip)
    writer.write_record(writer.create_warcinfo_record("test.warc", {"software": "sluice tests"}))
    offsets = []
    for r in records:
        offsets.append(buf.tell())
        if r["kind"] == "garbage":
            buf.write(r["bytes"])
            continue
        if r["kind"] == "request":
            writer.write_record(writer.create_warc_record(r["url"], "request",
                                                          payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))
            continue
        headers = StatusAndHeaders(r["status"], [("Content-Type", r["content_type"])], protocol="HTTP/1.1")
        extra = {"WARC-Date": r["date"]} if r.get("date") else None
        writer.write_record(writer.create_warc_record(r["url"], "response", payload=io.BytesIO(r["body"]),
                                                      http_headers=headers, warc_headers_dict=extra))
    return buf.getvalue(), offsets


def arc(records: list[tuple[str, bytes]]) -> bytes:
    """An ARC v1 file: the filedesc header record, then one record per (url, HTTP response bytes)."""
    desc = b"1 0 Sluice\nURL IP-address Archive-date Content-type Archive-length\n"
    out = b"filedesc://test.arc 0.0.0.0 20260101000000 text/plain %d\n" % len(desc) + desc + b"\n"
    for url, body in records:
        out += b"%s 10.0.0.1 20010203040506 text/html %d\n" % (url.encode(), len(body)) + body + b"\n"
    return out
