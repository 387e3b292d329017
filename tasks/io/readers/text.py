"""Bytes of a web page to text: the charset the server declared, else the one the page declares in its first bytes
(`<meta charset>`, an XML declaration), else UTF-8, each only if the bytes decode in it; else charset_normalizer's
guess. The charset used is returned beside the text, so a wrong guess can be traced."""

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


def _whatwg(name: str | None) -> str | None:
    """Browsers read the labels ascii and latin-1 as windows-1252 (WHATWG Encoding); so does Sluice."""
    return "cp1252" if name in ("ascii", "iso8859-1", "latin-1") else name


def decoded(payload: bytes, server_charset: str | None) -> tuple[str, str]:
    """(text, charset): never raises. A declared charset the bytes do not decode in (a header that lies) is passed
    over for the next candidate; bytes no candidate decodes become U+FFFD in the best guess."""
    if payload.startswith(codecs.BOM_UTF8):
        return payload[3:].decode("utf-8", "replace"), "utf-8"
    candidates = [_whatwg(_known(server_charset)), _whatwg(declared_charset(payload)), "utf-8"]
    for charset in dict.fromkeys(c for c in candidates if c):
        try:
            return payload.decode(charset), charset
        except UnicodeDecodeError:
            continue
    from charset_normalizer import from_bytes

    best = from_bytes(payload[:1 << 16]).best()
    charset = _whatwg(_known(best.encoding) if best is not None else None) or "cp1252"
    return payload.decode(charset, "replace"), charset
