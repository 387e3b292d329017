"""Bounded decompression: a file's bytes as decoded blocks of at most DECODE_BYTES, whatever the input.

Memory is bounded by config: zlib, bz2 and lzma decode with `max_length`, zstd through a stream reader, and a file
that decompresses past `max_file_bytes` or beyond `max_compression_ratio` is cut there (`TooLarge`). A stream that
ends early yields every byte before the damage, then raises. The lines of every decoded byte are counted here, by
the one piece of code every text reader shares, so the audit (tasks/io/readers/audit.py) can compare them with
what the rows cover.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import zstandard

from tasks.io import interrupt
from tasks.io.readers.audit import Audit

DECODE_BYTES = 1 << 20  # decompressed bytes handled at a time
READ_BYTES = 1 << 16  # compressed bytes fed to a decompressor at a time (bounds what a damaged block can cost)
RATIO_AFTER_BYTES = 64 << 20  # the compression ratio is judged once this much has been decompressed


class TooLarge(Exception):
    """The file decompressed past `max_file_bytes` or its compression ratio is a bomb's."""


class Budget:
    """Counts what a file decompresses to and stops it at the configured size and ratio."""

    def __init__(self, max_file_bytes: int, max_ratio: float):
        self.max_file_bytes, self.max_ratio = max_file_bytes, max_ratio
        self.read = self.decoded = 0

    def take(self, out: bytes, consumed: int = 0) -> bytes:
        self.read += consumed
        self.decoded += len(out)
        if self.decoded > self.max_file_bytes:
            raise TooLarge(f"decompressed past max_file_bytes={self.max_file_bytes:,}")
        if self.decoded > RATIO_AFTER_BYTES and self.read and self.decoded / self.read > self.max_ratio:
            raise TooLarge(f"{self.read:,} compressed bytes decompressed to {self.decoded:,} (ratio "
                           f"{self.decoded / self.read:,.0f} > max_compression_ratio={self.max_ratio:g}): a "
                           "decompression bomb")
        return out


def _zlib_salvage(dec, data: bytes) -> Iterator[bytes]:
    """Feed a damaged chunk one byte at a time to a copy of the decompressor from before it: every byte that
    decodes before the damage comes out, then the error is raised again."""
    for i in range(len(data)):
        out = dec.decompress(data[i:i + 1], DECODE_BYTES)
        if out:
            yield out
        while dec.unconsumed_tail:
            yield dec.decompress(dec.unconsumed_tail, DECODE_BYTES)


def _gzip_blocks(fh, budget: Budget) -> Iterator[bytes]:
    """gzip/zlib, concatenated members included, never more than DECODE_BYTES of output at a time."""
    dec, in_member = zlib.decompressobj(wbits=47), False  # gzip or zlib header, auto-detected
    while chunk := fh.read(READ_BYTES):
        budget.read += len(chunk)
        data, pending = chunk, False
        while data or pending:
            in_member = True
            before = dec.copy()
            try:
                out = dec.decompress(data, DECODE_BYTES)
            except zlib.error:
                for piece in _zlib_salvage(before, data):
                    yield budget.take(piece)
                raise
            yield budget.take(out)
            pending = len(out) == DECODE_BYTES  # more output may wait inside with no input left
            data = dec.unconsumed_tail
            if dec.eof:
                data, pending = dec.unused_data, False  # the next gzip member, if any
                dec, in_member = zlib.decompressobj(wbits=47), False
                if not data.strip(b"\x00"):  # zero padding after the last member
                    data = b""
    if in_member:
        raise EOFError("gzip stream ended before its end marker")


def _bz2_xz_blocks(fh, compression: str, budget: Budget) -> Iterator[bytes]:
    def new():
        return bz2.BZ2Decompressor() if compression == "bz2" else lzma.LZMADecompressor()

    dec, in_stream = new(), False
    while chunk := fh.read(READ_BYTES):
        data, consumed = chunk, len(chunk)
        while True:
            in_stream = True
            out = dec.decompress(data, DECODE_BYTES)
            yield budget.take(out, consumed)
            data, consumed = b"", 0
            if dec.eof:
                rest = dec.unused_data
                dec, in_stream = new(), False
                if not rest:
                    break
                data = rest
            elif dec.needs_input:
                break
    if in_stream:
        raise EOFError(f"{compression} stream ended before its end marker")


def _zstd_blocks(fh, budget: Budget) -> Iterator[bytes]:
    class Counting:  # what the zstd reader consumed, for the ratio
        def read(self, n: int) -> bytes:
            data = fh.read(n)
            budget.read += len(data)
            return data

    reader = zstandard.ZstdDecompressor().stream_reader(Counting(), read_size=READ_BYTES, read_across_frames=True)
    while out := reader.read(DECODE_BYTES):
        yield budget.take(out)


def decoded_blocks(fh, compression: str | None, budget: Budget, audit: Audit) -> Iterator[bytes]:
    """Decompressed blocks of at most DECODE_BYTES; a stream that ends early yields everything before the cut and
    then raises EOFError. The stop flag is checked between blocks. Every block's lines are counted into `audit`
    (also when the stream breaks: a last line without its newline counts as read)."""
    if compression is None:
        gen = iter(lambda: budget.take(fh.read(DECODE_BYTES), 0), b"")
    elif compression == "gzip":
        gen = _gzip_blocks(fh, budget)
    elif compression == "zstd":
        gen = _zstd_blocks(fh, budget)
    else:
        gen = _bz2_xz_blocks(fh, compression, budget)
    last = b"\n"
    try:
        for block in gen:
            interrupt.check()
            if block:
                audit.read += block.count(b"\n")
                last = block[-1:]
                yield block
    finally:
        if last != b"\n":
            audit.read += 1


def read_error(exc: Exception) -> tuple[str, str]:
    """(reason code, detail) of a stream that could not be read to its end."""
    if isinstance(exc, TooLarge):
        return "ingest.read.too_large", str(exc)
    if isinstance(exc, EOFError):
        return "ingest.read.truncated", f"compressed stream ended early: {exc}"
    return "ingest.read.unreadable", f"{type(exc).__name__}: {exc}"


def parsed(open_stream: Callable[[], Any], compression: str | None, budget: Budget, audit: Audit, parser
           ) -> Iterator:
    """Every decoded block of the stream `open_stream()` opens, fed to `parser` (`feed(block)`, then
    `finish(error)`), its frames yielded. A stream that cannot be read to its end (damaged compression, a bomb, a
    network failure after retries) ends in the parser's evidence of it, not in an exception; an interrupt stops."""
    error = None
    try:
        with open_stream() as fh:
            for block in decoded_blocks(fh, compression, budget, audit):
                yield from parser.feed(block)
    except interrupt.Interrupted:
        raise
    except Exception as exc:
        error = read_error(exc)
    yield from parser.finish(error)
