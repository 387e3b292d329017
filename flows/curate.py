"""The `curate` flow: composes stages; no data logic lives here (that is tasks/runtime/)."""

from __future__ import annotations

import logging
import re
import time
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, tags
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.task_runners import ThreadPoolTaskRunner

from schemas.config import load_config, redact_url
from tasks.io import layout
from tasks.io.interrupt import Interrupted, request_stop, shielded
from tasks.io.locks import FencedLock, dataset_lock, run_lock
from tasks.io.manifests import StageManifest
from tasks.io.readers import resolve_inputs
from tasks.io.storage import Storage, check_uri
from tasks.ops.announce import announce_version
from tasks.ops.report import markdown_summary, write_report
from tasks.ops.report.card import summary_rows
from tasks.runtime import lifecycle, registry
from tasks.runtime.context import RunContext
from tasks.runtime.contracts import ContractError, close_contracts, contracts_for
from tasks.runtime.fingerprints import CODE_VERSION, new_run_id
from tasks.runtime.prefect_tasks import run_replayed_stage, run_stage


class _PrefectLogBridge(logging.Handler):
    """Forward the runner's `sluice` logger into the Prefect run logger, so progress shows in the Prefect UI."""

    def __init__(self, target: logging.LoggerAdapter):
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.log(record.levelno, record.getMessage())


def _artifact_key(dataset: str) -> str:
    """One key per dataset, so Prefect keeps every run's summary as the history of one artifact (the run id is in
    the description). Prefect artifact keys allow lowercase letters, digits and dashes."""
    return "sluice-" + re.sub(r"[^a-z0-9-]+", "-", dataset.lower()).strip("-")[:60]


@contextmanager
def _sluice_logs_to_prefect():
    """The runtime logs to the `sluice` logger; inside a flow run those lines go to Prefect (UI, API) instead."""
    bridge = _PrefectLogBridge(get_run_logger())
    sluice_log = logging.getLogger("sluice")
    sluice_log.addHandler(bridge)
    sluice_log.setLevel(logging.INFO)
    propagate, sluice_log.propagate = sluice_log.propagate, False
    try:
        yield
    finally:
        sluice_log.removeHandler(bridge)
        sluice_log.propagate = propagate


def _leases(ctx: RunContext, names: list[str]) -> list[FencedLock]:
    """Every run holds its run id (one process per run id); a run that publishes also holds its dataset, and the
    sink may commit only under that lease's generation (tasks/io/locks.py)."""
    from prefect.runtime import flow_run

    ttl, name = ctx.config.runner.lock_ttl_seconds, flow_run.name or None
    leases = [run_lock(ctx.storage, ctx.run_id, ttl, name)]
    if set(names) & set(registry.SINKS):
        leases.append(dataset_lock(ctx.storage, ctx.config.publish.dataset, ctx.run_id, ttl, name))
    return leases


def _quietly(what: str, fn, *args) -> None:
    """Cleanup after a failure must never hide the failure: its own errors are logged, not raised."""
    try:
        fn(*args)
    except Exception as exc:
        logging.getLogger("sluice").warning(f"{what} failed during cleanup: {type(exc).__name__}: {exc}")


def _finish(ctx: RunContext, run: dict, manifests: list) -> None:
    """Record the outcome (run.json, report, artifact) whether the run succeeded or not."""
    run["finished_at"] = datetime.now(UTC).isoformat()
    run["manifests"] = [{"stage": m.stage, "rows_in": m.rows_in, "rows_out": m.rows_out,
                         "rows_rejected": m.rows_rejected, "rows_synthetic": m.rows_synthetic,
                         "note": (m.summary or {}).get("note")} for m in manifests]
    ctx.storage.write_json(layout.run_json(ctx.run_id), run)
    contracts = close_contracts(ctx.run_id)
    run["report"] = write_report(ctx, run, manifests, contracts)
    ctx.storage.write_json(layout.run_json(ctx.run_id), run)
    if contracts is not None:
        contracts.close()
    try:
        key = _artifact_key(ctx.config.publish.dataset)
        create_markdown_artifact(key=key, markdown=markdown_summary(run, manifests),
                                 description=f"Sluice run {ctx.run_id}")
        create_table_artifact(key=f"{key}-counts", table=summary_rows(manifests),
                              description=f"Rows in, out and quarantined per stage, run {ctx.run_id}")
        create_link_artifact(key=f"{key}-report", link=_link(run["report"]), link_text=f"report of {ctx.run_id}",
                             description="report/index.html: charts of what the run did to the data")
    except Exception as exc:  # the artifacts are a convenience; the report on storage is the record
        get_run_logger().warning(f"could not create the run artifacts: {exc}")


def _absolute(uri: str) -> str:
    """A local path as an absolute one in the flow run's parameters, so a rerun from the Prefect UI (or from
    another folder) reads and writes the same place; URLs (s3://) pass as they are."""
    return uri if "://" in uri else str(Path(uri).expanduser().absolute())


def _link(uri: str) -> str:
    return uri if "://" in uri else Path(uri).as_uri()


def _progress(artifact_id, done: int, total: int) -> None:
    """The flow run's progress artifact (per stage, not per shard: one API call per stage)."""
    if artifact_id is None:
        return
    try:
        update_progress_artifact(artifact_id=artifact_id, progress=100.0 * done / max(total, 1))
    except Exception as exc:
        get_run_logger().warning(f"could not update the progress artifact: {exc}")


@flow(name="curate", flow_run_name="curate-{run_id}", validate_parameters=True)
def curate(inputs: list[str], output: str, config_path: str | None = None, run_id: str | None = None,
           stages: list[str] | None = None, replay: dict | None = None, limit: int | None = None,
           publish_mode: str | None = None, trial: bool = False, publish: bool = False) -> dict:
    """Run the selected stages over `inputs`, committing each stage under `<output>/runs/<run_id>/`.

    Parameters are plain strings (a config *path*, never its contents; secrets in it are references), so no
    credential ever reaches the Prefect API. `replay` = {run_id, stage, reason}: the first stage re-runs those
    quarantined rows of that run on top of its kept rows (tasks/ops/replay.py). `limit`: read only the first N
    input rows (sets ingest.limit_rows, so it is part of the fingerprints and run.json's config). `publish_mode`
    overrides publish.mode ('auto' resolves to replace here; the watch flow asks for append). A trial run (`limit`,
    `ingest.limit_rows` or `trial`) runs every stage but the sink, unless `publish` asks for it: a sample of the
    input must not become a dataset version that retrains a model.
    """
    config = with_publish_mode(with_limit(load_config(config_path), limit), publish_mode)
    names = registry.preflight(config, stages)
    trial = trial or bool(config.ingest.limit_rows)
    held_back = [n for n in names if trial and not publish and registry.STAGES[n].kind == "sink"]
    names = [n for n in names if n not in held_back]
    run_id = run_id or new_run_id()
    s3 = config.storage.s3_options()
    ctx = RunContext(Storage(output, s3), run_id, config, s3)
    run = {"run_id": run_id, "status": "running", "inputs": [redact_url(u) for u in inputs], "stages": names,
           **({"replay_of": replay} if replay else {}), "config": config.model_dump(mode="json"),
           **({"trial": {"limit_rows": config.ingest.limit_rows, "published": not held_back}} if trial else {}),
           "code_version": CODE_VERSION, "started_at": datetime.now(UTC).isoformat(), "timings": {}}
    with _sluice_logs_to_prefect():
        leases = _leases(ctx, names)
        leases[0].acquire()  # before run.json: a second process with this run id must not touch it
        manifests: list = []
        try:
            ctx.storage.write_json(layout.run_json(run_id), run)
            get_run_logger().info(f"run {run_id}: stages {', '.join(names)} -> "
                                  f"{ctx.storage.uri(layout.run_dir(run_id))}")
            if held_back:
                get_run_logger().warning(
                    f"trial run ({_trial_words(config)}): {', '.join(held_back)} skipped, nothing is published and "
                    "no retrain event fires; add --publish to publish it")
            contracts = contracts_for(run_id)
            for lease in leases[1:]:
                lease.acquire(wait_seconds=lock_wait_seconds(config))
                ctx.fence = {"folder": lease.folder, "generation": lease.generation, "what": lease.what}
            run["setup_seconds"] = {"great_expectations": contracts.ready()}  # not any stage's time
            previous = None
            try:
                progress = create_progress_artifact(progress=0.0, description=f"stages of run {run_id} done")
            except Exception:  # noqa: BLE001 - a convenience, as the other artifacts
                progress = None
            for done, name in enumerate(names):
                started = time.perf_counter()
                for lease in leases:
                    lease.check()
                stage = registry.STAGES[name]
                with tags(f"stage:{name}"):
                    if replay and name == replay["stage"]:
                        previous = run_replayed_stage(ctx, stage, replay, contracts)
                    else:
                        previous = run_stage(ctx, stage, inputs, previous, contracts)
                _progress(progress, done + 1, len(names))
                if previous.published:  # a version was committed: its card, diff and event follow
                    announce_version(ctx.storage, ctx.config, previous.published["dataset"],
                                     previous.published["version"], run_id, fence=ctx.check_fence)
                    run["published"] = {k: previous.published[k] for k in ("dataset", "version")} | {
                        "uri": ctx.storage.uri(previous.published["path"])} | (
                        {"tokens": previous.published["tokens"]["tokens"]} if previous.published.get("tokens") else {})
                manifests.append(previous)
                run["timings"][name] = round(time.perf_counter() - started, 3)
            run["status"] = "succeeded"
        except Interrupted as exc:
            request_stop()
            run["status"], run["error"] = "interrupted", str(exc)
            raise
        except ContractError as exc:
            run["status"], run["error"] = "failed", str(exc)
            failed = ctx.storage.read_record_if_exists(StageManifest, layout.contract_failure(run_id, exc.stage))
            if failed is not None:  # the report shows what the failed stage found (the audit's findings)
                manifests.append(failed)
            raise
        except Exception as exc:
            run["status"], run["error"] = "failed", f"{type(exc).__name__}: {exc}"
            raise
        except BaseException as exc:  # KeyboardInterrupt, or Prefect's TerminationSignal on SIGTERM
            request_stop()  # shard tasks in worker threads stop at their next block
            run["status"], run["error"] = "interrupted", f"{type(exc).__name__}: {exc or 'a signal'}"
            raise
        finally:
            with shielded():
                for lease in reversed(leases[1:]):
                    _quietly(f"releasing the lease on {lease.what}", lease.release)
                _quietly("writing run.json and the report", _finish, ctx, run, manifests)
                _quietly(f"releasing the lease on {leases[0].what}", leases[0].release)
    return run


def _trial_words(config) -> str:
    return f"the first {config.ingest.limit_rows:,} rows" if config.ingest.limit_rows else "--dry-run"


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
        # each worker process is one slot for a gpu stage's task (tasks/runtime/prefect_tasks.py asks for `GPU`)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None, "resources": {"GPU": 1},
                                              "env": {"PREFECT_API_URL": _api_url_for_workers()}})
    return ThreadPoolTaskRunner(max_workers=workers)


def with_limit(config, limit: int | None):
    if not limit:
        return config
    return config.model_copy(update={"ingest": config.ingest.model_copy(update={"limit_rows": limit})})


def with_publish_mode(config, mode: str | None):
    """Resolve publish.mode for this run ('auto' is replace unless the caller, e.g. watch, asks for append)."""
    mode = mode if mode and mode != "auto" else config.publish.mode
    mode = "replace" if mode == "auto" else mode
    return config.model_copy(update={"publish": config.publish.model_copy(update={"mode": mode})})


def lock_wait_seconds(config) -> float:
    """An append run waits for the run ahead of it on the dataset (increments publish in order); a replace run
    fails fast, as a full recompute racing another is a mistake to surface."""
    if config.runner.lock_wait_seconds is not None:
        return config.runner.lock_wait_seconds
    return 1800 if config.publish.mode == "append" else 0


def _preload_models(config, names: list[str]) -> None:
    """The first model stage's models load in this process while the stages before it run (the local runner
    runs every shard here; Dask workers load their own)."""
    for name in names[1:]:
        stage = registry.STAGES[name]
        if stage.resources == "gpu" and stage.setup is not None:
            lifecycle.preload(stage, stage.params(config), config.storage.s3_options())
            return


def run_curate(inputs: list[str], output: str, config_path: str | None = None, run_id: str | None = None,
               stages: list[str] | None = None, workers: int | None = None, runner: str | None = None,
               dask_address: str | None = None, replay: dict | None = None, limit: int | None = None,
               publish_mode: str | None = None, trial: bool = False, publish: bool = False) -> dict:
    """Entry point for the CLI: picks the task runner (config, overridden by arguments) and runs the flow."""
    for uri in inputs:  # before anything logs it or hands it to Prefect as a flow parameter
        check_uri(uri, "input")
    check_uri(output, "output")
    config = load_config(config_path)
    names = registry.preflight(config, stages)  # a typo is one line now, not a flow run that fails
    if not replay and any(registry.STAGES[n].kind == "source" for n in names):
        resolve_inputs(inputs, config.storage.s3_options())  # InputError: "input '…' matched no files"
    kind = runner or config.runner.kind
    address = dask_address or config.runner.dask_address
    chosen = task_runner(kind, workers or config.runner.workers, address)
    if kind == "local" and config.runner.preload_models:
        _preload_models(config, names)
    api = nullcontext()
    if kind == "dask" and not address:  # this process reports to the API its LocalCluster workers were given
        from prefect.settings import PREFECT_API_URL, temporary_settings

        api = temporary_settings({PREFECT_API_URL: chosen.cluster_kwargs["env"]["PREFECT_API_URL"]})
    with api, tags("sluice", f"dataset:{config.publish.dataset}"):
        return curate.with_options(task_runner=chosen)(
            inputs=[_absolute(u) for u in inputs], output=_absolute(output),
            config_path=_absolute(config_path) if config_path else None, run_id=run_id or new_run_id(), stages=stages,
            replay=replay, limit=limit, publish_mode=publish_mode, trial=trial, publish=publish
        )
