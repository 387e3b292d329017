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
        assert set(dep.get("parameters", {})) <= accepted, dep["name"]
        required = {n for n, p in inspect.signature(flow.fn).parameters.items() if p.default is p.empty}
        assert required <= set(dep.get("parameters", {})), dep["name"]
