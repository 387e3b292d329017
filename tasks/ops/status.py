"""`sluice status`: what is deployed and scheduled (from the Prefect API), what was published (from storage)."""

from __future__ import annotations

from tasks.io import layout
from tasks.io.locks import current, is_live
from tasks.io.storage import Storage
from tasks.ops.diff import published_versions, version_manifest
from tasks.ops.retrain_hook import outcomes


def _schedule_text(deployment) -> str:
    parts = []
    for s in deployment.schedules or []:
        sched = s.schedule
        if getattr(sched, "cron", None):
            parts.append(f"cron '{sched.cron}' {getattr(sched, 'timezone', '') or ''}".strip())
        elif getattr(sched, "interval", None):
            parts.append(f"every {int(sched.interval.total_seconds())}s")
        else:
            parts.append(type(sched).__name__)
    return "; ".join(parts) or "-"


def prefect_status(limit: int = 10) -> dict:
    """Deployments (schedule, triggers, next run) and recent flow runs; {'error': ...} when the API is unreachable."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL

    try:
        with get_client(sync_client=True) as client:
            flows = {f.id: f.name for f in client.read_flows()}
            deployments = []
            for d in client.read_deployments():
                upcoming = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
                automations = client.read_resource_related_automations(f"prefect.deployment.{d.id}")
                deployments.append({
                    "name": f"{flows.get(d.flow_id, '?')}/{d.name}",
                    "schedule": _schedule_text(d),
                    "triggers": [a.name for a in automations],
                    "paused": bool(d.paused),
                    "next_run": upcoming[0].expected_start_time.isoformat() if upcoming else None,
                })
            runs = [{"name": r.name, "flow": flows.get(r.flow_id, "?"), "state": r.state_name,
                     "start": r.start_time.isoformat() if r.start_time else None,
                     "expected": r.expected_start_time.isoformat() if r.expected_start_time else None}
                    for r in client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit * 3)
                    if r.state_type != StateType.SCHEDULED][:limit]
    except Exception as exc:
        return {"api": PREFECT_API_URL.value() or "(embedded)", "error": f"{type(exc).__name__}: {exc}"}
    return {"api": PREFECT_API_URL.value() or "(embedded)", "deployments": deployments, "runs": runs}


def _lease(storage: Storage, dataset: str) -> dict | None:
    """The dataset's lease, when one is held or was left behind: who, generation, and whether it still binds."""
    holder = current(storage, layout.dataset_lock_dir(dataset))
    if holder is None or holder.get("released"):
        return None
    return {"run_id": holder["run_id"], "generation": holder["generation"], "expires_at": holder["expires_at"],
            "state": "held" if is_live(holder) else "stale (its holder died; the next run takes it over)"}


def storage_status(storage: Storage) -> dict:
    """Last published version of each dataset, with its size, diff and latest retrain outcome, and any lease held
    or left behind (also on a dataset with no published version yet)."""
    datasets = {}
    for name in storage.listdir(layout.DATASETS):
        versions = published_versions(storage, name)
        lease = _lease(storage, name)
        if not versions:
            if lease:
                datasets[name] = {"version": None, "lease": lease}
            continue
        m = version_manifest(storage, name, versions[-1])
        diff = storage.read_json_if_exists(layout.version_diff(name, versions[-1])) or {}
        retrains = outcomes(storage.child(layout.version_dir(name, versions[-1])))
        datasets[name] = {"version": versions[-1], "rows": m.rows_out,
                          "published_at": (m.published or {}).get("published_at"), "run_id": m.run_id,
                          "changed_fraction": diff.get("changed_fraction"),
                          "retrain": retrains[-1]["status"] if retrains else None, "lease": lease}
    return {"root": storage.root, "datasets": datasets}


def print_status(api: dict, store: dict | None) -> None:
    print(f"Prefect API: {api['api']}")
    if "error" in api:
        print(f"  unreachable: {api['error']}")
    else:
        print("\ndeployments:" if api["deployments"] else "\ndeployments: none (register with `sluice deploy`)")
        for d in api["deployments"]:
            paused = " (paused)" if d["paused"] else ""
            trig = f"  triggers: {', '.join(d['triggers'])}" if d["triggers"] else ""
            print(f"  {d['name']:<22} {d['schedule']:<28} next: {d['next_run'] or '-'}{paused}{trig}")
        print("\nrecent flow runs:" if api["runs"] else "\nrecent flow runs: none")
        for r in api["runs"]:
            print(f"  {r['flow']:<10} {r['name']:<44} {r['state']:<12} {r['start'] or r['expected'] or ''}")
    if store is not None:
        print(f"\ndatasets under {store['root']}:" if store["datasets"] else f"\nno published datasets under "
              f"{store['root']}")
        for name, d in store["datasets"].items():
            lease = d["lease"]
            lock = f"  LOCKED by run {lease['run_id']} ({lease['state']})" if lease else ""
            if d["version"] is None:
                print(f"  {name:<20} no published version{lock}")
                continue
            changed = "-" if d["changed_fraction"] is None else f"{d['changed_fraction']:.2%}"
            print(f"  {name:<20} v{d['version']:<4} {d['rows']:>10,} rows  published {d['published_at']}  "
                  f"changed {changed}  retrain {d['retrain'] or '-'}{lock}")
