"""Orchestration on a real `prefect server start` (scheduler, triggers, actions running) and a moto S3 server:
deployments, the watch ledger, retrain on publish, the Dask runner, dataset locks, secrets."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
import s3fs
from conftest import REPO, SLUICE, WITHOUT_SCORE, lease, subprocess_env
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.ops.demo_corpus import kjv_records

VERSES = kjv_records()


def write_jsonl(path: Path, records: list[dict], source: str | None = None) -> Path:
    rows = [{**r, "source": source} if source else r for r in records]
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    return path


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def api_post(api: str, path: str, body: dict) -> dict:
    resp = httpx.post(f"{api}{path}", json=body, timeout=10)
    resp.raise_for_status()
    return resp.json()


def flow_runs(api: str, flow_name: str) -> list[dict]:
    return api_post(api, "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}, "limit": 50})


def config(tmp_path: Path, body: str, name: str = "sluice.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_deploy_registers_nightly_cron_watch_interval_and_retrain_trigger(prefect_api, tmp_path):
    cfg = config(tmp_path, f"""
[deploy]
inputs = ["{tmp_path / 'incoming'}"]
output = "{tmp_path / 'out'}"
cron = "15 3 * * 1-5"
timezone = "Europe/Berlin"
watch_interval_seconds = 120
""")
    env = subprocess_env(prefect_api)
    done = subprocess.run([SLUICE, "deploy", "--config", str(cfg)], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    for name in ("curate/nightly", "watch/new-data", "retrain/on-publish"):
        assert f"registered deployment {name}" in done.stdout
    nightly = httpx.get(f"{prefect_api}/deployments/name/curate/nightly", timeout=10).json()
    schedule = nightly["schedules"][0]["schedule"]
    assert (schedule["cron"], schedule["timezone"]) == ("15 3 * * 1-5", "Europe/Berlin")
    assert nightly["parameters"] == {"inputs": [str(tmp_path / "incoming")], "output": str(tmp_path / "out"),
                                     "config_path": str(cfg)}
    watch = httpx.get(f"{prefect_api}/deployments/name/watch/new-data", timeout=10).json()
    assert watch["schedules"][0]["schedule"]["interval"] == 120
    retrain = httpx.get(f"{prefect_api}/deployments/name/retrain/on-publish", timeout=10).json()
    automations = api_post(prefect_api, "/automations/filter", {})
    mine = [a for a in automations
            if any(act.get("deployment_id") == retrain["id"] for act in a["actions"])]
    assert len(mine) == 1
    trigger = mine[0]["trigger"]
    assert trigger["expect"] == ["sluice.dataset.published"]
    assert trigger["match"] == {"sluice.retrain": "true"}
    assert mine[0]["actions"][0]["parameters"]["version"] == "{{ event.payload.version }}"
    # the scheduler creates the upcoming nightly runs; status shows schedule and next run
    wait_for(lambda: flow_runs(prefect_api, "curate"), 60, "scheduled nightly runs")
    status = subprocess.run([SLUICE, "status"], env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    line = next(ln for ln in status.stdout.splitlines() if "curate/nightly" in ln)
    assert "cron '15 3 * * 1-5' Europe/Berlin" in line and "next: 20" in line
    assert "every 120s" in status.stdout and "retrain-on-publish" in status.stdout


def test_watch_curates_only_new_objects_and_reports_changed_ones(prefect_api, s3_env, tmp_path):
    from flows.watch import watch

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env})
    fs.mkdir("watched")
    fs.pipe("watched/incoming/a.jsonl", b"\n".join(orjson.dumps(r) for r in VERSES[:120]))
    cfg = config(tmp_path, 'stages = ["ingest", "publish"]\n[publish]\ndataset = "watched"\n'
                           '[deploy]\nrecurate_changed = true\n')
    params = {"inputs": ["s3://watched/incoming/"], "output": "s3://watched/out", "config_path": str(cfg)}
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        first = watch(**params)
        assert first["new"] == ["s3://watched/incoming/a.jsonl"] and first["run"]["status"] == "succeeded"
        fs.pipe("watched/incoming/b.jsonl", b"\n".join(orjson.dumps(r) for r in VERSES[120:170]))
        second = watch(**params)
        assert second["new"] == ["s3://watched/incoming/b.jsonl"]
        run_id = second["run"]["run_id"]
        run = json.loads(fs.cat(f"watched/out/runs/{run_id}/run.json"))
        assert run["inputs"] == ["s3://watched/incoming/b.jsonl"]
        ingest = json.loads(fs.cat(f"watched/out/runs/{run_id}/ingest/_manifest.json"))
        assert ingest["rows_in"] == 50 and [i["uri"] for i in ingest["inputs"]] == run["inputs"]
        assert second["run"]["published"]["version"] == 2
        v2 = json.loads(fs.cat("watched/out/datasets/watched/v2/_manifest.json"))  # watch appends: v1's rows + b's
        assert (v2["rows_out"], v2["published"]["mode"], v2["published"]["base_version"]) == (170, "append", 1)
        third = watch(**params)
        assert third["new"] == [] and third["run"] is None and third["unchanged"] == 2
        poisoned = b"\n".join(orjson.dumps({**r, "text": r["text"].upper()} if i in (3, 50) else r)
                               for i, r in enumerate(VERSES[:120] + VERSES[300:302]))
        fs.pipe("watched/incoming/a.jsonl", poisoned)
        fourth = watch(**params)
    assert fourth["new"] == [] and fourth["run"] is None
    [changed] = fourth["changed"]
    assert changed["uri"] == "s3://watched/incoming/a.jsonl"
    assert changed["curated_by_run"] == first["run"]["run_id"]
    assert changed["now"]["sha256"] == hashlib.sha256(poisoned).hexdigest() != changed["was"]["sha256"]
    alerts = sorted(fs.ls("watched/out/watch/changed"))
    assert len(alerts) == 2 and "a.jsonl" in fs.cat(alerts[1]).decode()
    # re-curated as a trial with the audit, never published, and its rows diffed against the first curation's
    recurated = fourth["recurated"]
    assert recurated["status"] == "succeeded" and recurated["run_id"].startswith("watch-changed-")
    [d] = recurated["objects"]
    assert (d["rows_was"], d["rows_now"], d["added"], d["removed"], d["unchanged"]) == (120, 122, 4, 2, 118)
    assert [e["line"] for e in d["added_examples"]] == [4, 51, 121, 122]
    assert d["added_examples"][0]["text"] == VERSES[3]["text"].upper()[:200]
    assert json.loads(fs.cat(alerts[0]))["objects"] == recurated["objects"]  # <time>-diff.json sorts first
    stages = json.loads(fs.cat(f"watched/out/runs/{recurated['run_id']}/run.json"))["stages"]
    assert stages == ["ingest", "audit"]
    ledger = json.loads(fs.cat("watched/out/watch/ledger.json"))["objects"]
    assert ledger["s3://watched/incoming/a.jsonl"]["sha256"] == changed["was"]["sha256"]  # not re-ingested
    assert sorted(fs.ls("watched/out/datasets/watched")) == sorted(
        f"watched/out/datasets/watched/{n}" for n in ("_claims", "_index", "_lock", "v1", "v2"))


HOOK = """import os, sys
with open(sys.argv[1], "a") as fh:
    fh.write(f"{sys.argv[2]} {sys.argv[3]} {os.environ['SLUICE_DATASET']}\\n")
"""


def test_publish_triggers_retrain_and_a_small_change_does_not(prefect_api, tmp_path):
    data, out, marker = tmp_path / "in", tmp_path / "out", tmp_path / "retrained.txt"
    data.mkdir()
    write_jsonl(data / "a.jsonl", VERSES[:300])
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    cfg = config(tmp_path, f"""stages = ["ingest", "publish"]
[publish]
dataset = "trained"
[deploy]
inputs = ["{data}"]
output = "{out}"
[retrain]
command = ["{sys.executable}", "{hook}", "{marker}", "{{version}}", "{{uri}}"]
min_changed_fraction = 0.05
""")
    env = subprocess_env(prefect_api, PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        server = subprocess.Popen([SLUICE, "serve", "--config", str(cfg)], env=env, stdout=fh, stderr=subprocess.STDOUT)

    def run(run_id: str) -> None:
        done = subprocess.run([SLUICE, "run", "--input", str(data), "--output", str(out), "--config", str(cfg),
                               "--run-id", run_id], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    def published_events() -> list[dict]:
        body = {"filter": {"event": {"name": ["sluice.dataset.published"]}}, "limit": 50}
        return api_post(prefect_api, "/events/filter", body)["events"]

    try:
        deployment = wait_for(lambda: (r := httpx.get(f"{prefect_api}/deployments/name/retrain/on-publish",
                                                     timeout=5)).status_code == 200 and r.json(), 120,
                              "sluice serve to register its deployments")
        # the trigger is an automation created after the deployment: an event published before the server's
        # triggers service holds it would be missed (seen once in CI under load), so wait for it too
        wait_for(lambda: httpx.get(f"{prefect_api}/automations/related-to/prefect.deployment.{deployment['id']}",
                                   timeout=5).json(), 120, "the retrain trigger's automation")
        time.sleep(3)
        run("first")  # v1: a first version always retrains
        lines = wait_for(lambda: marker.exists() and marker.read_text().splitlines(), 180, "the retrain hook")
        assert lines == [f"1 {out / 'datasets' / 'trained' / 'v1'} trained"]
        [retrain_run] = wait_for(lambda: [r for r in flow_runs(prefect_api, "retrain") if r["state_type"] ==
                                          "COMPLETED" and r["parameters"]["dataset"] == "trained"], 60,
                                 "the retrain run to complete")
        assert retrain_run["parameters"]["version"] == 1
        [record] = list((out / "datasets" / "trained" / "v1" / "_retrain").glob("*.json"))
        outcome = json.loads(record.read_text())
        assert outcome["status"] == "succeeded" and outcome["hooks"][0]["exit_code"] == 0
        assert outcome["flow_run_id"] == retrain_run["id"]

        write_jsonl(data / "b.jsonl", VERSES[300:303])  # 3 of 303 rows = 1% < 5%: published, no retrain
        run("second")
        event = wait_for(lambda: [e for e in published_events()  # the watch test publishes a v2 of its own
                                  if e["payload"]["version"] == 2 and e["payload"]["dataset"] == "trained"], 60,
                         "the v2 publish event")[0]
        assert event["resource"]["sluice.retrain"] == "false"
        assert event["payload"]["diff"]["rows_added"] == 3 and event["payload"]["diff"]["rows_removed"] == 0
        time.sleep(8)  # give the trigger time to (wrongly) fire
        assert marker.read_text().splitlines() == lines
        # (events of other tests' datasets may reach this server's trigger late: count this dataset's runs)
        assert len([r for r in flow_runs(prefect_api, "retrain") if r["parameters"]["dataset"] == "trained"]) == 1

        write_jsonl(data / "c.jsonl", VERSES[303:400])  # 97 new rows: above the threshold
        run("third")
        lines = wait_for(lambda: len(marker.read_text().splitlines()) == 2 and marker.read_text().splitlines(),
                         180, "the second retrain")
        assert lines[1].startswith("3 ")
    finally:
        server.terminate()
        server.wait(30)


def test_dask_runner_gives_byte_identical_outputs(prefect_server, tmp_path):
    from flows.curate import run_curate

    data = tmp_path / "in"
    data.mkdir()
    for i in range(3):
        write_jsonl(data / f"part-{i}.jsonl", VERSES[i * 700:(i + 1) * 700] + VERSES[:50])  # cross-file dups
    cfg = str(REPO / "infra" / "demo.toml")
    stages = ["ingest", "quality", "dedup"]
    local = run_curate([str(data)], str(tmp_path / "local"), cfg, "same-run", stages, workers=2)
    dask = run_curate([str(data)], str(tmp_path / "dask"), cfg, "same-run", stages, workers=2, runner="dask")
    assert local["status"] == dask["status"] == "succeeded"

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*.parquet"))}

    a, b = digests(tmp_path / "local" / "runs"), digests(tmp_path / "dask" / "runs")
    assert len(a) >= 10 and a == b  # every stage's parts and quarantine (dedup's shuffles are gone after it)
    dedup = json.loads((tmp_path / "dask" / "runs" / "same-run" / "dedup" / "_manifest.json").read_text())
    assert dedup["rejected_by_reason"].get("dedup.exact", 0) >= 100


def test_two_concurrent_runs_on_one_dataset_publish_once(prefect_server, tmp_path):
    """Both start together; whichever takes the lock first publishes, the other stops at once naming it."""
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    write_jsonl(data / "a.jsonl", VERSES[:20000])
    cfg = str(REPO / "infra" / "demo.toml")
    env = subprocess_env(prefect_server)
    procs = {run_id: subprocess.Popen([SLUICE, "run", "--input", str(data), "--output", str(out), "--config", cfg,
                                       "--run-id", run_id, "--stages", ",".join(WITHOUT_SCORE)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
             for run_id in ("run-one", "run-two")}
    results = {run_id: (p.communicate(timeout=600), p.returncode) for run_id, p in procs.items()}
    codes = sorted(code for _, code in results.values())
    assert codes == [0, 4], {k: (c, e[-1500:]) for k, ((_, e), c) in results.items()}
    winner = next(k for k, (_, code) in results.items() if code == 0)
    loser = next(k for k, (_, code) in results.items() if code == 4)
    assert f"dataset demo is being curated by run {winner}" in results[loser][0][1]
    versions = sorted(p.name for p in (out / "datasets" / "demo").glob("v*"))
    assert versions == ["v1"]
    assert json.loads((out / "datasets" / "demo" / "v1" / "_manifest.json").read_text())["run_id"] == winner
    assert lease(out, "demo")["released"] and lease(out, "demo")["run_id"] == winner
    late = json.loads((out / "runs" / loser / "run.json").read_text())
    assert late["status"] == "failed" and winner in late["error"]
    assert not (out / "runs" / loser / "ingest").exists()


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_dataset_lease_is_fenced(backend, tmp_path, request):
    from tasks.io import layout
    from tasks.io.locks import DatasetLocked, LockLost, current, dataset_lock
    from tasks.io.storage import Storage

    if backend == "s3":
        endpoint = request.getfixturevalue("s3_env")
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        if not fs.exists("locks"):
            fs.mkdir("locks")
        storage = Storage(f"s3://locks/{tmp_path.name}", {"client_kwargs": {"endpoint_url": endpoint}})
    else:
        storage = Storage(str(tmp_path))
    folder = layout.dataset_lock_dir("ds")

    def rewrite(**changes) -> None:
        holder = current(storage, folder)
        body = {k: v for k, v in holder.items() if k != "generation"}
        storage.write_json(layout.lock_generation(folder, holder["generation"]), {**body, **changes})

    a = dataset_lock(storage, "ds", "run-a", 600)
    assert a.acquire(heartbeat=False) == 1
    with pytest.raises(DatasetLocked, match="being curated by run run-a"):
        dataset_lock(storage, "ds", "run-b", 600).acquire(heartbeat=False)
    with pytest.raises(DatasetLocked, match="run run-a is already running .* cannot run twice at once"):
        dataset_lock(storage, "ds", "run-a", 600).acquire(heartbeat=False)  # same run id, a live process
    dead = subprocess.Popen(["true"])
    dead.wait()
    rewrite(pid=dead.pid)  # the holder was killed: a resumed run takes the lease at once
    resumed = dataset_lock(storage, "ds", "run-a", 600)
    assert resumed.acquire(heartbeat=False) == 2
    with pytest.raises(LockLost, match="generation 1\\) was taken over by run run-a \\(generation 2\\)"):
        a.check()
    zombie = subprocess.Popen(["true"])  # exited, not yet reaped by its parent: a zombie holds nothing
    while Path(f"/proc/{zombie.pid}/stat").read_text().split(") ")[-1][:1] != "Z":
        time.sleep(0.01)
    rewrite(pid=zombie.pid)
    assert dataset_lock(storage, "ds", "run-a", 600).acquire(heartbeat=False) == 3
    zombie.wait()
    rewrite(expires_at="2000-01-01T00:00:00+00:00")  # paused past its TTL: stale

    def take(i: int):
        lease = dataset_lock(storage, "ds", f"racer-{i}", 600)
        try:
            return lease.acquire(heartbeat=False)
        except DatasetLocked:
            return None

    with ThreadPoolExecutor(8) as pool:
        won = [g for g in pool.map(take, range(8)) if g is not None]
    assert won == [4]  # two takeovers of one stale lease cannot both succeed
    with pytest.raises(LockLost):
        resumed.check()
    resumed.release()  # not its lease any more: left alone
    assert not current(storage, folder)["released"]
    assert current(storage, folder)["run_id"].startswith("racer-")
