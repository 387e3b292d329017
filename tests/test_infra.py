"""infra/prefect.yaml stays deployable: every entrypoint loads, and its parameters match the flow's signature."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

REPO = Path(__file__).resolve().parent.parent


def test_deployments_point_at_real_flows_with_valid_parameters(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        flow = load_flow_from_entrypoint(dep["entrypoint"])
        accepted = set(inspect.signature(flow.fn).parameters)
        given = set(dep.get("parameters", {}))
        for trigger in dep.get("triggers", []):
            assert set(trigger["parameters"]) <= accepted, dep["name"]
            given |= set(trigger["parameters"])
        assert given <= accepted, dep["name"]
        required = {n for n, p in inspect.signature(flow.fn).parameters.items() if p.default is p.empty}
        assert required <= given, dep["name"]


def test_scheduled_and_triggered_deployments_are_declared():
    from tasks.ops.announce import EVENT

    spec = {d["name"]: d for d in yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())["deployments"]}
    assert spec["nightly"]["entrypoint"] == "flows/curate.py:curate" and spec["nightly"]["schedules"][0]["cron"]
    assert spec["new-data"]["entrypoint"] == "flows/watch.py:watch" and spec["new-data"]["schedules"][0]["interval"]
    [trigger] = spec["on-publish"]["triggers"]
    assert trigger["expect"] == [EVENT] and trigger["match"] == {"sluice.retrain": "true"}


def test_the_readme_opens_with_the_product_and_keeps_history_in_the_changelog():
    """The first screen says what Sluice is, for whom, and the two commands; issue numbers live in CHANGELOG.md."""
    import re

    readme = (REPO / "README.md").read_text()
    first = "\n".join(readme.splitlines()[:20])
    assert "curates training data" in first and "engineers" in first
    assert re.search(r"^make run\s+#", first, re.M) and re.search(r"^make test\s+#", first, re.M)
    history = re.findall(r".{30}\b(?:issues? \d+|#\d+\b).{0,30}", readme)
    assert history == [], history
    assert "(issue 26)" in (REPO / "CHANGELOG.md").read_text()
