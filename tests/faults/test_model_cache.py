"""Cached model weights are hashed, and a broken score is a contract failure, not data (issue 24, item 6). Before
the fix, one byte changed in the converted safetensors cache gave NaN perplexities for every row, with exit 0."""

from __future__ import annotations

import json

import numpy as np
import pytest

from schemas.config import LanguageModelConfig
from tasks.models import loading


def test_a_changed_byte_in_the_lm_cache_is_found_and_the_cache_rebuilt(tmp_path, caplog):
    cfg = LanguageModelConfig(cache_dir=str(tmp_path / "cache"))
    folder = loading.lm_folder(cfg)
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
