"""Token shards beside a published version (publish.tokens): round trip, boundaries, packing, shuffling, append,
forget, the manifest, the card and `sluice files --tokens`."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest
from handmade import canonical, publish_by_hand

from flows.cli import main
from schemas.config import SluiceConfig
from tasks.io import layout
from tasks.io.manifests import StageManifest
from tasks.io.storage import Storage
from tasks.ops import announce
from tasks.ops.forget import Selector, forget
from tasks.runtime.context import RunContext
from tasks.runtime.contracts import close_contracts
from tasks.text import token_shards

TEXTS = ["In the beginning God created the heaven and the earth.", "Ünïcödé, 日本語 and emoji 🙂 stay exact.",
         "Lines\n\nand  double  spaces\tand tabs.", "x", "The quick brown fox jumps over the lazy dog. " * 20]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> tuple[str, str]:
    """A small byte-level BPE tokenizer.json trained here (any local tokenizer.json works the same way)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 5, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def _ctx(tmp_path, tokenizer_file, run_id: str, mode: str = "replace", **tokens) -> RunContext:
    path, sha = tokenizer_file
    config = SluiceConfig(publish={"dataset": "tok", "mode": mode,
                                   "tokens": {"enabled": True, "tokenizer": path, "sha256": sha, **tokens}})
    return RunContext(Storage(str(tmp_path / "out")), run_id, config)


def _source(ctx: RunContext, parts: list[pl.DataFrame]) -> StageManifest:
    """`parts` committed as the dedup stage's output of ctx's run (one output object each)."""
    outputs = [ctx.storage.write_parquet(layout.kept_part(ctx.run_id, "dedup", f"{i:05d}-00000"), frame)
               for i, frame in enumerate(parts)]
    manifest = StageManifest(format=2, stage="dedup", run_id=ctx.run_id, fingerprint="x",
                             rows_in=sum(p.height for p in parts), rows_out=sum(p.height for p in parts),
                             rows_rejected=0, outputs=outputs, contract={"success": True})
    ctx.storage.write_record(layout.stage_manifest(ctx.run_id, "dedup"), manifest)
    ctx.storage.write_json(layout.run_json(ctx.run_id), {"run_id": ctx.run_id, "stages": ["dedup", "publish"]})
    return manifest


def _rows(prefix: str, texts: list[str], source: str) -> pl.DataFrame:
    return canonical(len(texts), prefix, source).with_columns(text=pl.Series(texts))


def _shard(ctx: RunContext, version: int, index: int) -> tuple[np.ndarray, np.ndarray, pl.DataFrame]:
    base = layout.token_part("tok", version, index)
    tokens = np.frombuffer(ctx.storage.read_bytes(base + ".bin"), dtype=np.uint16)
    offsets = np.frombuffer(ctx.storage.read_bytes(base + ".idx"), dtype=np.uint64)
    return tokens, offsets, ctx.storage.read_parquet(base + ".docs.parquet")


def test_token_shards_decode_back_to_the_published_text(tmp_path, tokenizer_file):
    ctx = _ctx(tmp_path, tokenizer_file, "tok-1")
    parts = [_rows("a", TEXTS[:3], "bible"), _rows("b", TEXTS[3:], "web")]
    version = publish_by_hand(ctx, _source(ctx, parts))
    tok = token_shards.load_tokenizer(*tokenizer_file)
    eos = tok.token_to_id("<|endoftext|>")
    total = 0
    for i, part in enumerate(parts):
        tokens, offsets, docs = _shard(ctx, 1, i)
        assert offsets[0] == 0 and offsets[-1] == tokens.size and len(offsets) == part.height + 1
        assert (tokens[offsets[1:].astype(np.int64) - 1] == eos).all()  # an EOS closes every document
        assert (tokens == eos).sum() == part.height  # and nowhere else: the texts hold no special token
        assert token_shards.decode(tokens, offsets, tok, eos) == part["text"].to_list()
        assert docs["id"].to_list() == part["id"].to_list() and docs["tokens"].to_list() == np.diff(offsets).tolist()
        total += tokens.size
    tokens = version.published["tokens"]
    assert tokens["tokens"] == total and tokens["rows"] == 5 and len(tokens["parts"]) == 2
    assert tokens["tokenizer"]["sha256"] == tokenizer_file[1] and tokens["tokenizer"]["dtype"] == "uint16"
    assert tokens["tokenizer"]["engine"] == "tiktoken"  # a byte-level BPE: the ids above came from tiktoken
    assert sum(tokens["tokens_by_source"].values()) == total and set(tokens["tokens_by_source"]) == {"bible", "web"}
    bin0 = tokens["parts"][0]["bin"]
    assert bin0["sha256"] == hashlib.sha256(ctx.storage.read_bytes(bin0["path"])).hexdigest()
    card = ctx.storage.read_bytes(layout.version_card("tok", 1)).decode()
    assert f"{total:,} tokens of every row" in card and "| `web` |" in card
    close_contracts("tok-1")


def test_packed_and_shuffled_shards_keep_every_document_whole(tmp_path, tokenizer_file):
    ctx = _ctx(tmp_path, tokenizer_file, "tok-2", seq_len=16, shuffle_seed=7)
    part = _rows("a", TEXTS * 4, "bible").with_columns(id=pl.format("a{}", pl.int_range(pl.len())))
    publish_by_hand(ctx, _source(ctx, [part]))
    tok = token_shards.load_tokenizer(*tokenizer_file)
    eos = tok.token_to_id("<|endoftext|>")
    tokens, offsets, docs = _shard(ctx, 1, 0)
    assert tokens.size % 16 == 0 and tokens.size - int(offsets[-1]) < 16  # padded to the sequence length only
    assert (tokens[int(offsets[-1]):] == eos).all()
    assert docs["id"].to_list() != part["id"].to_list() and sorted(docs["id"]) == sorted(part["id"])  # shuffled
    by_id = dict(zip(part["id"], part["text"], strict=True))
    assert token_shards.decode(tokens, offsets, tok, eos) == [by_id[i] for i in docs["id"]]
    again = token_shards.order_of(part.height, 7, 0)
    assert docs["id"].to_list() == part["id"].gather(again).to_list()  # the same order when a part is redone
    close_contracts("tok-2")


def test_an_append_tokenizes_only_its_rows_and_lists_the_earlier_shards(tmp_path, tokenizer_file, capsys):
    first = _ctx(tmp_path, tokenizer_file, "tok-3a")
    publish_by_hand(first, _source(first, [_rows("a", TEXTS[:3], "bible")]))
    second = _ctx(tmp_path, tokenizer_file, "tok-3b", mode="append")
    v2 = publish_by_hand(second, _source(second, [_rows("b", TEXTS[3:], "web")]))
    tokens = v2.published["tokens"]
    assert [p["bin"]["path"] for p in tokens["parts"]] == [layout.token_part("tok", 1, 0) + ".bin",
                                                           layout.token_part("tok", 2, 0) + ".bin"]
    _, _, docs = _shard(second, 2, 0)
    assert docs["id"].to_list() == ["b0", "b1"] and tokens["rows"] == 5
    assert not second.storage.exists(layout.token_part("tok", 2, 1) + ".bin")
    assert main(["files", "tok", "--tokens", "--output", str(tmp_path / "out")]) == 0
    listed = capsys.readouterr().out.split()
    assert [u.rsplit("/", 4)[-4:] for u in listed] == [["tok", "v1", "tokens", "part-00000.bin"],
                                                       ["tok", "v2", "tokens", "part-00000.bin"]]
    close_contracts("tok-3a")
    close_contracts("tok-3b")


def test_forget_remakes_the_shard_of_a_part_it_cuts(tmp_path, tokenizer_file, monkeypatch):
    ctx = _ctx(tmp_path, tokenizer_file, "tok-4")
    parts = [_rows("a", TEXTS[:3], "bible"), _rows("b", TEXTS[3:], "web")]
    publish_by_hand(ctx, _source(ctx, parts))
    events = []
    monkeypatch.setattr(announce, "emit_published", lambda published, *args: events.append(args) or {"sent": 1})
    summary = forget(ctx.storage, ctx.config, "tok", Selector(where="id = 'a1'"), "a takedown", by="test",
                     max_fraction=0.5)
    assert summary["rows_forgotten"] == 1
    v2 = ctx.storage.read_record(StageManifest, layout.version_manifest("tok", 2))
    tokens = v2.published["tokens"]
    tok = token_shards.load_tokenizer(*tokenizer_file)
    eos = tok.token_to_id("<|endoftext|>")
    decoded = []
    for part in tokens["parts"]:
        data = np.frombuffer(ctx.storage.read_bytes(part["bin"]["path"]), dtype=np.uint16)
        offsets = np.frombuffer(ctx.storage.read_bytes(part["idx"]["path"]), dtype=np.uint64)
        decoded += token_shards.decode(data, offsets, tok, eos)
    assert TEXTS[1] not in decoded and sorted(decoded) == sorted([TEXTS[0], *TEXTS[2:]])
    assert tokens["rows"] == v2.rows_out == 4
    assert tokens["parts"][1]["bin"]["path"] == layout.token_part("tok", 1, 1) + ".bin"  # untouched part: kept
    # the forget's published event hands the trainer the new version's shards, as a publish's does, and only once
    (rows, run_id, uri, diff, retrain, shards), = events
    assert shards == [ctx.storage.uri(p["bin"]["path"]) for p in tokens["parts"]] and rows == 4
    assert diff["rows_forgotten"] == 1 and ctx.storage.read_json(layout.version_event("tok", 2))["sent"]
    announce.announce_version(ctx.storage, ctx.config, "tok", 2, run_id)
    assert len(events) == 1
    close_contracts("tok-4")


def test_a_tokenizer_file_must_be_pinned_and_unchanged(tmp_path, tokenizer_file):
    with pytest.raises(ValueError, match="pin it with publish.tokens.sha256"):
        SluiceConfig(publish={"tokens": {"enabled": True, "tokenizer": tokenizer_file[0]}})
    with pytest.raises(ValueError, match="neither 'smollm2' nor the path of a tokenizer.json"):
        SluiceConfig(publish={"tokens": {"tokenizer": "/etc/passwd", "sha256": "0" * 64}})
    with pytest.raises(token_shards.TokenizerError, match="not the pinned"):
        token_shards.load_tokenizer(tokenizer_file[0], "0" * 64)


def _scripts(n: int, seed: int) -> list[str]:
    """n random strings over Latin, Greek, Cyrillic, Hebrew, Arabic, Devanagari, kana, CJK, Hangul, emoji, digits,
    punctuation, whitespace and control characters: where two BPE implementations would part ways."""
    import random

    rng = random.Random(seed)
    pools = [range(32, 127), range(0xA0, 0x250), range(0x370, 0x400), range(0x400, 0x500), range(0x590, 0x700),
             range(0x900, 0x980), range(0x3040, 0x3100), range(0x4E00, 0x4F00), range(0xAC00, 0xAD00),
             range(0x1F300, 0x1F650), range(0, 32), [9, 10, 13, 32, 32, 32, 0xA0, 0x200B]]
    return ["".join(chr(rng.choice(rng.choice(pools))) for _ in range(rng.randint(0, 80))) for _ in range(n)]


def test_tiktoken_gives_the_packaged_tokenizers_ids_exactly():
    """SmolLM2's tokenizer through tiktoken: the same ids as `tokenizers` on 5,000 strings of many scripts (control
    characters the vocabulary lacks are dropped by both), special tokens in text included."""
    from tokenizers import Tokenizer

    from tasks.models.loading import lm_folder

    path = lm_folder(SluiceConfig().score.lm) / "tokenizer.json"
    tok = token_shards.load_tokenizer(str(path), None)
    encoder = token_shards.encoder_for(tok)
    assert encoder.engine == "tiktoken"
    texts = [*_scripts(5000, seed=3), "a\x04b the\x1d end", "<|endoftext|>x<|im_start|>", TEXTS[4] * 50]
    flat, sizes = encoder.encode(pl.Series(texts))
    want = [e.ids for e in Tokenizer.from_file(str(path)).encode_batch(texts, add_special_tokens=False)]
    assert sizes.tolist() == [len(ids) for ids in want]
    assert flat.tolist() == [i for ids in want for i in ids]
    assert sizes[-2] == 3 and flat[sizes[:-2].sum():sizes[:-1].sum()][[0, 2]].tolist() == [0, 1]


def test_a_tokenizer_tiktoken_cannot_run_is_encoded_by_tokenizers(tmp_path):
    """A BPE with a normalizer (lower-casing) is not byte-level GPT-2 splitting: `tokenizers` encodes it, and its
    shards still decode to the text it normalizes."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 5, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded = token_shards.load_tokenizer(str(path), None)
    assert token_shards.encoder_for(loaded).engine == "tokenizers"
    eos = token_shards.eos_id(loaded)
    encoded = token_shards.encode(pl.Series(TEXTS), loaded, eos, np.dtype("<u2"), np.arange(len(TEXTS)))
    assert token_shards.decode(encoded.tokens, encoded.offsets, loaded, eos) == [t.lower() for t in TEXTS]
