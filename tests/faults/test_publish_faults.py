"""Publishing under faults: a run that lost its lease cannot make a version visible, and a resumed publish never
releases a version older than one published meanwhile (and fires no event for it)."""

from __future__ import annotations

import pytest
from handmade import canonical, committed, publish_by_hand

from schemas.config import SluiceConfig
from tasks.io import layout
from tasks.io.locks import LockLost, current, dataset_lock
from tasks.io.manifests import StageManifest
from tasks.io.storage import Storage
from tasks.ops import announce
from tasks.runtime import runner
from tasks.runtime.context import RunContext
from tasks.runtime.contracts import close_contracts
from tasks.stages import publish


def _ctx(root, run_id: str) -> RunContext:
    return RunContext(Storage(str(root)), run_id, SluiceConfig())


def test_a_run_that_lost_its_lease_does_not_publish(tmp_path):
    a = _ctx(tmp_path, "paused")
    lease = dataset_lock(a.storage, "curated", "paused", 600)
    lease.acquire(heartbeat=False)
    a.fence = {"folder": lease.folder, "generation": lease.generation, "what": lease.what}
    source = committed(a, "dedup", canonical(5, "a"))
    # A is paused past its TTL; B takes the lease over
    holder = current(a.storage, lease.folder)
    a.storage.write_json(layout.lock_generation(lease.folder, 1),
                         {**{k: v for k, v in holder.items() if k != "generation"},
                          "expires_at": "2000-01-01T00:00:00+00:00"})
    assert dataset_lock(a.storage, "curated", "usurper", 600).acquire(heartbeat=False) == 2
    with pytest.raises(LockLost, match="taken over by run usurper"):
        publish_by_hand(a, source)
    assert not a.storage.exists(layout.version_manifest("curated", 1))
    assert not a.storage.exists(layout.stage_manifest("paused", "publish"))
    close_contracts("paused")


def test_a_resumed_publish_never_goes_back_in_time(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(announce, "emit_published", lambda published, *a: events.append(published["version"]))
    x = _ctx(tmp_path, "run-x")
    source_x = committed(x, "dedup", canonical(4, "x"))
    # X claims v1 and copies its parts, then is killed
    target = publish.STAGE.sink.open(x, [o.as_json() for o in source_x.outputs])
    assert target["version"] == 1
    runner.sink_shard(x, publish.STAGE, 0, source_x.outputs[0].as_json(), target)

    y = _ctx(tmp_path, "run-y")
    publish_by_hand(y, committed(y, "dedup", canonical(6, "y")))  # Y publishes meanwhile
    assert events == [2]

    resumed = publish_by_hand(x, source_x)  # X resumes: a newer version than v2, not v1
    assert resumed.published["version"] == 3 and events == [2, 3]
    assert not x.storage.exists(layout.version_manifest("curated", 1))  # v1 is skipped, never released
    v3 = x.storage.read_record(StageManifest, layout.version_manifest("curated", 3))
    assert v3.run_id == "run-x" and v3.rows_out == 4
    close_contracts("run-x")
    close_contracts("run-y")
