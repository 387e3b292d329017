"""The select stage: every rule on hand-made frames with its reason and evidence, rules composed in order,
determinism under shuffled and re-split shards, and the contract failing when a selection would empty a class."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest
from judge import judge, records

from schemas.config import SelectConfig, SelectPolicy
from tasks.runtime.plan import run_in_memory
from tasks.runtime.stats import Stats
from tasks.stages import select


def frame(n: int = 20) -> pl.DataFrame:
    """n rows: a score rising with the index, a label cycling a/b, a source by halves; one unscored row (null)."""
    base = records(*[f"document {i} " + "word " * i for i in range(n)])
    return base.with_columns(score=pl.Series([float(i) if i != 3 else None for i in range(n)]),
                             label=pl.Series(["a" if i % 2 else "b" for i in range(n)]),
                             source=pl.Series(["x" if i < n // 2 else "y" for i in range(n)]))


def run(batch: pl.DataFrame, *rules: dict) -> tuple[dict[str, str | None], dict[str, dict]]:
    params = SelectConfig(policies=[SelectPolicy(**r) for r in rules])
    result = select.select_one_shard(batch, params)
    reasons = dict(zip(result.rejected["id"], result.rejected["reason"], strict=True))
    evidence = {i: json.loads(e) for i, e in zip(result.rejected["id"], result.rejected["evidence"], strict=True)}
    assert result.kept.height + result.rejected.height == batch.height
    assert result.kept.columns == batch.columns
    return {i: reasons.get(i) for i in batch["id"]}, evidence


def test_judge_select_alone_keeps_the_longest():
    params = SelectConfig(policies=[SelectPolicy(kind="longest", k=2)])
    assert judge("select", "short", "a much longer text than the others", "mid length text", params=params) == \
        ["select.longest", None, None]


def test_threshold_with_evidence_and_unscored_rows_kept_or_rejected():
    reasons, evidence = run(frame(), {"kind": "threshold", "column": "score", "min": 5, "max": 15})
    removed = sorted(int(i[1:]) for i, r in reasons.items() if r)
    assert removed == [0, 1, 2, 4, 16, 17, 18, 19]  # d3 is unscored: kept by default
    assert evidence["d17"] == {"policy": "select.threshold", "column": "score", "value": 17.0, "min": 5.0,
                               "max": 15.0}
    reasons, _ = run(frame(), {"kind": "threshold", "column": "score", "min": 5, "nulls": "reject",
                               "name": "min_score"})
    assert reasons["d3"] == "select.min_score" and reasons["d0"] == "select.min_score" and reasons["d5"] is None


def test_top_fraction_keep_hard_and_keep_easy_rank_by_the_column():
    reasons, evidence = run(frame(), {"kind": "top", "column": "score", "k": 4})
    assert sorted(i for i, r in reasons.items() if r is None) == ["d16", "d17", "d18", "d19", "d3"]
    assert evidence["d15"] == {"policy": "select.top", "column": "score", "value": 15.0, "cutoff": 16.0,
                               "budget": 4, "descending": True}  # the 4th kept row's value: 16
    reasons, _ = run(frame(), {"kind": "keep_easy", "column": "score", "fraction": 0.25, "nulls": "reject"})
    assert sorted(i for i, r in reasons.items() if r is None) == ["d0", "d1", "d2", "d4", "d5"]  # 25% of 19 scored
    reasons, _ = run(frame(), {"kind": "keep_hard", "column": "score", "k": 2, "nulls": "reject"})
    assert {i for i, r in reasons.items() if r is None} == {"d18", "d19"}


def test_random_is_a_seeded_subset_of_the_asked_size():
    batch = frame(200)
    a, _ = run(batch, {"kind": "random", "fraction": 0.3, "seed": 1})
    b, _ = run(batch, {"kind": "random", "fraction": 0.3, "seed": 1})
    c, _ = run(batch, {"kind": "random", "fraction": 0.3, "seed": 2})
    kept = {i for i, r in a.items() if r is None}
    assert len(kept) == 60 and a == b and kept != {i for i, r in c.items() if r is None}
    assert {r for r in a.values() if r} == {"select.random"}


def test_quota_per_group_and_balance():
    batch = frame(20).with_columns(label=pl.Series(["a"] * 14 + ["b"] * 6))
    reasons, evidence = run(batch, {"kind": "quota", "by": ["label"], "max_per_group": 3, "column": "score"})
    kept = sorted(i for i, r in reasons.items() if r is None)
    assert kept == ["d11", "d12", "d13", "d17", "d18", "d19"]  # the 3 highest scores of each class
    assert evidence["d0"]["group"] == "a" and evidence["d0"]["per_group"] == 3
    reasons, _ = run(batch, {"kind": "quota", "by": ["label"], "balance": True})
    kept = [i for i, r in reasons.items() if r is None]
    assert batch.filter(pl.col("id").is_in(kept)).group_by("label").len().sort("label")["len"].to_list() == [6, 6]


def test_rules_compose_in_order_each_on_what_the_previous_kept():
    reasons, _ = run(frame(), {"kind": "threshold", "column": "score", "max": 9, "name": "cap"},
                     {"kind": "top", "column": "score", "k": 2})
    assert {i for i, r in reasons.items() if r is None} == {"d3", "d8", "d9"}
    assert reasons["d19"] == "select.cap" and reasons["d7"] == "select.top"


def _decisions(shards: list[pl.DataFrame], params: SelectConfig, partitions: int) -> pl.DataFrame:
    results, _, _ = run_in_memory(select.PLAN, shards, params, partitions=partitions)
    return pl.concat([r.rejected.select("id", "reason", "evidence") for r in results]).sort("id")


def test_deterministic_under_shuffled_and_re_split_shards_and_partitions():
    batch = frame(300).with_columns(score=pl.Series([float(i % 7) for i in range(300)]))  # many ties
    rules = ({"kind": "top", "column": "score", "fraction": 0.4}, {"kind": "random", "fraction": 0.5, "seed": 3},
             {"kind": "quota", "by": ["source"], "max_per_group": 20})
    params = SelectConfig(policies=[SelectPolicy(**r) for r in rules])
    whole = _decisions([batch], params, partitions=1)
    order = list(range(300))
    random.Random(5).shuffle(order)
    shuffled = batch[order]
    split = _decisions([shuffled[i:i + 70] for i in range(0, 300, 70)], params, partitions=3)
    assert whole.equals(split)
    assert 300 - whole.height == 40


def test_cutoffs_over_many_partitions_equal_one_sort_of_the_whole_corpus(monkeypatch):
    """The radix select (windows narrowed pass by pass, then a gather) against ranking every row at once: the same
    rows kept per rule, with ties, nulls, groups of different sizes, and rules that see only earlier survivors."""
    import numpy as np

    from tasks.stages.select import cutoffs

    monkeypatch.setattr(cutoffs, "GATHER", 50)  # force the histogram passes on a small corpus
    rng = np.random.default_rng(8)
    n = 6000
    batch = records(*[f"doc {i}" for i in range(n)]).with_columns(
        score=pl.Series(np.where(rng.random(n) < 0.05, np.nan, rng.integers(0, 40, n)).tolist()).fill_nan(None),
        quality=pl.Series(rng.normal(size=n)), label=pl.Series(rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1])))
    rules = [{"kind": "top", "column": "score", "fraction": 0.5}, {"kind": "quota", "by": ["label"],
                                                                  "balance": True, "column": "quality"},
             {"kind": "random", "k": 200, "seed": 4}]
    params = SelectConfig(policies=[SelectPolicy(**r) for r in rules])
    got = _decisions([batch[i:i + 700] for i in range(0, n, 700)], params, partitions=5)

    alive = batch.with_columns(tie0=pl.col("id").hash(seed=0), tie4=pl.col("id").hash(seed=4),
                               key4=pl.col("id").hash(seed=5))
    scored = alive.filter(pl.col("score").is_not_null())
    top = scored.sort(["score", "tie0"], descending=[True, False]).head(round(0.5 * scored.height))
    alive = alive.filter(pl.col("score").is_null() | pl.col("id").is_in(top["id"].implode()))
    cap = alive.group_by("label").len()["len"].min()
    alive = alive.sort(["quality", "tie0"], descending=[True, False]).group_by("label", maintain_order=True).head(cap)
    expected = set(alive.sort(["key4", "tie4"]).head(200)["id"])
    assert set(batch["id"]) - set(got["id"]) == expected
    assert got.group_by("reason").len().sort("reason").rows() == [
        ("select.quota", 3 * 0 + (batch.height - scored.height + top.height) - 3 * cap),
        ("select.random", 3 * cap - 200), ("select.top", scored.height - top.height)]


def test_a_selection_that_empties_a_class_or_keeps_nothing_fails_with_a_message():
    batch = frame(20)
    params = SelectConfig(policies=[SelectPolicy(kind="threshold", column="score", min=100, nulls="reject")])
    result = select.select_one_shard(batch, params)
    checks = select.rate_checks(result.stats, batch.height, params)
    failed = [c["message"] for c in checks if c["rate"] > c["max"]]
    assert "select would keep 0 of 20 rows: loosen the rules (select.threshold)" in failed
    assert any("select would remove every row of class label = a (10 rows in)" in m for m in failed)
    ok = SelectConfig(policies=[SelectPolicy(kind="quota", by=["label"], max_per_group=2)])
    res = select.select_one_shard(batch, ok)
    assert all(c["rate"] <= c["max"] for c in select.rate_checks(res.stats, 20, ok))
    merged = Stats.merge([res.stats, res.stats])
    assert select.summarize(merged, ok)["per_class"] == {"a": {"in": 20, "kept": 4}, "b": {"in": 20, "kept": 4}}


def test_bad_rules_are_refused_by_config_and_unknown_columns_named():
    with pytest.raises(ValueError, match="threshold needs `column` and `min` and/or `max`"):
        SelectPolicy(kind="threshold", column="score")
    with pytest.raises(ValueError, match="needs exactly one of `k` and `fraction`"):
        SelectPolicy(kind="random")
    with pytest.raises(ValueError, match="quota needs `by`"):
        SelectPolicy(kind="quota", by=["label"])
    params = SelectConfig(policies=[SelectPolicy(kind="threshold", column="score_quality", min=0.5)])
    with pytest.raises(ValueError, match="read column\\(s\\) score_quality, which the data does not have"):
        select.select_one_shard(frame(), params)


def test_the_stage_runs_through_the_flow_and_its_contract_names_the_emptied_class(prefect_server, tmp_path):
    from flows.curate import run_curate
    from tasks.runtime.contracts import ContractError

    data = tmp_path / "in.jsonl"
    rows = [{"text": f"example number {i} " + "x" * (i % 13), "label": "rare" if i < 5 else "common"}
            for i in range(60)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    good = tmp_path / "good.toml"
    good.write_text('[[select.policies]]\nkind = "quota"\nby = ["label"]\nbalance = true\n')
    run = run_curate([str(data)], str(tmp_path / "out"), str(good), run_id="sel", stages=["ingest", "select"])
    m = json.loads((tmp_path / "out" / "runs" / "sel" / "select" / "_manifest.json").read_text())
    assert (m["rows_in"], m["rows_out"], m["rejected_by_reason"]) == (60, 10, {"select.quota": 50})
    assert m["summary"]["per_class"] == {"common": {"in": 55, "kept": 5}, "rare": {"in": 5, "kept": 5}}
    assert run["status"] == "succeeded"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[select.policies]]\nkind = "longest"\nk = 20\n')  # the rare rows are the shortest
    with pytest.raises(ContractError, match="select would remove every row of class label = rare"):
        run_curate([str(data)], str(tmp_path / "out"), str(bad), run_id="sel-bad", stages=["ingest", "select"])


def test_k_center_greedy_covers_every_cluster_before_repeating_one():
    import numpy as np

    from tasks.stages.select.coreset import k_center_greedy

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 24))
    emb = np.concatenate([c + 0.05 * rng.normal(size=(50, 24)) for c in centers]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    picked = k_center_greedy(emb, 6, seed=1)
    assert sorted(set((picked // 50).tolist())) == list(range(6))  # one per cluster, the far ones first
    assert len(set(k_center_greedy(emb, 300).tolist())) == 300 and k_center_greedy(emb, 0).size == 0
    assert np.array_equal(k_center_greedy(emb, 20, seed=4), k_center_greedy(emb, 20, seed=4))


def test_k_center_rule_keeps_one_row_per_cluster_with_cover_distance_as_evidence():
    import numpy as np

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(3, 16))
    emb = np.concatenate([c + 0.02 * rng.normal(size=(6, 16)) for c in centers]).astype(np.float32)
    base = records(*[f"row {i}" for i in range(18)]).with_columns(
        embedding=pl.Series(emb.astype(np.float16), dtype=pl.Array(pl.Float16, 16)),
        cluster=pl.Series([i // 6 for i in range(18)]))
    unscored = records("no embedding").with_columns(embedding=pl.lit(None, pl.Array(pl.Float16, 16)),
                                                    cluster=pl.lit(9, pl.Int64)).with_columns(id=pl.lit("none"))
    batch = pl.concat([base, unscored])
    reasons, evidence = run(batch, {"kind": "k_center", "k": 3})
    kept = [i for i, r in reasons.items() if r is None]
    assert len(kept) == 4 and "none" in kept  # unscored rows are kept unless nulls = "reject"
    clusters = dict(zip(batch["id"], batch["cluster"], strict=True))
    assert sorted(clusters[i] for i in kept if i != "none") == [0, 1, 2]
    assert {r for r in reasons.values() if r} == {"select.k_center"}
    assert all(e["budget"] == 3 and e["candidates"] == 18 and 0 < e["cover_distance"] < 0.05
               for e in evidence.values())
    shuffled = batch.sample(fraction=1.0, shuffle=True, seed=1)
    assert run(shuffled, {"kind": "k_center", "k": 3})[0] == reasons  # rows, not their order, decide
    strict, _ = run(batch, {"kind": "k_center", "fraction": 0.5, "nulls": "reject"})
    assert strict["none"] == "select.k_center" and sum(r is None for r in strict.values()) == 9


def test_k_center_without_the_score_stage_in_the_run_names_what_is_missing(prefect_server, tmp_path):
    from flows.curate import run_curate

    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"example {i}"}) for i in range(10)) + "\n")
    cfg = tmp_path / "k.toml"
    cfg.write_text('[[select.policies]]\nkind = "k_center"\nk = 3\n')
    with pytest.raises(ValueError, match="select reads the embeddings of stage score .*put score before select"):
        run_curate([str(data)], str(tmp_path / "out"), str(cfg), run_id="k", stages=["ingest", "select"])
