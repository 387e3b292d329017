"""Every registered stage brings what the runner and a reader need: a declaration, a suite, a params model, a row
in the README's stage table and a unit test of the stage function alone (tests/judge.py)."""

from __future__ import annotations

import re

import polars as pl
import pytest
from conftest import REPO
from pydantic import BaseModel

from schemas.config import SluiceConfig
from schemas.expectations import columns_of, load_suite
from tasks.runtime.registry import DEFAULT_PIPELINE, ORDER, STAGES

README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_conforms(name):
    stage = STAGES[name]
    assert stage.name == name and stage.description
    assert stage.kind in ("source", "map", "global", "sink") and stage.resources in ("cpu", "gpu")
    assert (stage.plan is not None) == (stage.kind == "global")
    assert (stage.sink is not None) == (stage.kind == "sink")
    params = stage.params(SluiceConfig())
    assert isinstance(params, BaseModel), f"{name}: params must be a pydantic model of the config"
    for dtype in [*stage.requires.values(), *stage.adds.values()]:
        assert isinstance(dtype, pl.DataType)
    suite = load_suite(stage.suite_for(params))
    assert suite["expectations"], f"{name}: an empty suite states nothing"
    assert not stage.missing_packages()
    unknown = [c for c in columns_of(suite) if c not in (*stage.adds, "id", "text", "content_sha256", "source",
                                                            "src_file", "src_line", "timestamp")]
    assert not unknown, f"{name}: suite names columns the stage neither adds nor inherits: {unknown}"
    assert re.search(rf"^\| `{re.escape(name)}` \|", README, re.M), f"README's stage table has no row for {name}"
    test_file = REPO / "tests" / f"test_{name}.py"
    assert test_file.exists(), f"no tests/{test_file.name}"
    assert re.search(rf"judge\(\s*\"{re.escape(name)}\"", test_file.read_text()), \
        f"tests/{test_file.name} has no judge(\"{name}\", ...) test of the stage function alone"


def test_registry_is_the_one_stage_order():
    assert [n for n in ORDER if n in DEFAULT_PIPELINE] == DEFAULT_PIPELINE
    assert ORDER[0] == "ingest" and STAGES[ORDER[-1]].kind == "sink"


@pytest.mark.parametrize("name", [n for n in STAGES if STAGES[n].kind != "source"])
def test_every_stage_takes_an_empty_shard(name):
    """A shard with no rows (a filter upstream took them all) is a shard: nothing kept, nothing rejected, no error."""
    from judge import records
    from judge import run as run_stage

    result = run_stage(name, records())
    assert (result.kept.height, result.rejected.height, result.rows_synthetic) == (0, 0, 0)
