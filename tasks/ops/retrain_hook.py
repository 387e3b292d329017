"""The retrain hook: a shell command or an HTTP POST, run with a published version's URI; its outcome is recorded.

Outcomes go to `datasets/<name>/v<N>/_retrain/<stamp>.json` next to the version they are about (the version's
manifest itself is immutable). A bearer token is resolved from its reference only when the request is made; it is
never passed to a command, logged or recorded, and the URL is recorded without its query string.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import orjson

from schemas.config import RetrainConfig, resolve_secret
from schemas.errors import BadInput
from tasks.io import layout
from tasks.io.storage import Storage

log = logging.getLogger("sluice")
TAIL = 2000


class RetrainHookMissing(BadInput):
    pass


def worth_retraining(diff: dict, cfg: RetrainConfig) -> bool:
    """The retrain policy: the first version always, later ones when at least `min_changed_fraction` changed."""
    return diff["a"] is None or diff["changed_fraction"] >= cfg.min_changed_fraction


def _bare_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def run_command(cfg: RetrainConfig, dataset: str, version: int, uri: str) -> dict:
    values = {"uri": uri, "dataset": dataset, "version": str(version)}
    argv = [part.format(**values) for part in cfg.command]
    env = {**os.environ, "SLUICE_DATASET": dataset, "SLUICE_DATASET_VERSION": str(version),
           "SLUICE_DATASET_URI": uri}
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, timeout=cfg.timeout_seconds, check=False)
    except FileNotFoundError:
        return {"ok": False, "exit_code": None, "error": f"command not found: {argv[0]}"}
    except subprocess.TimeoutExpired:
        return {"ok": False, "exit_code": None, "error": f"timed out after {cfg.timeout_seconds} s"}
    return {"ok": proc.returncode == 0, "exit_code": proc.returncode,
            "stdout_tail": proc.stdout.decode(errors="replace")[-TAIL:],
            "stderr_tail": proc.stderr.decode(errors="replace")[-TAIL:]}


def post_webhook(cfg: RetrainConfig, dataset: str, version: int, uri: str, diff: dict | None) -> dict:
    body = orjson.dumps({"dataset": dataset, "version": version, "uri": uri, "diff": diff})
    headers = {"Content-Type": "application/json"}
    if cfg.token:
        headers["Authorization"] = f"Bearer {resolve_secret(cfg.token, 'retrain.token')}"
    request = urllib.request.Request(cfg.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_seconds) as resp:
            return {"ok": 200 <= resp.status < 300, "http_status": resp.status,
                    "response_tail": resp.read(TAIL).decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        return {"ok": False, "http_status": exc.code, "response_tail": exc.read(TAIL).decode(errors="replace")}
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return {"ok": False, "http_status": None, "error": f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"}


def run_hook(cfg: RetrainConfig, dataset: str, version: int, uri: str, diff: dict | None) -> dict:
    """Run the configured hook(s): the command first, then the webhook; the outcome is ok only if all were."""
    if not cfg.command and not cfg.url:
        raise RetrainHookMissing("no retrain hook configured: set retrain.command or retrain.url")
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    outcome: dict = {"dataset": dataset, "version": version, "uri": uri, "started_at": started.isoformat()}
    hooks = []
    if cfg.command:
        hooks.append({"kind": "command", "target": cfg.command[0], **run_command(cfg, dataset, version, uri)})
    if cfg.url:
        hooks.append({"kind": "http", "target": _bare_url(cfg.url),
                      **post_webhook(cfg, dataset, version, uri, diff)})
    outcome.update(hooks=hooks, ok=all(h["ok"] for h in hooks), seconds=round(time.perf_counter() - t0, 3),
                   finished_at=datetime.now(UTC).isoformat())
    return outcome


def record_outcome(version_root: Storage, outcome: dict, flow_run_id: str | None) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    rel = f"{layout.RETRAIN_OUTCOMES}/{stamp}.json"
    version_root.write_json(rel, {**outcome, "status": outcome.get("status") or ("succeeded" if outcome["ok"]
                                                                                 else "failed"),
                                  "flow_run_id": flow_run_id})
    return version_root.uri(rel)


def outcomes(version_root: Storage) -> list[dict]:
    folder = layout.RETRAIN_OUTCOMES
    return [version_root.read_json(f"{folder}/{name}") for name in sorted(version_root.listdir(folder))
            if name.endswith(".json")]
