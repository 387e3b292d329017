"""The three deployments, built from one config: `curate/nightly`, `watch/new-data`, `retrain/on-publish`.

`sluice deploy` registers them (served by `sluice serve`, or by a process work pool's worker with `--pool`);
infra/prefect.yaml declares the same three for `prefect deploy --all`. Entrypoints are module paths, so the process
that runs a flow needs the installed package, not a particular working directory.
"""

from __future__ import annotations

from pathlib import Path

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron, Interval

from flows.curate import curate
from flows.retrain import retrain
from flows.watch import watch
from schemas.config import ConfigError, load_config
from tasks.ops.announce import EVENT

RETRAIN_PARAMETERS = {
    "dataset": "{{ event.payload.dataset }}",
    "version": "{{ event.payload.version }}",
    "uri": "{{ event.payload.uri }}",
}


def retrain_trigger(config_path: str | None) -> DeploymentEventTrigger:
    """Fires on every publish the publisher judged worth retraining (label `sluice.retrain`, set from the diff)."""
    return DeploymentEventTrigger(
        name="retrain-on-publish",
        expect={EVENT},
        match={"sluice.retrain": "true"},
        parameters={**RETRAIN_PARAMETERS, "config_path": config_path},
    )


def build_deployments(config_path: str | None) -> list[RunnerDeployment]:
    cfg = load_config(config_path)
    d = cfg.deploy
    if not d.inputs or not d.output:
        raise ConfigError(f"config {config_path}: [deploy] needs `inputs` and `output` for curate/nightly and "
                          "watch/new-data")
    path = str(Path(config_path).resolve()) if config_path else None
    params = {"inputs": d.inputs, "output": d.output, "config_path": path}
    common = {"entrypoint_type": EntrypointType.MODULE_PATH, "tags": ["sluice"]}
    return [
        curate.to_deployment(name="nightly", schedules=[Cron(d.cron, timezone=d.timezone)], parameters=params,
                             description=f"curate {', '.join(d.inputs)} -> {d.output} on cron '{d.cron}'",
                             concurrency_limit=1, **common),
        watch.to_deployment(name="new-data", schedules=[Interval(d.watch_interval_seconds)], parameters=params,
                            description=f"poll {', '.join(d.inputs)} every {d.watch_interval_seconds}s; curate "
                            "new objects only", concurrency_limit=1, **common),
        retrain.to_deployment(name="on-publish", triggers=[retrain_trigger(path)],
                              description=f"run the retrain hook on {EVENT}", **common),
    ]


def register(config_path: str | None, work_pool: str | None = None) -> list[str]:
    names = []
    for deployment in build_deployments(config_path):
        deployment.apply(work_pool_name=work_pool)
        names.append(f"{deployment.flow_name}/{deployment.name}")
    return names


def serve_all(config_path: str | None) -> None:
    """Register and run the deployments in this process until interrupted (one machine, no work pool)."""
    from prefect import serve

    serve(*build_deployments(config_path), print_starting_message=True)
