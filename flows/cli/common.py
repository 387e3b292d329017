"""What every command shares: the demo config's path, exit codes, environment defaults, opening the output root."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "infra" / "demo.toml"


EXIT = {"ok": 0, "unexpected": 1, "bad input or config": 2, "contract": 3, "locked": 4, "storage": 5,
        "interrupted": 130}


def _env_defaults() -> None:
    """Safe defaults for every entry point (the Makefile and tests set the same)."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _storage(output: str, config: str | None):
    from schemas.config import load_config
    from tasks.io.storage import Storage

    cfg = load_config(config)
    return Storage(output, cfg.storage.s3_options())


def _load_run(args: argparse.Namespace):
    """(storage, run.json) of RUN_ID under --output; None after printing the error when there is no such run."""
    from schemas.config import check_safe_name
    from tasks.io import layout

    check_safe_name(args.run_id, "run id")
    storage = _storage(args.output, args.config)
    run = storage.read_json_if_exists(layout.run_json(args.run_id))
    if run is None:
        print(f"error: no run {args.run_id} under {storage.uri(layout.RUNS)}", file=sys.stderr)
        return None
    return storage, run


def orjson_line(obj: dict) -> str:
    import orjson

    return orjson.dumps(obj).decode() + "\n"
