"""Thin Prefect task wrappers over the runner: names, retries with backoff, no result caching.

Resume is done by the storage commit protocol (receipts and manifests fingerprinted by inputs + params + code
version), not by Prefect's result cache: it survives a kill -9, works the same on S3, and never pickles frames.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks import publish as publish_mod
from tasks import runner
from tasks.contracts import ContractError
from tasks.io.readers import InputError, resolve_inputs
from tasks.stage import StageContractError

NOT_RETRIED = (ContractError, StageContractError, InputError, ValueError)


def _retry_unless_permanent(task, task_run, state) -> bool:
    """Retry I/O trouble; a broken contract or bad input fails the same way every time."""
    try:
        state.result()
    except NOT_RETRIED:
        return False
    except Exception:
        return True
    return False


def _io_task(name: str, fn, retries: int = 3):
    return task(fn, name=name, retries=retries, retry_delay_seconds=exponential_backoff(backoff_factor=1),
                retry_condition_fn=_retry_unless_permanent, cache_policy=NO_CACHE, persist_result=False)


list_inputs = _io_task("list-inputs", resolve_inputs)
ingest_file = _io_task("ingest-file", runner.ingest_file)
map_shard = _io_task("map-shard", runner.map_shard)
global_features = _io_task("global-features", runner.global_features)
global_decide = _io_task("global-decide", runner.global_decide, retries=1)
commit_stage = _io_task("commit-stage", runner.commit_stage, retries=1)
publish = _io_task("publish", publish_mod.publish)
