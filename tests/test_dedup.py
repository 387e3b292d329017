"""Dedup: exact, repeated paragraphs, MinHash near-duplicates; recall on planted edits, determinism."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import polars as pl
import pytest
from dedup_oracle import decide, features
from judge import judge

from schemas.config import DedupConfig, NearDupConfig, SpanDedupConfig
from tasks.ops.demo_corpus import kjv_records
from tasks.runtime.plan import run_in_memory
from tasks.stages.dedup import PLAN, dedup_one_shard, steps

VERSES = [r["text"] for r in kjv_records()]
PASSAGES = [" ".join(VERSES[i:i + 8]) for i in range(0, 8 * 400, 8)]


def frame(texts, ids=None, timestamps=None) -> pl.DataFrame:
    n = len(texts)
    return pl.DataFrame({
        "id": ids or [f"doc-{i:05d}" for i in range(n)],
        "text": texts,
        "timestamp": timestamps or [None] * n,
    }, schema={"id": pl.String, "text": pl.String, "timestamp": pl.Datetime("us", "UTC")})


def edit(text: str, rate: float, rng: random.Random) -> str:
    words = text.split()
    for i in range(len(words)):
        if rng.random() < rate:
            words[i] = rng.choice(["lorem", "quartz", "zephyr", "glimmer", "vortex"])
    return " ".join(words)


def test_exact_duplicates_after_normalization_keep_the_earliest():
    base = PASSAGES[0]
    texts = [base, base.upper(), base.replace(",", ""), "  " + base.replace(" ", "   ") + " ", PASSAGES[1]]
    stamps = [datetime(2024, 5, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC), None, None, None]
    res = dedup_one_shard(frame(texts, timestamps=stamps), DedupConfig())
    assert sorted(res.kept["id"]) == ["doc-00001", "doc-00004"]  # the 2020 copy survives
    assert set(res.rejected["reason"]) == {"dedup.exact"}
    for ev in res.rejected["evidence"]:
        assert json.loads(ev)["survivor_id"] == "doc-00001"
    assert res.kept.height + res.rejected.height == len(texts)


@pytest.mark.parametrize("rate", [0.0, 0.02])
def test_near_duplicates_with_small_edits_are_found(rate):
    rng = random.Random(5)
    copies = [edit(PASSAGES[i], rate, rng) + (" Amen." if rate == 0 else "") for i in range(40)]
    res = dedup_one_shard(frame(PASSAGES + copies), DedupConfig())
    dropped = set(res.rejected["id"])
    planted = {f"doc-{i:05d}" for i in range(len(PASSAGES), len(PASSAGES) + 40)}
    assert len(planted & dropped) / 40 >= 0.95
    assert dropped <= planted  # no original passage was merged into another
    for row in res.rejected.iter_rows(named=True):
        ev = json.loads(row["evidence"])
        assert int(ev["survivor_id"][4:]) == int(row["id"][4:]) - len(PASSAGES)


def test_recall_falls_with_edit_rate_and_a_looser_band_setting_recovers_it():
    rng = random.Random(9)
    recall = {}
    for rate in (0.02, 0.10, 0.20):
        copies = [edit(PASSAGES[i], rate, rng) for i in range(60)]
        res = dedup_one_shard(frame(PASSAGES + copies), DedupConfig())
        recall[rate] = len({i for i in res.rejected["id"] if int(i[4:]) >= len(PASSAGES)}) / 60
    assert recall[0.02] >= 0.95 >= recall[0.10] >= recall[0.20]
    loose = DedupConfig(near=NearDupConfig(ngram=3, bands=28, rows=4, verify_jaccard=False))
    copies = [edit(PASSAGES[i], 0.10, rng) for i in range(60)]
    res = dedup_one_shard(frame(PASSAGES + copies), loose)
    assert len({i for i in res.rejected["id"] if int(i[4:]) >= len(PASSAGES)}) / 60 >= 0.9


def _jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard of word n-gram sets, with Sluice's tokens (what verification computes)."""
    from tasks.text import tokens

    def grams(text: str) -> set:
        words = pl.select(tokens.words(pl.lit(text.lower()))).item().to_list()
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def test_recall_at_jaccard_08_is_at_least_98_percent_with_no_false_merge():
    """Issue 10: the default banding (20 x 5) plus exact verification finds >= 98% of pairs at J >= 0.8."""
    rng = random.Random(21)
    texts, pairs = list(PASSAGES), []
    for i in range(400):
        copy = edit(PASSAGES[i], rng.choice([0.01, 0.02, 0.03]), rng)
        j = _jaccard(PASSAGES[i], copy)
        texts.append(copy)
        pairs.append((f"doc-{i:05d}", f"doc-{len(texts) - 1:05d}", j))
    res = dedup_one_shard(frame(texts), DedupConfig())
    removed = set(res.rejected["id"])
    high = [(a, b) for a, b, j in pairs if j >= 0.8]
    assert len(high) >= 200
    found = sum(1 for a, b in high if a in removed or b in removed) / len(high)
    assert found >= 0.98, found
    survivors = {r["id"]: json.loads(r["evidence"])["survivor_id"] for r in res.rejected.iter_rows(named=True)}
    partner = {b: a for a, b, _ in pairs} | {a: b for a, b, _ in pairs}
    assert all(survivors[d] == partner[d] for d in removed)  # every removal is merged into its own pair
    assert all(j >= 0.7 for a, b, j in pairs if b in removed)  # verified: nothing under the threshold


def test_unrelated_documents_are_never_merged():
    res = dedup_one_shard(frame(PASSAGES), DedupConfig())
    assert res.rejected.height == 0 and res.kept.height == len(PASSAGES)


def test_jaccard_verification_rejects_weak_candidates():
    rng = random.Random(3)
    copies = [edit(PASSAGES[i], 0.04, rng) for i in range(30)]
    plain = dedup_one_shard(frame(PASSAGES + copies), DedupConfig(near=NearDupConfig(verify_jaccard=False)))
    strict = dedup_one_shard(frame(PASSAGES + copies),
                             DedupConfig(near=NearDupConfig(verify_jaccard=True, threshold=0.95)))
    assert strict.rejected.height < plain.rejected.height
    lenient = dedup_one_shard(frame(PASSAGES + copies),
                              DedupConfig(near=NearDupConfig(verify_jaccard=True, threshold=0.3)))
    assert lenient.rejected.height == plain.rejected.height


def test_repeated_paragraphs_are_cut_from_all_but_the_first_document():
    boiler = "Subscribe to our newsletter for the latest updates from the valley and beyond."
    texts = [f"{PASSAGES[i]}\n\n{boiler}" for i in range(6)] + [boiler]
    res = dedup_one_shard(frame(texts), DedupConfig(spans=SpanDedupConfig(max_docs=3)))
    kept = dict(zip(res.kept["id"], res.kept["text"], strict=True))
    assert kept["doc-00000"].endswith(boiler)  # first occurrence stays
    for i in range(1, 6):
        assert kept[f"doc-{i:05d}"] == PASSAGES[i]
    emptied = res.rejected.filter(pl.col("id") == "doc-00006")
    assert emptied["reason"].to_list() == ["dedup.spans.empty"]
    assert emptied["text"].to_list() == [boiler]  # the quarantine keeps the row as it arrived
    assert res.stats.counts["dedup.paragraphs_removed"] == 5
    ledger = res.edits.sort("id")  # every cut recorded: the row, the rule, what went
    assert ledger["id"].to_list() == [f"doc-{i:05d}" for i in range(1, 6)]
    assert set(ledger["rule"]) == {"dedup.spans"} and set(ledger["unit"]) == {"paragraph"}
    assert ledger["units_removed"].to_list() == [1] * 5
    assert ledger["chars_removed"].to_list() == [len(boiler) + 2] * 5
    untouched = dedup_one_shard(frame(texts), DedupConfig(spans=SpanDedupConfig(max_docs=10)))
    assert untouched.kept.filter(pl.col("id") == "doc-00003")["text"][0].endswith(boiler)


def test_a_cut_that_would_leave_a_fragment_rejects_the_row_instead():
    """spans.max_removed_fraction (0.5): a short post under a long repeated footer is not published as a stub."""
    footer = " ".join(PASSAGES[390:392])  # twice a post's length, in every post (Jaccard ~0.5: not near-dups)
    texts = [f"{PASSAGES[i]}\n\n{footer}" for i in range(6)]
    res = dedup_one_shard(frame(texts), DedupConfig(spans=SpanDedupConfig(max_docs=3)))
    bounded = res.rejected.filter(pl.col("reason") == "dedup.spans.removed_too_much")
    assert bounded.height == 5 and res.kept["id"].to_list() == ["doc-00000"]
    ev = json.loads(bounded["evidence"][0])
    assert ev["rule"] == "dedup.spans" and ev["max_removed_fraction"] == 0.5 and ev["paragraphs_removed"] == 1
    assert ev["removed_fraction"] > 0.5 and ev["chars_removed"] == len(footer) + 2
    assert bounded["text"][0] == texts[1]  # as it arrived, not the fragment
    assert res.edits.height == 0
    loose = dedup_one_shard(frame(texts), DedupConfig(spans=SpanDedupConfig(max_docs=3, max_removed_fraction=1.0)))
    assert loose.kept.height == 6 and loose.edits.height == 5


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_partitioned_steps_decide_as_one_pass_over_the_corpus(partitions):
    """Any shard order and split, any partition count: the same rows removed with the same survivors as the
    single-process pass Sluice ran before issue 25 (tests/dedup_oracle.py), and the same paragraphs cut."""
    rng = random.Random(1)
    boiler = "Subscribe to our newsletter for the latest updates from the valley and beyond."
    texts = (PASSAGES[:200] + [edit(PASSAGES[i], 0.01, rng) for i in range(50)] + PASSAGES[:20]
             + [edit(PASSAGES[i], 0.05, rng) for i in range(60, 90)] + [f"{PASSAGES[i]}\n\n{boiler}"
                                                                        for i in range(300, 320)])
    df = frame(texts)
    cfg = DedupConfig(spans=SpanDedupConfig(max_docs=5))
    oracle = decide(features(df, cfg), cfg)
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=4)
    shards = [shuffled.slice(i, 64) for i in range(0, shuffled.height, 64)]
    results, _, _ = run_in_memory(PLAN, list(reversed(shards)), cfg, partitions=partitions)
    rejected = pl.concat([r.rejected for r in results])
    got = {r["id"]: (r["reason"].removeprefix("dedup."), json.loads(r["evidence"])["survivor_id"])
           for r in rejected.iter_rows(named=True)}
    expected = {r["id"]: (r["action"], r["survivor"]) for r in oracle.filter(pl.col("action") != "keep")
                .iter_rows(named=True)}
    assert got == expected and len(got) > 50
    cut = pl.concat([r.kept for r in results]).filter(pl.col("dup_paragraphs_removed") > 0)["id"].sort().to_list()
    assert cut == oracle.filter(pl.col("drop_paragraphs").list.len() > 0)["id"].sort().to_list() != []
    whole = dedup_one_shard(df, cfg)
    assert sorted(pl.concat([r.kept for r in results])["id"]) == sorted(whole.kept["id"])


def test_near_duplicate_evidence_is_the_verified_jaccard_of_the_edge_that_merged_it():
    """Issue 26, item 6: the similarity reported is the exact Jaccard of a verified edge (>= the threshold), with
    the row it was measured against, never a MinHash estimate below the threshold."""
    rng = random.Random(3)
    texts = PASSAGES[:100] + [edit(PASSAGES[i], 0.03, rng) for i in range(40)]
    res = dedup_one_shard(frame(texts), DedupConfig())
    near = [json.loads(e) for e in res.rejected.filter(pl.col("reason") == "dedup.near")["evidence"]]
    assert len(near) >= 30
    assert all(e["similarity"] >= DedupConfig().near.threshold and e["matched_id"] for e in near)


def test_shuffled_rows_carry_no_text():
    from tasks.runtime.plan import StepInputs

    batch = frame(PASSAGES[:5])
    inputs = StepInputs({s.name: 2 for s in PLAN.shuffles})
    for step in (steps.exact_keys, steps.bands, steps.paragraph_keys):
        for out in step(batch, inputs, DedupConfig()).values():
            assert "text" not in out.columns and out.height


def test_contract_identity_survives_paragraph_cuts_and_suite_follows_params():
    from schemas.expectations import load_suite
    from tasks.stages.dedup import STAGE

    boiler = "Subscribe to our newsletter for the latest updates from the valley and beyond."
    texts = [f"{PASSAGES[i]}\n\n{boiler}" for i in range(5)] + [PASSAGES[3]]
    res = dedup_one_shard(frame(texts), DedupConfig(spans=SpanDedupConfig(max_docs=2)))
    kept = res.kept
    assert kept.filter(pl.col("id") == "doc-00003")["text"][0] == PASSAGES[3]  # same text as doc-00005 now
    assert kept["dup_norm_hash"].n_unique() == kept.height  # the hash exact dedup judged, before the cut
    assert STAGE.suite_for(DedupConfig()) == "dedup"
    assert STAGE.suite_for(DedupConfig(exact=False)) == "dedup-without-exact"
    names = {e["kwargs"]["column"] for e in load_suite("dedup-without-exact")["expectations"]}
    assert "dup_norm_hash" not in names


def test_empty_shard_goes_through_every_step():
    empty = frame(["x"]).clear()
    res = dedup_one_shard(empty, DedupConfig())
    assert res.kept.height == 0 and res.rejected.height == 0
    results, _, _ = run_in_memory(PLAN, [empty, frame(PASSAGES[:3]), empty], DedupConfig(), partitions=4)
    assert [r.kept.height for r in results] == [0, 3, 0]


def test_judge_dedup_alone():
    verse = kjv_records()[7]["text"] + " " + kjv_records()[8]["text"]
    other = kjv_records()[900]["text"] + " " + kjv_records()[901]["text"]
    assert judge("dedup", verse, verse.upper(), other) == [None, "dedup.exact", None]


@pytest.mark.parametrize("elements_at_once", [2**26, 1_000])
def test_torch_minhash_is_bit_for_bit_the_numpy_one(monkeypatch, elements_at_once):
    """The GPU path's kernel, run on torch's CPU device: the same uint64 signatures as numpy, including hashes with
    the top bit set (where int64 order and uint64 order differ) and permutations taken a few at a time."""
    import numpy as np
    import torch

    from tasks.runtime.stage import ROW
    from tasks.stages.dedup import minhash_kernels, within_run

    monkeypatch.setattr(minhash_kernels, "ELEMENTS_AT_ONCE", elements_at_once)
    texts = [*PASSAGES[:300], "two words", "", PASSAGES[0]]
    df = pl.DataFrame({ROW: np.arange(len(texts), dtype=np.uint32), "text": texts})
    sh = within_run.shingles(df, 5)
    assert (sh["sh"].to_numpy() >= 2**63).mean() > 0.4  # the sign flip is exercised
    want = within_run.minhash(sh, df.height, 100)
    got = within_run.minhash(sh, df.height, 100, torch.device("cpu"))
    assert got.dtype == np.uint64 and got.shape == (len(texts), 100)
    assert np.array_equal(got, want)
    empty = within_run.minhash(sh.clear(), 3, 100, torch.device("cpu"))
    assert np.array_equal(empty, within_run.minhash(sh.clear(), 3, 100))


def test_the_stage_decides_the_same_with_signatures_on_a_torch_device(monkeypatch):
    """dedup with `device` resolved to a torch device (its CPU, standing in for CUDA here) drops the same rows with
    the same survivors; asking for CUDA where there is none is a clear error, not a silent CPU run."""
    import torch

    from tasks.models.loading import ModelError
    from tasks.stages.dedup import within_run

    rng = random.Random(2)
    df = frame(PASSAGES[:150] + [edit(PASSAGES[i], 0.03, rng) for i in range(40)])
    want = dedup_one_shard(df, DedupConfig(device="cpu"))
    monkeypatch.setattr(within_run, "_torch_device", lambda choice: torch.device("cpu"))
    got = dedup_one_shard(df, DedupConfig(device="cuda"))
    assert got.rejected.sort("id").equals(want.rejected.sort("id")) and want.rejected.height >= 35
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="dedup.device = cuda, but no CUDA device is visible"):
            dedup_one_shard(df, DedupConfig(device="cuda"))


def test_auto_asks_torch_only_where_an_nvidia_driver_is(tmp_path):
    """dedup.device = auto on a machine without the NVIDIA driver: numpy, and torch is never imported (1.3 s and
    300 MB a dedup worker); with a driver present, torch is asked (and says no here)."""
    import subprocess
    import sys

    from conftest import REPO

    driver = tmp_path / "version"
    code = ("import sys; from tasks.stages.dedup import minhash_kernels as m; m.NVIDIA_DRIVER = (sys.argv[1],); "
            "print(m.cuda_present(), 'torch' in sys.modules)")
    absent = subprocess.run([sys.executable, "-c", code, str(driver)], capture_output=True, text=True, cwd=REPO)
    assert absent.stdout.split() == ["False", "False"], absent.stderr[-1000:]
    driver.write_text("NVRM version: test")
    present = subprocess.run([sys.executable, "-c", code, str(driver)], capture_output=True, text=True, cwd=REPO)
    assert present.stdout.split() == ["False", "True"], present.stderr[-1000:]
