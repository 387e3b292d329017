"""Cached model weights are hashed, and a broken score is a contract failure, not data (issue 24, item 6). Before
the fix, one byte changed in the converted safetensors cache gave NaN perplexities for every row, with exit 0."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from schemas.config import LanguageModelConfig
from tasks.models import loading


def test_a_changed_byte_in_the_lm_cache_is_found_and_the_cache_rebuilt(tmp_path, caplog):
    cfg = LanguageModelConfig(cache_dir=str(tmp_path / "cache"))
    shared = loading.lm_folder(LanguageModelConfig())  # the machine's conversion, copied: one conversion per test
    folder = loading.cache_root(cfg) / shared.name
    shutil.copytree(shared, folder)
    assert loading.lm_folder(cfg) == folder
    recorded = json.loads((folder / loading.CACHE_HASHES).read_text())
    assert set(recorded) >= {"model.safetensors", "config.json"}
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one mantissa bit: silent drift, or NaN, without the check
    weights.write_bytes(bytes(data))
    assert "model.safetensors does not match" in loading._cache_problem(folder)
    again = loading.lm_folder(cfg)
    assert again == folder and loading.sha256_file(weights) == recorded["model.safetensors"]
    assert "is damaged" in caplog.text
    (folder / loading.CACHE_HASHES).unlink()  # a cache written before hashes were recorded counts as damaged
    assert loading._cache_problem(folder) == f"no {loading.CACHE_HASHES}"  # (rebuilt by the same path as above)


def test_nan_scores_fail_the_score_contract(prefect_server, tmp_path, monkeypatch):
    from flows.curate import run_curate
    from tasks.models import embeddings
    from tasks.runtime.contracts import ContractError

    real = embeddings.embed

    def broken(texts, *args, **kwargs):  # what a damaged weight file does to a forward pass
        out = real(texts, *args, **kwargs)
        return np.full_like(out, np.nan) if len(texts) > 3 else out

    monkeypatch.setattr(embeddings, "embed", broken)
    monkeypatch.setenv("SLUICE_CACHE", str(tmp_path / "cache"))  # what a broken model embeds is never cached anyway
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": f"Document {i} talks about rivers, hills and the weather."}) + "\n"
                            for i in range(30)))
    cfg = tmp_path / "score.toml"
    cfg.write_text('[score]\ndevice = "cpu"\nperplexity = false\ncpu_precision = "float32"\n'
                   '[score.contamination]\nenabled = false\n')
    with pytest.raises(ContractError) as err:
        run_curate([str(data)], str(tmp_path / "out"), str(cfg), run_id="nan", stages=["ingest", "score"])
    assert "NaN or infinite" in str(err.value)
    failure = json.loads((tmp_path / "out" / "runs" / "nan" / "score" / "_contract_failure.json").read_text())
    assert failure["stats"]["counts"]["score.non_finite"] == 30


VERSE = "And I saw a new heaven and a new earth, for the first heaven was passed away."


def test_lm_loads_in_parallel_threads_each_get_every_weight():
    """Three loads of SmolLM2 at once (as when a stage's setup loads the LM in a thread while another loads): before
    loads were serialized, every try left `embed_tokens` initialized at random (the cache stores the tied weight as
    `lm_head.weight`), and the verse scored 4,000-13,000 instead of 49, with nothing raised."""
    from tasks.models import perplexity

    cfg, dev = LanguageModelConfig(), loading.device("cpu")
    alone = loading.load_lm(cfg, dev)
    expected = perplexity.nll([VERSE], *alone, cfg, dev)[0]
    loaded: list = [None] * 3

    def load(i: int) -> None:
        loaded[i] = loading.load_lm(cfg, dev)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for model, tokenizer in loaded:
        assert model.model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()  # still tied
        assert np.allclose(perplexity.nll([VERSE], model, tokenizer, cfg, dev)[0], expected)
    assert 20 < np.exp(expected[0]) < 200


def test_a_checkpoint_without_a_weight_is_refused(tmp_path):
    """transformers fills a weight missing from the checkpoint at random and only logs it; Sluice refuses it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    cached = loading.lm_folder(LanguageModelConfig())
    folder = tmp_path / "lm"
    shutil.copytree(cached, folder, ignore=shutil.ignore_patterns("model.safetensors", loading.CACHE_HASHES))
    with safe_open(cached / "model.safetensors", "pt") as weights:
        kept = {k: weights.get_tensor(k) for k in weights.keys() if k != "model.norm.weight"}  # noqa: SIM118
    save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(loading.ModelError, match="loaded without its weights model.norm.weight"):
        loading.load_lm(LanguageModelConfig(path=str(folder), sha256={}), loading.device("cpu"))
