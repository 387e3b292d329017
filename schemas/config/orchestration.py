"""`[runner]`, `[deploy]`, `[retrain]`: how a run is executed, deployed and followed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from schemas.config.base import Strict, check_no_userinfo, check_secret_ref


class RunnerConfig(Strict):
    workers: int = Field(2, gt=0, le=256, description="concurrent shard tasks (threads, or Dask workers)")
    task_memory: int = Field(
        1 << 30, ge=1 << 20, description="bytes one task of a global stage may hold (1 GiB: a 2 GB Dask worker, "
        "or two threads of a 3 GB local process): sets the partition counts of its shuffles, and a partition that "
        "would exceed it is reduced in parts")
    partitions: int | None = Field(None, ge=1, le=4096, description="force every shuffle's partition count "
                                   "(default: from the rows and task_memory)")
    preload_models: bool = Field(True, description="with the local runner, load the first model stage's models "
                                 "(score or augment) in the background while the earlier stages run; it holds "
                                 "their memory (~0.7 GB for the packaged ones) from the start of the run")
    keep_work: bool = Field(False, description="keep a global stage's shuffle files after it is committed "
                            "(runs/<id>/<stage>/_work/), for inspection")
    retries: int = Field(3, ge=0, le=10, description="retries of I/O tasks, with exponential backoff")
    task_rows: int = Field(
        20_000, ge=0, description="small shards are packed into one Prefect task until it holds this many rows "
        "(a task run costs ~0.05-0.1 s, the work of a 1,000-row shard); 0 = one task per shard")
    kind: Literal["local", "dask"] = Field("local", description="'local': a thread pool; 'dask': prefect-dask")
    dask_address: str | None = Field(None, description="tcp://scheduler:8786; none = a LocalCluster of `workers`")
    lock_ttl_seconds: int = Field(
        600, ge=10, description="a dataset lock not refreshed for this long is stale (its holder died)"
    )
    lock_wait_seconds: int | None = Field(
        None, ge=0, description="how long a run waits for another run's lease on its dataset before giving up; "
        "none = 1800 s for an append run (increments queue up and publish in order), 0 for a replace run")


class DeployConfig(Strict):
    """What the deployments run on: `sluice deploy` turns these into `curate/nightly`, `watch/new-data`, `retrain`."""

    inputs: list[str] = Field(default_factory=list, description="what curate/nightly reads; watch/new-data polls it")
    output: str | None = Field(None, description="output root of the scheduled and watched runs")
    cron: str = Field("0 2 * * *", description="schedule of curate/nightly")
    timezone: str = "UTC"
    watch_interval_seconds: int = Field(300, ge=5, description="how often watch/new-data polls `inputs`")
    hash_new_objects: bool = Field(True, description="record a sha256 of each new object in the watch ledger")
    recurate_changed: bool = Field(False, description="an object changed after curation is curated again (every "
                                   "stage but publish, with the audit) and its rows diffed against the first "
                                   "curation's: watch/changed/<time>-diff.json; it is still never published")


class RetrainConfig(Strict):
    """The hook `retrain` runs when a dataset version is published (event `sluice.dataset.published`)."""

    command: list[str] | None = Field(
        None, description="argv; {uri}, {dataset} and {version} are substituted, and also set as SLUICE_DATASET_* env"
    )
    url: str | None = Field(None, description="POST {dataset, version, uri, diff} as JSON here")
    token: str | None = Field(None, description="bearer token for `url`: env:VAR or prefect-secret:BLOCK")
    min_changed_fraction: float = Field(
        0.01, ge=0, le=1, description="a publish changing fewer rows than this (vs the previous version) does not "
        "trigger retraining"
    )
    timeout_seconds: int = Field(3600, gt=0)

    @field_validator("token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        return check_secret_ref(v, "retrain.token")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("retrain.url must be an http(s) URL")
        return check_no_userinfo(v, "retrain.url")
