"""The `curate` flow: composes stages; no data logic lives here."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from datetime import UTC, datetime

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from schemas.config import load_config
from tasks import prefect_tasks as pt
from tasks import registry
from tasks.contracts import ContractError, Contracts, close_contracts, contracts_for
from tasks.io.storage import Storage
from tasks.locks import DatasetLock
from tasks.replay import carried_receipt, replay_batch
from tasks.report import markdown_summary, write_report
from tasks.runner import (
    CODE_VERSION,
    RunContext,
    committed_manifest,
    map_shards,
    new_run_id,
    params_of,
    slug,
    stage_fingerprint,
)


class _PrefectLogBridge(logging.Handler):
    """Forward the runner's `sluice` logger into the Prefect run logger, so progress shows in the Prefect UI."""

    def __init__(self, target: logging.LoggerAdapter):
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.log(record.levelno, record.getMessage())


def _previous_manifest(ctx: RunContext, before: str) -> dict:
    """Input of a stage run on its own (--stages): the latest committed stage before it in pipeline order."""
    for name in reversed(registry.ORDER[: registry.ORDER.index(before)]):
        manifest = ctx.storage.read_json_if_exists(ctx.rel(name, "_manifest.json"))
        if manifest:
            return manifest
    raise ValueError(f"stage {before} needs the output of an earlier stage, and run {ctx.run_id} has none committed")


def _run_replayed_stage(ctx: RunContext, stage, replay: dict, contracts: Contracts, started: float) -> dict:
    """The first stage of a replay run: the original kept rows (carried) plus the replayed rows, run again."""
    params = params_of(stage.params(ctx.config))
    rel = ctx.rel("_replay", f"{stage.name}.parquet")
    if ctx.storage.exists(rel):  # resumed: the replay input was fixed when the run started
        batch = ctx.storage.read_parquet(rel)
        original = ctx.storage.read_json(f"runs/{replay['run_id']}/{stage.name}/_manifest.json")
    else:
        batch, original = replay_batch(ctx.storage, replay["run_id"], stage, replay["reason"], ctx.config.ingest,
                                       ctx.s3_options)
    obj = ctx.storage.write_parquet(rel, batch).as_dict()
    get_run_logger().info(f"{stage.name}: replaying {batch.height} row(s) of run {replay['run_id']} with reason "
                          f"{replay['reason']!r}, on top of its {original['rows_out']} kept row(s)")
    stage_inputs = [*original["outputs"], obj]
    manifest = committed_manifest(ctx, stage.name, stage_fingerprint(ctx, stage.name, stage_inputs, params))
    if manifest is not None:
        return manifest
    future = pt.map_shard.with_options(retries=ctx.config.runner.retries).submit(ctx, stage, "replay-00000", obj)
    receipts = [carried_receipt(original), future.result()]
    suite = stage.suite_for(stage.params(ctx.config))
    return pt.commit_stage(ctx, stage.name, suite, receipts, stage_inputs, params, contracts, started,
                           {"replay_of": replay})


def _run_stage(ctx: RunContext, stage, inputs: list[str], previous: dict | None, contracts: Contracts,
               started: float) -> dict:
    """Map the stage's shard tasks, then the commit task; a stage already committed for these inputs is skipped."""
    params = params_of(stage.params(ctx.config))
    retries = ctx.config.runner.retries
    if stage.kind == "source":
        files = pt.list_inputs(inputs, ctx.s3_options)
        get_run_logger().info(f"{stage.name}: {len(files)} input file(s)")
        stage_inputs = [f.as_dict() for f in files]
    else:
        source = previous or _previous_manifest(ctx, stage.name)
        stage_inputs = source["outputs"]
    manifest = committed_manifest(ctx, stage.name, stage_fingerprint(ctx, stage.name, stage_inputs, params))
    if manifest is not None:
        get_run_logger().info(f"{stage.name}: already committed for these inputs and params, skipped")
        return manifest
    if stage.kind == "source":
        futures = pt.ingest_file.with_options(retries=retries).map(ctx, stage, list(range(len(files))), files)
        receipts = [r for fut in futures for r in fut.result()]
    elif stage.kind == "global":
        shards = map_shards(source)
        names, objs = [s for s, _ in shards], [o for _, o in shards]
        features = pt.global_features.with_options(retries=retries).map(ctx, stage, names, objs)
        decisions = pt.global_decide(ctx, stage, [f.result() for f in features])
        futures = pt.map_shard.with_options(retries=retries).map(ctx, stage, names, objs, unmapped(decisions))
        receipts = [f.result() for f in futures]
    else:
        shards = map_shards(source)
        futures = pt.map_shard.with_options(retries=retries).map(
            ctx, stage, [s for s, _ in shards], [o for _, o in shards]
        )
        receipts = [f.result() for f in futures]
    suite = stage.suite_for(stage.params(ctx.config))
    return pt.commit_stage(ctx, stage.name, suite, receipts, stage_inputs, params, contracts, started)


@flow(name="curate", flow_run_name="curate-{run_id}", validate_parameters=True)
def curate(inputs: list[str], output: str, config_path: str | None = None, run_id: str | None = None,
           stages: list[str] | None = None, replay: dict | None = None) -> dict:
    """Run the selected stages over `inputs`, committing each stage under `<output>/runs/<run_id>/`.

    Parameters are plain strings (a config *path*, never its contents; secrets in it are references), so no
    credential ever reaches the Prefect API. `replay` = {run_id, stage, reason}: the first stage re-runs those
    quarantined rows of that run on top of its kept rows (tasks/replay.py).
    """
    logger = get_run_logger()
    bridge = _PrefectLogBridge(logger)
    sluice_log = logging.getLogger("sluice")
    sluice_log.addHandler(bridge)
    sluice_log.setLevel(logging.INFO)
    propagate, sluice_log.propagate = sluice_log.propagate, False
    cfg = load_config(config_path)
    names = registry.select(stages or cfg.stages)
    run_id = run_id or new_run_id()
    s3 = cfg.storage.s3_options()
    ctx = RunContext(Storage(output, s3), run_id, cfg, s3)
    run = {
        "run_id": run_id,
        "status": "running",
        "inputs": inputs,
        "stages": names,
        **({"replay_of": replay} if replay else {}),
        "config": cfg.model_dump(mode="json"),
        "code_version": CODE_VERSION,
        "started_at": datetime.now(UTC).isoformat(),
        "timings": {},
    }
    ctx.storage.write_json(ctx.rel("run.json"), run)
    logger.info(f"run {run_id}: stages {', '.join(names)} -> {ctx.storage.uri(ctx.rel())}")
    contracts = contracts_for(run_id)
    manifests: list[dict] = []
    previous: dict | None = None
    lock = None
    try:
        if registry.SINK in names:
            from prefect.runtime import flow_run

            lock = DatasetLock(ctx.storage, cfg.publish.dataset, run_id, cfg.runner.lock_ttl_seconds,
                               flow_run.name or None)
            lock.acquire()
        for name in names:
            started = time.perf_counter()
            if replay and name == replay["stage"]:
                manifest = _run_replayed_stage(ctx, registry.STAGES[name], replay, contracts, started)
                previous = manifest
            elif name == registry.SINK:
                source = previous or _previous_manifest(ctx, name)
                manifest = pt.publish(ctx, source, manifests, contracts)
                run["published"] = {k: manifest[k] for k in ("dataset", "version", "uri")}
            else:
                manifest = _run_stage(ctx, registry.STAGES[name], inputs, previous, contracts, started)
                previous = manifest
            manifests.append(manifest)
            run["timings"][name] = round(time.perf_counter() - started, 3)
        run["status"] = "succeeded"
    except ContractError as exc:
        run["status"], run["error"] = "failed", str(exc)
        raise
    except Exception as exc:
        run["status"], run["error"] = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if lock is not None:
            lock.release()
        run["finished_at"] = datetime.now(UTC).isoformat()
        run["manifests"] = [{k: m[k] for k in ("stage", "rows_in", "rows_out", "rows_rejected")} for m in manifests]
        ctx.storage.write_json(ctx.rel("run.json"), run)
        run["report"] = write_report(ctx, run, manifests, contracts)
        ctx.storage.write_json(ctx.rel("run.json"), run)
        close_contracts(run_id)
        contracts.close()
        try:
            create_markdown_artifact(key=f"sluice-run-{slug(run_id)}", markdown=markdown_summary(run, manifests),
                                     description=f"Sluice run {run_id}")
        except Exception as exc:  # the artifact is a convenience; the report on storage is the record
            logger.warning(f"could not create the run artifact: {exc}")
        sluice_log.removeHandler(bridge)
        sluice_log.propagate = propagate
    return run


def _api_url_for_workers() -> str:
    """The API that Dask worker processes report task runs to. Without PREFECT_API_URL this process runs Prefect's
    embedded server; it is started here so that workers share it instead of each starting its own (~30 s each)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start(timeout=90)
        url = server.api_url
    return url


def task_runner(kind: str, workers: int, dask_address: str | None = None):
    """Threads in this process, or a Dask cluster through prefect-dask (a LocalCluster of `workers` processes when
    no scheduler address is given). Shard outputs do not depend on where a shard ran. Workers of an existing cluster
    must reach the same Prefect API as this process (set PREFECT_API_URL on them)."""
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None,
                                              "env": {"PREFECT_API_URL": _api_url_for_workers()}})
    return ThreadPoolTaskRunner(max_workers=workers)


def run_curate(inputs: list[str], output: str, config_path: str | None = None, run_id: str | None = None,
               stages: list[str] | None = None, workers: int | None = None, runner: str | None = None,
               dask_address: str | None = None, replay: dict | None = None) -> dict:
    """Entry point for the CLI: picks the task runner (config, overridden by arguments) and runs the flow."""
    cfg = load_config(config_path)
    n = workers or cfg.runner.workers
    run_id = run_id or new_run_id()
    kind = runner or cfg.runner.kind
    address = dask_address or cfg.runner.dask_address
    runner_ = task_runner(kind, n, address)
    api = nullcontext()
    if kind == "dask" and not address:  # this process reports to the API its LocalCluster workers were given
        from prefect.settings import PREFECT_API_URL, temporary_settings

        api = temporary_settings({PREFECT_API_URL: runner_.cluster_kwargs["env"]["PREFECT_API_URL"]})
    with api:
        return curate.with_options(task_runner=runner_)(
            inputs=inputs, output=output, config_path=config_path, run_id=run_id, stages=stages, replay=replay
        )
