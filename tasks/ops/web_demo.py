"""The web demo behind `sluice demo --web`: two small crawls (WARC.gz) of pages rendered from the same packaged text
as the main demo, wrapped in the boilerplate real pages carry, with the records a crawl really holds planted in them.

scripture.example: one page per KJV chapter (the first CHAPTERS), its verses as paragraphs; quotes.example: one page
per PER_PAGE anime quotes. Every page has a navigation bar, a cookie banner, an ad block, a sidebar of links and a
footer around its <article>. Planted: an image and a PDF (ingest.warc.not_html), a 404 and a redirect
(ingest.warc.http_status), bytes between two gzip members (ingest.warc.malformed), a record cut by the end of a file
(ingest.warc.truncated), tag-index pages with no content (extract.empty), pages on an ad network's domain
(extract.url.blocked_domain), and a page whose server header claims UTF-8 for windows-1252 bytes (decoded by the
page's own declaration). Deterministic: fixed record ids and dates, so the same bytes every time.
"""

from __future__ import annotations

import html
import io
import uuid
from pathlib import Path

CHAPTERS = 400
PER_PAGE = 20
CRAWLED = "2026-11-30T12:00:00Z"
VERSION = 1
FILES = ("scripture.example.warc.gz", "quotes.example.warc.gz")

NAV = ("<header><nav class='menu'><a href='/'>Home</a> | <a href='/browse'>Browse</a> | <a href='/search'>Search</a> "
       "| <a href='/about'>About us</a> | <a href='/login'>Sign in</a></nav></header>")
COOKIES = ("<div class='cookie-banner' role='dialog'>We use cookies to improve your experience and for analytics. "
           "<button>Accept all</button> <button>Manage preferences</button></div>")
AD = ("<aside class='ad'><a href='https://ads.example/click?id=42'>Sponsored: Learn a new language in 30 days! "
      "Try it free</a></aside>")
FOOTER = ("<footer><p>Copyright 2026. All rights reserved.</p><p><a href='/privacy'>Privacy policy</a> | "
          "<a href='/terms'>Terms of use</a> | <a href='/contact'>Contact</a></p></footer>")


def _sidebar(links: list[str]) -> str:
    return "<aside class='sidebar'><h3>Related</h3><ul>" + "".join(
        f"<li><a href='/{i}'>{html.escape(t)}</a></li>" for i, t in enumerate(links)) + "</ul></aside>"


def _page(title: str, paragraphs: list[str], links: list[str], charset: str = "utf-8") -> str:
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='{charset}'><title>{html.escape(title)}</title>"
            f"<script>window.analytics = {{track: function () {{}}}};</script></head><body>{NAV}{COOKIES}"
            f"<main><article><h1>{html.escape(title)}</h1>{body}</article></main>{_sidebar(links)}{AD}{FOOTER}"
            "</body></html>")


def _empty_page(title: str, links: list[str]) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><title>{html.escape(title)}</title></head><body>{NAV}{COOKIES}"
            f"{_sidebar(links)}{AD}{FOOTER}</body></html>")


class _Crawl:
    def __init__(self, host: str):
        from warcio.warcwriter import WARCWriter

        self.host, self.buf = host, io.BytesIO()
        self.writer = WARCWriter(self.buf, gzip=True)
        info = self.writer.create_warcinfo_record(f"{host}.warc.gz", {
            "software": "sluice web demo", "description": "pages rendered from packaged text"})
        info.rec_headers.replace_header("WARC-Record-ID", f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_DNS, host)}>")
        info.rec_headers.replace_header("WARC-Date", CRAWLED)
        self.writer.write_record(info)

    def add(self, path: str, body: bytes, content_type: str = "text/html; charset=utf-8", status: str = "200 OK",
            extra: list[tuple[str, str]] | None = None, host: str | None = None) -> None:
        from warcio.statusandheaders import StatusAndHeaders

        url = f"https://{host or self.host}{path}"
        headers = StatusAndHeaders(status, [("Content-Type", content_type), *(extra or [])], protocol="HTTP/1.1")
        warc_headers = {"WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>", "WARC-Date": CRAWLED}
        self.writer.write_record(self.writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                                http_headers=headers, warc_headers_dict=warc_headers))

    def garbage(self, data: bytes) -> None:
        self.buf.write(data)


def _scripture() -> bytes:
    from tasks.ops.demo_corpus import kjv_records

    chapters: dict[tuple[str, int], list[str]] = {}
    for r in kjv_records():
        key = (r["book"], r["chapter"])
        if key not in chapters and len(chapters) == CHAPTERS:
            break
        chapters.setdefault(key, []).append(r["text"])
    crawl = _Crawl("scripture.example")
    titles = [f"{b} {c}" for b, c in chapters]
    for i, ((book, chapter), verses) in enumerate(chapters.items()):
        crawl.add(f"/{book.lower().replace(' ', '-')}/{chapter}", _page(
            f"{book} {chapter}", verses, titles[i + 1:i + 6]).encode())
        if i == 10:
            crawl.add("/images/map.png", b"\x89PNG\r\n\x1a\n" + bytes(200), content_type="image/png")
            crawl.add("/old-index", b"", status="301 Moved Permanently", extra=[("Location", "/")])
        if i == 20:
            crawl.garbage(b"HTTP/1.1 502 Bad Gateway\r\n\r\n<html>proxy error</html>\r\n")
        if i % 100 == 50:
            crawl.add(f"/tags/{i}", _empty_page(f"Tag index {i}", titles[:5]).encode())
            crawl.add(f"/sponsored/{i}", _page("Sponsored", ["Buy now. " * 30], titles[:5]).encode(),
                      host="ads.example")
    crawl.add("/missing", b"<html><body>Not found</body></html>", status="404 Not Found")
    data = crawl.buf.getvalue()
    last = len(data)
    crawl.add("/revelation/draft", _page("Draft", ["A page the crawler was still writing."], []).encode())
    return crawl.buf.getvalue()[: last + (len(crawl.buf.getvalue()) - last) // 2]  # cut inside the last record


def _quotes() -> bytes:
    from tasks.ops.demo_corpus import quote_records

    quotes = quote_records()
    crawl = _Crawl("quotes.example")
    pages = [quotes[i:i + PER_PAGE] for i in range(0, len(quotes), PER_PAGE)]
    for n, page in enumerate(pages):
        lines = [f"\"{q['text']}\" said {q['character']} in {q['show']}." for q in page]
        title = f"Anime quotes, page {n + 1}"
        if n == 7:  # the server says UTF-8; the bytes are windows-1252, and the page says so itself
            body = _page(title, [s.encode("cp1252", "replace").decode("cp1252") for s in lines], [],
                         charset="windows-1252").encode("cp1252", "replace")
            crawl.add(f"/page/{n + 1}", body)
            continue
        crawl.add(f"/page/{n + 1}", _page(title, lines, [f"Anime quotes, page {k}" for k in range(n + 2, n + 5)])
                  .encode())
        if n == 3:
            crawl.add("/wallpaper.pdf", b"%PDF-1.4 " + bytes(100), content_type="application/pdf")
    return crawl.buf.getvalue()


def is_current(folder: Path) -> bool:
    marker = folder / ".version"
    return marker.is_file() and marker.read_text().strip() == str(VERSION) and all(
        (folder / f).is_file() for f in FILES)


def build(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, data in zip(FILES, (_scripture(), _quotes()), strict=True):
        (folder / name).write_bytes(data)
        sizes[name] = len(data)
    (folder / ".version").write_text(f"{VERSION}\n")
    return {"dir": str(folder), "files": sizes}
