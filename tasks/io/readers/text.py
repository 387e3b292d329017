"""Bytes of a web page to text: the charset the server declared, else the one the page declares in its first bytes
(`<meta charset>`, an XML declaration), else UTF-8 when the bytes are valid UTF-8, else charset_normalizer's guess;
the charset used is returned beside the text, so a wrong guess can be traced."""

from __future__ import annotations

import codecs
import re

_DECLARED = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)|<\?xml[^>]+encoding\s*=\s*["']([\w.:-]+)""",
                       re.I)
SNIFF_BYTES = 4096


def _known(name: str | None) -> str | None:
    try:
        return codecs.lookup(name).name if name else None
    except LookupError:
        return None


def declared_charset(payload: bytes) -> str | None:
    match = _DECLARED.search(payload[:SNIFF_BYTES])
    return _known((match.group(1) or match.group(2)).decode("ascii", "replace")) if match else None


def decoded(payload: bytes, server_charset: str | None) -> tuple[str, str]:
    """(text, charset): never raises; bytes a charset cannot decode become U+FFFD."""
    if payload.startswith(codecs.BOM_UTF8):
        return payload[3:].decode("utf-8", "replace"), "utf-8"
    charset = _known(server_charset) or declared_charset(payload)
    if charset is None:
        try:
            return payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            from charset_normalizer import from_bytes

            best = from_bytes(payload[:1 << 16]).best()
            charset = _known(best.encoding) if best is not None else None
            charset = charset or "cp1252"
    if charset in ("ascii", "iso8859-1", "latin-1"):  # browsers read these labels as windows-1252 (WHATWG)
        charset = "cp1252"
    return payload.decode(charset, "replace"), charset
