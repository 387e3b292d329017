"""The score stage on CPU with the real packaged models: perplexity, embeddings, semantic dedup, semantic
contamination, batching invariance, model integrity, and the stage run through the flow."""

from __future__ import annotations

import json
import random
import shutil
import string

import numpy as np
import polars as pl
import pytest
from conftest import REPO
from judge import judge, records

from schemas.config import (
    DecontaminateConfig,
    ScoreConfig,
    ScoreParams,
    SelectConfig,
    SelectPolicy,
    SemanticContaminationConfig,
    SluiceConfig,
)
from tasks.models import batching, embeddings, kmeans, loading, perplexity, sampling
from tasks.ops.demo_corpus import kjv_records
from tasks.runtime.plan import run_in_memory
from tasks.stages import score
from tasks.stages.score import semantic as sem

VERSES = [r["text"] for r in kjv_records()]
PARAMS = ScoreParams(score=ScoreConfig(device="cpu"), decontaminate=DecontaminateConfig(builtins=["gsm8k"]))


@pytest.fixture(scope="module")
def loaded():
    return score.load_models(PARAMS)


def test_token_budget_batches_cover_every_document_within_the_budget():
    lengths = np.array([5, 300, 40, 41, 7, 300, 1, 128])
    batches = batching.token_budget_batches(lengths, budget=600)
    assert sorted(np.concatenate(batches).tolist()) == list(range(8))
    for b in batches:
        assert len(b) * lengths[b].max() <= 600 or len(b) == 1
    assert lengths[batches[0]].max() == 300  # longest first: an out-of-memory shows up at once


def test_padding_puts_each_rows_tokens_first_and_marks_where_the_lm_predicts_a_real_token():
    tokens, mask, positions = batching.pad([[5, 6, 7], [8], [], [9, 10]], pad_id=0, predicted=True)
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]]
    assert positions.tolist() == [0, 1, 9]  # row * 3 + column, where the next token is real
    empty_tokens, empty_mask = batching.pad([], pad_id=1)
    assert empty_tokens.shape == empty_mask.shape == (0, 1)


def test_an_out_of_memory_batch_is_halved_and_retried():
    import torch

    lengths = np.full(8, 10)
    seen = []

    def compute(idx):
        seen.append(len(idx))
        if len(idx) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.from_numpy(np.asarray(idx, dtype=np.float64) * 2)

    out = batching.run(batching.token_budget_batches(lengths, 80), lambda idx: idx, compute, 8)
    assert out.tolist() == [float(2 * i) for i in range(8)] and max(seen) == 8 and seen.count(2) == 4


def test_perplexity_orders_fluent_shuffled_random(loaded):
    rng = random.Random(1)
    fluent = [" ".join(VERSES[i:i + 2]) for i in range(0, 16, 2)]
    shuffled = [" ".join(rng.sample(t.split(), len(t.split()))) for t in fluent]
    noise = ["".join(rng.choice(string.ascii_letters + string.digits + string.punctuation) for _ in t) for t in fluent]
    lm, cfg = loaded.lm, PARAMS.score.lm
    (nf, bf), (ns, bs), (nr, br) = (perplexity.nll(t, lm, loaded.tokenizer, cfg, loaded.device)
                                    for t in (fluent, shuffled, noise))
    assert (nf < ns).all()  # per token: fluent < shuffled, document by document
    assert (bf < bs).all() and (bs < br).all()  # per character: fluent < shuffled < random characters


def test_scores_do_not_depend_on_batch_order_or_size(loaded, monkeypatch):
    texts = [" ".join(VERSES[i:i + 1 + i % 5]) for i in range(16)]  # 256-token batches: several of them
    order = list(range(16))
    random.Random(3).shuffle(order)
    small = PARAMS.score.lm.model_copy(update={"batch_tokens": 256})
    a, bpc_a = perplexity.nll(texts, loaded.lm, loaded.tokenizer, PARAMS.score.lm, loaded.device)
    b, _ = perplexity.nll([texts[i] for i in order], loaded.lm, loaded.tokenizer, small, loaded.device)
    assert np.allclose(a[order], b, atol=1e-4)
    tiny = PARAMS.score.embedder.model_copy(update={"batch_tokens": 256})
    e1 = embeddings.embed(texts, loaded.embedder, PARAMS.score.embedder, loaded.device)
    e2 = embeddings.embed([texts[i] for i in order], loaded.embedder, tiny, loaded.device)
    assert (e1[order] * e2).sum(1).min() >= 0.9995  # bf16 weights on a CPU that has them: not bit-identical
    # a shard is tokenized TEXTS_AT_ONCE texts at a time: the same scores, in the same order
    monkeypatch.setattr(batching, "TEXTS_AT_ONCE", 5)
    c, bpc_c = perplexity.nll(texts, loaded.lm, loaded.tokenizer, PARAMS.score.lm, loaded.device)
    assert np.allclose(a, c, atol=1e-4) and np.allclose(bpc_a, bpc_c, atol=1e-4)
    e3 = embeddings.embed(texts, loaded.embedder, PARAMS.score.embedder, loaded.device)
    assert e3.shape == e1.shape and (e1 * e3).sum(1).min() >= 0.9995
    reference = loaded.embedder.encode(texts, normalize_embeddings=True).astype(np.float32)  # sentence-transformers
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)  # (in bf16 its output is rounded after normalizing)
    assert (e1 * reference).sum(1).min() >= 0.999


PARAPHRASES = [
    ("The meeting has been moved to Thursday afternoon because the manager is travelling.",
     "Because the manager is travelling, the meeting was moved to Thursday afternoon."),
    ("Water the tomato plants every morning and keep them out of the midday sun.",
     "Every morning, water the tomato plants, and keep them out of the sun at midday."),
    ("The library will be closed for renovations until the end of March.",
     "Until the end of March the library is closed for renovations."),
]


def test_semantic_dedup_merges_paraphrases_and_keeps_unrelated_text(loaded):
    texts = [t for pair in PARAPHRASES for t in pair] + VERSES[100:130:3]
    result = score.score_one_shard(records(*texts), PARAMS, loaded)
    dropped = dict(zip(result.rejected["id"], result.rejected["reason"], strict=True))
    assert dropped == {"d1": "dedup.semantic", "d3": "dedup.semantic", "d5": "dedup.semantic"}
    evidence = {r["id"]: json.loads(r["evidence"]) for r in result.rejected.iter_rows(named=True)}
    assert evidence["d1"]["survivor_id"] == "d0" and evidence["d1"]["cosine"] >= 0.95
    assert result.kept.height == len(texts) - 3


def test_semdedup_on_a_torch_device_decides_as_numpy(monkeypatch):
    """The CUDA path's similarity blocks, run on torch's CPU device: the same survivors and cosines as numpy's,
    also across block boundaries (BLOCK = 16 here) and with exact ties (copies) going to the higher priority."""
    import torch

    from tasks.stages.score import semantic

    monkeypatch.setattr(semantic, "BLOCK", 16)
    rng = np.random.default_rng(4)
    base = rng.normal(size=(60, 32)).astype(np.float32)
    emb = np.concatenate([base, base[:30] + rng.normal(scale=0.05, size=(30, 32)).astype(np.float32), base[:10]])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    clusters = rng.integers(0, 3, size=emb.shape[0])
    clusters[60:] = clusters[np.r_[0:30, 0:10]]  # a near copy shares its original's cluster
    priority = rng.permutation(emb.shape[0])
    want = semantic.duplicates(emb, clusters, priority, 0.05)
    got = semantic.duplicates(emb, clusters, priority, 0.05, torch.device("cpu"))
    assert np.array_equal(got[0], want[0]) and (want[0] >= 0).sum() >= 35
    assert np.allclose(got[1], want[1], atol=1e-6, equal_nan=True)


def test_nearest_items_on_a_torch_device_are_faiss_ones(monkeypatch):
    """The contamination check's nearest benchmark items in torch (its CPU device here): the same k items in the
    same order as faiss, across query blocks, except where two items tie to float rounding."""
    import torch

    from tasks.models import nearest

    monkeypatch.setattr(nearest, "QUERY_BLOCK", 100)
    rng = np.random.default_rng(6)
    items = rng.normal(size=(500, 48)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[rng.integers(0, 500, 350)] + rng.normal(scale=0.3, size=(350, 48)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    want_sims, want_idx = nearest.top_k(queries, items, 3)
    got_sims, got_idx = nearest.top_k(queries, items, 3, torch.device("cpu"))
    assert got_idx.shape == (350, 3) and np.allclose(got_sims, want_sims, atol=1e-5)
    assert [set(r) for r in got_idx] == [set(r) for r in want_idx]
    swapped = np.flatnonzero((got_idx != want_idx).any(1))
    assert swapped.size <= 3 and all(np.ptp(want_sims[r][got_idx[r] != want_idx[r]]) < 1e-5 for r in swapped)


def _gsm8k():
    from tasks.stages.decontaminate.benchmarks import builtin_path

    return [json.loads(line) for line in open(builtin_path("gsm8k"))]


REWRITES = {  # other names, other numbers, sentences reordered
    1: "How many bolts does a robe take in total, if it needs 3 bolts of blue fiber and half as much white fiber?",
    0: "Every day Kim's ducks lay 22 eggs. She sells what remains at the farmers' market for $3 per fresh duck egg, "
       "after eating four for breakfast each morning and baking muffins for her friends with five. How much does she "
       "make daily at the farmers' market, in dollars?",
    2: "Mark buys a house for $90,000 and puts in $40,000 in repairs, having decided to try flipping a house. The "
       "value of the house went up by 120%. How much profit did Mark make?",
}
HARD_NEGATIVES = [  # same topics, different problems
    "Janet's ducks are noisy every morning, and she wonders how many feathers they lose in a week if each duck loses "
    "3 feathers a day.",
    "A farmer sells apples at the market for $2 each. If he brings 50 apples and sells 80% of them, how much does he "
    "earn?",
    "Josh paints houses for a living. He charges $500 per room and painted 6 rooms last month. How much did he make?",
]


def test_rewritten_gsm8k_items_are_caught_and_hard_negatives_are_not(loaded):
    from tasks.stages.decontaminate import decontaminate

    before = " ".join(VERSES[200:215]).rstrip(",;:") + "."
    page = before + " " + REWRITES[2] + " " + " ".join(VERSES[215:230])  # one item inside a long page
    texts = [REWRITES[1], REWRITES[0], page, *HARD_NEGATIVES, *VERSES[300:305]]
    params = PARAMS.model_copy(update={"score": PARAMS.score.model_copy(update={
        "contamination": SemanticContaminationConfig(policy="drop")})})
    result = score.score_one_shard(records(*texts), params, loaded)
    dropped = set(result.rejected.filter(pl.col("reason") == "contamination.semantic")["id"])
    assert dropped == {"d0", "d1", "d2"}
    items = {r["id"]: json.loads(r["evidence"])["item"] for r in result.rejected.iter_rows(named=True)}
    gsm = _gsm8k()
    assert items == {"d0": "gsm8k:gsm8k-2", "d1": "gsm8k:gsm8k-1", "d2": "gsm8k:gsm8k-3"}  # ids are line numbers
    assert [gsm[i]["question"][:12] for i in (1, 0, 2)] == ["A robe takes", "Janet’s duck", "Josh decides"]
    # the n-gram stage misses every rewrite: that is what the semantic check is for
    frame = records(REWRITES[1], REWRITES[0], REWRITES[2]).select("id", "text", "timestamp")
    assert decontaminate(frame, DecontaminateConfig(builtins=["gsm8k"])).rejected.height == 0


SECOND_LOOK = {  # line: a rewrite the cosine alone misses (< 0.85); names, numbers, words and order all changed
    894: "How much does he make a seven-day week? He used to make $8 an hour but they raised his pay by $3 for each "
         "hour. Leo labors at his work for 10 hrs a day for 8 days a seven-day week.",
    215: "How much water does the small pool have now? Abigail has twelve pools, both with leaks emptying them out at "
         "5 gallons/minute. Now the big pool has five times as much water as the small pool. 5 mins ago, the big "
         "pool had two times as much water as the small pool.",
}


def test_abstraction_question_and_the_net_of_candidates():
    from tasks.stages.score import contamination

    assert contamination.abstracted("Janet's 16 ducks lay three eggs; she sells 1,200 at $2.50.") == \
        "someone's N ducks lay N eggs; she sells N at $N."
    assert contamination.abstracted("def has_close(numbers: list, threshold=0.5):\n    return numbers[0] > "
                                    "threshold") == "def f(a1: list, a2=N):\n    return a1[N] > a2"
    assert contamination.question("Mr. Smith has 3 cats. How many legs? He counts them.") == "How many legs?"
    assert contamination.question("A statement. Another one.") == "Another one."
    item = "Natalia sold clips to 48 of her friends in April. How many clips did Natalia sell altogether?"
    assert contamination.content_words(item) == {"sold", "clips", "friends", "april", "sell", "altogether"}
    rewrite = "In April, Omar sold 52 clips to friends. How many clips did Omar sell in all?"  # renamed, renumbered
    look_alike = "Omar has 52 stickers. He gives 9 to a friend. How many stickers does Omar have now?"
    shares = contamination.overlap([rewrite, look_alike, ""], [contamination.content_words(item)] * 3)
    assert shares.tolist() == [5 / 6, 0.0, 0.0]  # "friend" is not "friends": words, not stems
    vectors = contamination.item_questions(["No question here.", "Is this one?"], lambda t: np.ones((len(t), 2)))
    assert vectors.tolist() == [[0.0, 0.0], [1.0, 1.0]]  # an answer's last sentence is never its question
    rng = np.random.default_rng(0)
    items = rng.normal(size=(10, 8))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    windows = items[[1, 1, 2, 3, 3, 3, 5]] + 0.05 * rng.normal(size=(7, 8))
    windows /= np.linalg.norm(windows, axis=1, keepdims=True)
    doc, window, item, cosine = contamination.candidates(windows, np.array([0, 0, 0, 1, 1, 1, 2]), items, k=2,
                                                         floor=0.5, windows=2)
    found = {(d, i): sorted(w for d2, w, i2 in zip(doc, window, item, strict=True) if (d2, i2) == (d, i))
             for d, i in zip(doc, item, strict=True)}
    # document 0: item 1 from both its windows, item 2 from the third; document 1: item 3 from its 2 closest windows
    assert found[(0, 1)] == [0, 1] and found[(0, 2)] == [2] and len(found[(1, 3)]) == 2
    assert all(c >= 0.5 for c in cosine) and len({i for d, i in found if d == 1}) <= 2


def test_long_documents_are_windows_of_sentences_pooled_from_each_sentence_embedded_once():
    short, long = "One short text.", " ".join(f"Sentence number {i} is here." for i in range(6))
    windows = sem.chunk_texts([short, long], words=12)
    assert windows.text(0) == short and windows.whole.tolist()[0] and len(windows.sentences) == 6
    # each window is a run of 1-4 sentences of at most 12 words (a sentence is 5 words: runs of 1 and 2)
    assert windows.owner.tolist() == [0] + [1] * 11 and set(windows.count[1:].tolist()) == {1, 2}
    runs = [" ".join(windows.sentences[f:f + c]) for f, c in zip(windows.first[1:], windows.count[1:], strict=True)]
    assert runs == [windows.text(w) for w in range(1, len(windows))]
    rng = np.random.default_rng(1)
    sentence_emb = rng.normal(size=(6, 4)).astype(np.float32)
    sentence_emb /= np.linalg.norm(sentence_emb, axis=1, keepdims=True)
    one, two = np.flatnonzero(windows.count == 1)[0], np.flatnonzero(windows.count == 2)[0]
    vectors = sem.pooled(windows, sentence_emb, np.asarray([two, one]))  # only the windows asked for, in order
    assert vectors.shape == (2, 4) and sem.pooled(windows, sentence_emb, np.zeros(0, np.int64)).shape == (0, 4)
    assert np.allclose(vectors[1], sentence_emb[windows.first[one]], atol=1e-6)
    expected = sentence_emb[windows.first[two]] + sentence_emb[windows.first[two] + 1]  # equal word counts
    assert np.allclose(vectors[0], expected / np.linalg.norm(expected), atol=1e-6)
    # only some sentences embedded (2, 3, 5): the runs over them pool the same
    embedded = np.asarray([2, 3, 5])
    three = np.flatnonzero((windows.first == 2) & (windows.count == 2))
    five = np.flatnonzero((windows.first == 5) & (windows.count == 1))
    assert np.allclose(sem.pooled(windows, sentence_emb[embedded], np.r_[three, five], embedded),
                       sem.pooled(windows, sentence_emb, np.r_[three, five]), atol=1e-6)
    # only the sentences the chosen windows need are embedded
    chosen = (windows.first == 2) & (windows.count == 2) | (windows.first == 3)
    assert np.flatnonzero(sem.sentences_of(windows, chosen)).tolist() == [2, 3, 4]


def test_a_long_page_is_embedded_only_where_a_window_holds_half_an_items_words():
    from tasks.stages.score import contamination

    item = contamination.content_words("Natalia sold clips to 48 of her friends in April. How many clips?")
    assert item == {"sold", "clips", "friends", "april"}
    page = "In April Omar sold 52 clips. The Lord is my shepherd. She had friends in April. Clips!"
    other = "Friends sold clips. The Lord is my shepherd. I shall not want. He maketh me to lie down in pastures."
    windows = sem.chunk_texts([page, "A short one.", other], 12)
    assert windows.sentence_owner.tolist() == [0, 0, 0, 0, 2, 2, 2, 2]

    def passing(minimum: int, share: float, words=(item,)) -> list[tuple[int, int, int]]:
        found = contamination.sharing_windows(windows, list(words), minimum, share)
        return [(int(windows.owner[w]), int(windows.first[w]), int(windows.count[w])) for w in np.flatnonzero(found)]

    # 3 of the item's 4 words: the first sentence, and runs that gather them; never the short document's window
    assert passing(3, 0.5) == [(0, 0, 1), (0, 0, 2), (0, 1, 3), (0, 2, 2), (2, 4, 1), (2, 4, 2), (2, 4, 3)]
    # at 2 words the run of "friends in April" passes on its own; the other page's words are never added to these
    assert passing(2, 0.5) == [(0, 0, 1), (0, 0, 2), (0, 1, 2), (0, 1, 3), (0, 2, 1), (0, 2, 2),
                               (2, 4, 1), (2, 4, 2), (2, 4, 3)]
    assert passing(4, 0.5) == []  # no run of at most 12 words holds all four: the minimum rules over the share
    assert passing(3, 0.5, words=()) == []
    # a function's name is abstracted to "f", found in no raw text: it counts as found
    code = contamination.content_words("def total(xs):\n    return sum(xs)")
    assert "f" in code and passing(1, 1.0, words=(frozenset({"f", "sold", "clips"}),)) == [
        (0, 0, 1), (0, 0, 2), (2, 4, 1), (2, 4, 2), (2, 4, 3)]


def test_the_second_look_catches_rewrites_the_cosine_misses_with_every_signal_in_the_evidence(loaded):
    texts = [SECOND_LOOK[894], SECOND_LOOK[215], *HARD_NEGATIVES]
    params = PARAMS.model_copy(update={"score": PARAMS.score.model_copy(update={
        "perplexity": False, "contamination": SemanticContaminationConfig(policy="drop")})})
    result = score.score_one_shard(records(*texts), params, loaded)
    dropped = {r["id"]: json.loads(r["evidence"]) for r in result.rejected.iter_rows(named=True)
               if r["reason"] == "contamination.semantic"}
    assert set(dropped) == {"d0", "d1"}
    assert dropped["d0"]["item"] == "gsm8k:gsm8k-894" and dropped["d1"]["item"] == "gsm8k:gsm8k-215"
    for evidence in dropped.values():
        assert 0.6 <= evidence["cosine"] < 0.85  # the cosine alone would have missed it
        assert evidence["abstract"] >= 0.75 and evidence["question"] >= 0.9 and evidence["overlap"] >= 0.5
        assert evidence["window"] and "question >= 0.9 and overlap >= 0.5" in evidence["rule"]
    # the look-alikes (same topics, other problems) are kept, their signals on the row
    kept = result.kept.filter(pl.col("id").is_in(["d2", "d3", "d4"]))
    assert kept.height == 3 and kept["score_contam_cosine"].max() < 0.85


def test_a_rewritten_humaneval_prompt_is_caught_by_its_abstracted_code_and_a_library_function_is_not():
    from tasks.stages.score import contamination

    params = ScoreParams(score=ScoreConfig(device="cpu", perplexity=False, contamination=SemanticContaminationConfig(
        policy="drop")), decontaminate=DecontaminateConfig(builtins=["humaneval"]))
    rewrite = ('def count_edge_ones(digits):\n    """\n    Given a positive integer digits, return the count of the '
               'numbers of digits-digit\n    positive integers that begin or finish with 1.\n    """\n')
    median = ('def median(data):\n    """Return the median (middle value) of numeric data.\n\n    When the number of '
              'data points is odd, return the middle data point.\n    When the number of data points is even, the '
              'median is interpolated by\n    taking the average of the two middle values.\n    """\n')
    result = score.score_one_shard(records(rewrite, median), params, score.load_models(params))
    [dropped] = result.rejected.filter(pl.col("reason") == "contamination.semantic").iter_rows(named=True)
    evidence = json.loads(dropped["evidence"])
    assert dropped["id"] == "d0" and evidence["item"] == "humaneval:HumanEval/83"
    assert evidence["cosine"] < 0.85 <= evidence["abstract"] and evidence["overlap"] >= 0.5  # not by the cosine
    assert "(code, a def in the window and the item: abstracted >= 0.82" in evidence["rule"]
    kept = result.kept.row(by_predicate=pl.col("id") == "d1", named=True)  # statistics.median, beside HumanEval/47
    assert (kept["score_contam_abstract"] or 0) < 0.82 and kept["score_contam_cosine"] < 0.85
    # the code test needs a def on both sides: the same signals on a pair of prose pass only with their question
    cfg = SemanticContaminationConfig()
    frame = pl.DataFrame({"cosine": [0.7, 0.7], "abstract": [0.9, 0.9], "question": [0.0, 0.0],
                          "overlap": [0.8, 0.8], "code": [True, False]})
    hit = frame.select(contamination.is_hit(pl.col("cosine"), pl.col("abstract"), pl.col("question"),
                                            pl.col("overlap"), pl.col("code"), cfg))
    assert hit.to_series().to_list() == [True, False]


def test_judge_score_alone(loaded):
    a, b = PARAPHRASES[0]
    assert judge("score", a, VERSES[5], b, params=PARAMS.model_copy(update={"score": PARAMS.score.model_copy(
        update={"perplexity": False, "contamination": SemanticContaminationConfig(enabled=False)})})) == \
        [None, None, "dedup.semantic"]


def test_a_tampered_model_file_fails_its_sha256(tmp_path):
    folder = tmp_path / "minilm"
    shutil.copytree(loading.embedder_folder(ScoreConfig().embedder), folder)
    with open(folder / "model.safetensors", "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\x00\x01")
    cfg = ScoreConfig().embedder.model_copy(update={"path": str(folder)})
    with pytest.raises(loading.ModelError, match="model.safetensors has sha256 .* not the pinned 53aa5117"):
        loading.load_embedder(cfg, loading.device("cpu"))
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(loading.ModelError, match="pickle weights"):
        loading.verify(folder, {})


def test_cuda_is_never_faked():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: bench/gpu_check.py measures it")
    with pytest.raises(loading.ModelError, match="no CUDA device is visible"):
        loading.device("cuda")
    assert loading.device("auto").type == "cpu"


def test_model_parts_rebuild_the_packages_byte_for_byte(tmp_path, monkeypatch):
    """bench/model_parts.py (how the packaged models reach the GPU machine, 64 MiB a call): split, then join gives
    the same files; a part that has not arrived, or a changed one, is refused."""
    import hashlib
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    import model_parts

    package = tmp_path / "src" / "fake_model_pkg"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    weights = np.random.default_rng(1).bytes(5000)
    (package / "model" / "weights.safetensors").write_bytes(weights)
    (package / "model" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setattr(model_parts, "PACKAGES", ("fake_model_pkg",))
    monkeypatch.setattr(model_parts, "ROOT", tmp_path / ".models")
    monkeypatch.setattr(model_parts, "LARGE", 1000)
    monkeypatch.setattr(model_parts, "PART_BYTES", 2048)
    model_parts.split()
    assert sorted(p.name for p in (tmp_path / ".models" / "parts").iterdir()) == ["00", "01", "02"]
    assert not (tmp_path / ".models" / "fake_model_pkg" / "fake_model_pkg" / "model" / "weights.safetensors").exists()
    model_parts.join(tmp_path / "site")
    rebuilt = tmp_path / "site" / "fake_model_pkg" / "model"
    assert hashlib.sha256((rebuilt / "weights.safetensors").read_bytes()).digest() == hashlib.sha256(weights).digest()
    assert (rebuilt / "config.json").read_text() == "{}"
    (tmp_path / ".models" / "parts" / "01").write_bytes(b"x" * 2048)
    with pytest.raises(SystemExit, match="sha256 differs"):
        model_parts.join(tmp_path / "site2")
    (tmp_path / ".models" / "parts" / "02").unlink()
    with pytest.raises(SystemExit, match="parts 02 have not arrived"):
        model_parts.join(tmp_path / "site3")


def test_the_device_script_needs_no_polars():
    """The GPU machine's image has torch but no polars: bench/gpu_check.py's compute modules (the embedder, the LM,
    k-means, dynamics, the MinHash kernels, the phase profile, the tokenizer timing) import there. Here polars is
    hidden from a child."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['polars'] = None; sys.path.insert(0, 'bench'); import gpu_check, score_profile; "
            "import tokenizer_speed; gpu_check.compute_modules_only(); "
            "from tasks.models import batching, classifiers, embeddings, kmeans, loading, perplexity, tokenizing; "
            "from tasks.stages.score import semantic; from tasks.stages.dedup import minhash_kernels; "
            "from tasks.models.generation import LocalLM; print('imported')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_scores_match_cpu():
    cpu = score.load_models(PARAMS)
    gpu = score.load_models(PARAMS.model_copy(update={"score": PARAMS.score.model_copy(update={"device": "cuda"})}))
    texts = VERSES[:64]
    a = embeddings.embed(texts, cpu.embedder, PARAMS.score.embedder, cpu.device)
    b = embeddings.embed(texts, gpu.embedder, PARAMS.score.embedder, gpu.device)
    assert (a * b).sum(1).min() >= 0.99


def planted(seed: int, clusters: int, per_cluster: int, dim: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(centers, unit rows): `per_cluster` noisy rows around each of `clusters` random centers, cluster by cluster."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    emb = np.concatenate([c + noise * rng.normal(size=(per_cluster, dim)) for c in centers]).astype(np.float32)
    return centers, emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_prototypicality_and_clusters():
    centers, emb = planted(0, 3, 40, 16, 0.05)
    centroids, nearest = kmeans.fit(emb, 3, 10_000)
    assert len(set(nearest[:40])) == len(set(nearest[40:80])) == len(set(nearest[80:])) == 1
    proto = sem.prototypicality(emb, centroids, nearest)
    outlier = emb[:1] * 0 + centers[1] * 0.5 + centers[2] * 0.5
    outlier /= np.linalg.norm(outlier)
    c2, n2 = kmeans.fit(np.concatenate([emb, outlier.astype(np.float32)]), 3, 10_000)
    assert sem.prototypicality(np.concatenate([emb, outlier.astype(np.float32)]), c2, n2)[-1] > proto.max()


def test_kmeans_seeds_once_on_the_cpu_and_is_the_same_on_every_run():
    """One seeding (k-means++ from a numpy generator) and one Lloyd rule for every device: the seeds fall in five
    different planted clusters, the clusters found are the planted ones, and a second run is bit-identical."""
    _, emb = planted(1, 5, 60, 32, 0.1)
    seeds = kmeans.plus_plus(emb, 5, np.random.default_rng(3))
    assert len(set((seeds @ emb.T).argmax(1) // 60)) == 5  # k-means++: one seed per planted cluster
    c1, n1 = kmeans.fit(emb, 5, 10_000)
    assert len(set(zip(n1.tolist(), (np.arange(300) // 60).tolist(), strict=True))) == 5  # the planted partition
    c2, n2 = kmeans.fit(emb.astype(np.float16), 5, 10_000)  # as the features hold embeddings
    assert (n1 == n2).all() and np.allclose(np.linalg.norm(c2, axis=1), 1.0, atol=1e-5)
    again, _ = kmeans.fit(emb, 5, 10_000)
    assert (again == c1).all()
    assert kmeans.fit(emb, 5, 100)[1].shape == (300,)  # fit on a sample, assign all


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine")
def test_kmeans_forms_the_same_clusters_on_cuda_as_on_the_cpu():
    import torch

    _, emb = planted(2, 20, 500, 384, 0.5)
    cpu_c, cpu_n = kmeans.fit(emb, 20, 100_000)
    gpu_c, gpu_n = kmeans.fit(emb, 20, 100_000, device=torch.device("cuda"))
    assert (cpu_n == gpu_n).mean() >= 0.999 and np.abs(cpu_c - gpu_c).max() < 1e-3


def test_the_stage_runs_through_the_flow_with_embeddings_as_side_outputs(prefect_server, tmp_path):
    from flows.curate import run_curate
    from tasks.io.manifests import StageManifest
    from tasks.io.storage import Storage

    data = tmp_path / "in.jsonl"
    rows = [{"text": t} for pair in PARAPHRASES for t in pair] + [{"text": v} for v in VERSES[400:420]]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tmp_path / "score.toml"
    cfg.write_text('[score]\ndevice = "cpu"\n[score.contamination]\nenabled = false\n'
                   '[[select.policies]]\nkind = "k_center"\nk = 10\n')
    run = run_curate([str(data)], str(tmp_path / "out"), str(cfg), run_id="scored",
                     stages=["ingest", "score", "select"])
    assert run["status"] == "succeeded"
    m = Storage(str(tmp_path / "out")).read_record(StageManifest, "runs/scored/score/_manifest.json")
    assert (m.rows_in, m.rows_out, m.rejected_by_reason) == (26, 23, {"dedup.semantic": 3})
    [side] = m.side_outputs["embeddings"]
    assert side.path == "runs/scored/score/embeddings/part-00000-00000.parquet" and side.rows == 26
    emb = pl.read_parquet(tmp_path / "out" / side.path)
    assert emb.schema["embedding"] == pl.Array(pl.Float16, 384)
    kept = pl.read_parquet(tmp_path / "out" / m.outputs[0].path)
    assert kept["score_perplexity"].is_finite().all() and (kept["score_perplexity"] >= 1).all()
    assert m.contract["success"] and SluiceConfig().score.device == "auto"
    # select's k-center rule reads these embeddings (a side input joined on id), never copied into the rows
    sel = Storage(str(tmp_path / "out")).read_record(StageManifest, "runs/scored/select/_manifest.json")
    assert (sel.rows_in, sel.rows_out, sel.rejected_by_reason) == (23, 10, {"select.k_center": 13})
    removed = pl.read_parquet(tmp_path / "out" / sel.rejected[0].path)
    assert "embedding" not in removed.columns
    assert all(json.loads(e)["cover_distance"] > 0 for e in removed["evidence"])


def test_the_quality_head_ranks_held_out_reference_documents_above_junk(loaded, tmp_path):
    from tasks.stages.score import classifier

    paragraphs = classifier.reference_texts(classifier.BUILTIN_REFERENCE)
    rng = random.Random(5)
    rng.shuffle(paragraphs)
    held_out, train = paragraphs[:40], paragraphs[40:]
    reference = tmp_path / "good.jsonl"
    reference.write_text("\n".join(json.dumps({"text": t}) for t in train) + "\n")
    params = PARAMS.model_copy(update={"score": PARAMS.score.model_copy(update={
        "reference": str(reference), "perplexity": False,
        "contamination": SemanticContaminationConfig(enabled=False)})})
    junk = ["click here buy now best price " * 8, "lorem ipsum dolor sit amet " * 10,
            *("".join(rng.choice(string.ascii_letters + " ") for _ in range(300)) for _ in range(8)),
            *(" ".join(rng.choice(["win", "free", "casino", "bonus", "crypto", "$$$", "!!!"]) for _ in range(60))
              for _ in range(10))]
    texts = held_out + junk + VERSES[600:700]  # the input sample is the head's negatives
    batch = records(*texts)
    ld = score.load_models(params)
    (result,), _, artifacts = run_in_memory(score.PLAN, [batch], params, ld)
    decisions = pl.concat([result.kept, result.rejected.drop("reason", "evidence")]).sort("id")
    q = dict(zip(decisions["id"], decisions["score_quality"], strict=True))
    good = [q[f"d{i}"] for i in range(len(held_out))]
    bad = [q[f"d{i}"] for i in range(len(held_out), len(held_out) + len(junk))]
    auc = sum(g > b for g in good for b in bad) / (len(good) * len(bad))
    assert auc >= 0.95, auc
    head = tmp_path / "head.safetensors"
    head.write_bytes(artifacts["quality_head.safetensors"])
    reused = params.model_copy(update={"score": params.score.model_copy(update={"head_path": str(head)})})
    (again,), _, made = run_in_memory(score.PLAN, [batch], reused, score.load_models(reused))
    again = pl.concat([again.kept, again.rejected.drop("reason", "evidence")]).sort("id")
    assert made == {} and np.allclose(again["score_quality"].to_numpy(), decisions["score_quality"].to_numpy())
    novelty = dict(zip(decisions["id"], decisions["score_novelty"], strict=True))
    assert np.mean([novelty[f"d{i}"] for i in range(40)]) < np.mean([novelty[f"d{i}"] for i in range(40, 60)])


def test_bfloat16_on_the_cpu_agrees_with_float32_on_text_it_was_not_checked_on():
    import torch

    from tasks.models import shared

    texts = [" ".join(VERSES[i:i + 1 + i % 6]) for i in range(1000, 1018)]
    cfg, dev = PARAMS.score, loading.device("cpu")  # the shared loaders: what score and augment both get
    precise = shared.embedder(cfg.embedder, dev, "float32"), shared.language_model(cfg.lm, dev, "float32")
    fast = shared.embedder(cfg.embedder, dev, "bfloat16"), shared.language_model(cfg.lm, dev, "bfloat16")
    assert [m.precision for m in precise] == ["float32", "float32"]
    assert [m.precision for m in fast] == ["bfloat16", "bfloat16"]  # asked for: used, whatever the check
    assert next(fast[0].model.parameters()).dtype == torch.bfloat16
    assert next(fast[1].model.parameters()).dtype == torch.float32  # the LM: autocast over float32 weights
    assert shared.embedder(cfg.embedder, dev, "bfloat16") is fast[0]  # loaded once per process and precision
    a, b = precise[0].embed(texts), fast[0].embed(texts)
    assert 0.99 <= (a * b).sum(1).min() < 0.999999  # close, and really computed another way
    na, _ = precise[1].nll(texts)
    nb, _ = fast[1].nll(texts)
    assert 0 < (np.abs(nb - na) / na).max() <= 0.01
    assert loading.precision("auto", loading.device("cpu")) == ("bfloat16" if loading.cpu_has_bf16() else "float32")
    assert loading.precision("float32", loading.device("cpu")) == "float32"


def test_bfloat16_that_disagrees_with_float32_is_not_used(loaded, caplog):
    caplog.set_level("INFO", logger="sluice")

    def run(texts, bf16):
        return perplexity.nll(texts, loaded.lm, loaded.tokenizer, PARAMS.score.lm, loaded.device, bf16)

    chosen, measure = loading.checked_bfloat16(run, loading.nll_agrees, "the LM", forced=False)
    assert chosen == ("float32" if measure > loading.NLL_TOLERANCE else "bfloat16") and 0 < measure < 0.05
    strict = loading.checked_bfloat16(run, lambda a, b: (False, 0.42), "a test model", forced=False)
    assert strict == ("float32", 0.42)
    assert "a test model runs in float32 on the CPU (bfloat16 measured 0.42000 against it on" in caplog.text
    assert loading.checked_bfloat16(run, lambda a, b: (False, 0.42), "a test model", forced=True)[0] == "bfloat16"


def test_a_sample_scores_the_same_rows_every_time_and_passes_the_rest_through(loaded):
    params = PARAMS.model_copy(update={"score": PARAMS.score.model_copy(update={"sample": 0.25, "perplexity": False})})
    batch = records(*VERSES[2000:2080])
    first = score.score_one_shard(batch, params, loaded)
    again = score.score_one_shard(batch, params, loaded)
    kept = first.kept
    scored = kept.filter("score_scored")
    assert 8 <= scored.height <= 32 and first.rejected.height == 0 and kept.height == 80
    assert scored["score_prototypicality"].is_not_null().all() and scored["score_novelty"].is_not_null().all()
    rest = kept.filter(~pl.col("score_scored"))
    assert rest["score_prototypicality"].is_null().all() and rest["score_contam_cosine"].is_null().all()
    assert again.kept.filter("score_scored")["id"].to_list() == scored["id"].to_list()
    assert first.stats.counts["score.scored"] == scored.height
    ids = pl.Series("id", [f"doc-{i}" for i in range(20_000)])
    assert sampling.chosen(ids, 1.0, "score").all()
    mine, proxy = sampling.chosen(ids, 0.1, "score"), sampling.chosen(ids, 0.1, "augment.proxy")
    assert 1_800 <= mine.sum() <= 2_200 and 1_800 <= proxy.sum() <= 2_200
    assert 100 <= (mine & proxy).sum() <= 300  # one seed per purpose: independent samples (200 expected)
    assert mine.to_list() == (ids.hash(seed=11) % 1_000_000 < 100_000).to_list()  # the score sample did not move


def test_reference_vectors_are_computed_once_per_machine_and_a_damaged_cache_is_redone(tmp_path):
    calls = []

    def compute(texts):
        calls.append(len(texts))
        return np.arange(len(texts) * 3, dtype=np.float32).reshape(len(texts), 3)

    identity = {"embedder": "minilm", "precision": "float32"}
    first = loading.cached_vectors(tmp_path, identity, ["a", "b"], compute)
    again = loading.cached_vectors(tmp_path, identity, ["a", "b"], compute)
    assert calls == [2] and np.array_equal(first, again)
    loading.cached_vectors(tmp_path, {**identity, "precision": "bfloat16"}, ["a", "b"], compute)
    loading.cached_vectors(tmp_path, identity, ["a", "c"], compute)
    assert calls == [2, 2, 2]  # another precision or other texts: another entry
    [damaged, *_] = sorted((tmp_path / "vectors").glob("*.npy"))
    damaged.write_bytes(b"\x93NUMPY garbage")
    assert len(list((tmp_path / "vectors").glob("*.npy"))) == 3
    for _ in range(2):  # whichever entry was damaged is recomputed once, then read again
        for ident, texts in ((identity, ["a", "b"]), ({**identity, "precision": "bfloat16"}, ["a", "b"]),
                             (identity, ["a", "c"])):
            assert loading.cached_vectors(tmp_path, ident, texts, compute).shape == (2, 3)
    assert calls == [2, 2, 2, 2]


def test_training_dynamics_on_a_tiny_separable_set_learn_clean_rows_first_and_flipped_ones_late():
    from tasks.models import classifiers

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 2
    y = rng.integers(0, 3, 300)
    x = centers[y] + rng.normal(size=(300, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    flipped = np.zeros(300, dtype=bool)
    flipped[rng.choice(300, 30, replace=False)] = True
    noisy = np.where(flipped, (y + 1) % 3, y)
    cfg = ScoreConfig().dynamics.model_copy(update={"hidden": 0, "lr": 0.05, "batch_size": 32})
    dyn = classifiers.training_dynamics(x, noisy, 3, cfg, loading.device("cpu"))
    assert np.median(dyn.epochs_to_learn[~flipped]) == 1  # clean rows are learned in the first epoch
    assert np.median(dyn.epochs_to_learn[flipped]) > cfg.epochs  # flipped ones never are
    assert dyn.el2n[flipped].min() > np.percentile(dyn.el2n[~flipped], 90)
    assert dyn.aum[flipped].max() < 0 < np.percentile(dyn.aum[~flipped], 5)
    assert (dyn.grand >= dyn.el2n).all() and dyn.oof.shape == (300, 3)
    issue, quality, pred = classifiers.label_issues(noisy, dyn)
    assert (issue & flipped).sum() >= 24 and (issue & ~flipped).sum() <= 2  # measured: 26 and 0
    assert (pred[flipped] == y[flipped]).mean() > 0.9  # the predicted label is the true one
    assert quality[flipped].max() < quality[~flipped].min() + 0.2


def test_the_stage_flags_label_issues_that_select_can_drop_with_evidence(loaded):
    from tasks.stages import select

    rng = random.Random(8)
    law = [" ".join(VERSES[i:i + 2]) for i in range(1500, 1700, 2)]  # Exodus-Leviticus
    gospel = [" ".join(VERSES[i:i + 2]) for i in range(23300, 23500, 2)]  # Matthew
    texts, labels = law + gospel, ["law"] * 100 + ["gospel"] * 100
    flipped = set(rng.sample(range(200), 16))
    given = [("gospel" if lab == "law" else "law") if i in flipped else lab for i, lab in enumerate(labels)]
    batch = records(*texts).with_columns(label=pl.Series(given))
    params = PARAMS.model_copy(update={"score": PARAMS.score.model_copy(update={
        "perplexity": False, "contamination": SemanticContaminationConfig(enabled=False)})})
    scored = score.score_one_shard(batch, params, loaded)
    out = pl.concat([scored.kept, scored.rejected.drop("reason", "evidence")]).sort(
        pl.col("id").str.slice(1).cast(pl.Int64))
    worst = set(out.with_row_index("i").sort("score_label_quality").head(16)["i"].to_list())
    assert len(worst & flipped) >= 12  # precision@16 on real text, chance is 8%
    assert out["score_el2n"].is_not_null().all() and out["score_label_pred"].is_in(["law", "gospel"]).all()
    rule = SelectConfig(policies=[SelectPolicy(kind="label_noise")])
    chosen = select.select_one_shard(out, rule)
    assert chosen.rejected.height == int(out["label_issue"].sum()) > 0
    evidence = json.loads(chosen.rejected["evidence"][0])
    assert set(evidence) >= {"policy", "label", "predicted", "label_quality", "el2n", "aum"}
    assert evidence["policy"] == "select.label_noise" and evidence["label"] != evidence["predicted"]


def test_a_sample_that_picks_no_row_passes_every_row_through(prefect_server, tmp_path):
    """30 rows at `score.sample = 0.01`: no row is scored (the k-means fit has no sample at all); the run succeeds
    with every row passed through unscored, instead of crashing in the fit (issue 26 item 5)."""
    from flows.curate import run_curate
    from tasks.io.manifests import StageManifest
    from tasks.io.storage import Storage

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": f"Row {i}: a sentence long enough to keep, with words."}) + "\n"
                            for i in range(30)))
    cfg = tmp_path / "score.toml"
    cfg.write_text('[score]\ndevice = "cpu"\nsample = 0.01\n')
    run = run_curate([str(data)], str(tmp_path / "out"), str(cfg), run_id="none", stages=["ingest", "score"])
    assert run["status"] == "succeeded"
    m = Storage(str(tmp_path / "out")).read_record(StageManifest, "runs/none/score/_manifest.json")
    kept = pl.read_parquet(tmp_path / "out" / m.outputs[0].path)
    assert (m.rows_in, m.rows_out) == (30, 30) and not kept["score_scored"].any()
