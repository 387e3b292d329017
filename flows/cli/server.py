"""The shared local Prefect server and its warm worker, as commands see them: `sluice server`, pointing a command
at the server, running a command in the warm worker."""

from __future__ import annotations

import argparse
import os

from flows.cli.common import _env_defaults

WARM_COMMANDS = ("run", "demo", "replay", "status")


def _prefect_api() -> None:
    """Point Prefect at the shared local server (started if needed) unless PREFECT_API_URL names one, or
    SLUICE_PREFECT=ephemeral asks for Prefect's temporary server per command. Before Prefect is imported: it reads
    its settings once."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("SLUICE_PREFECT") == "ephemeral":
        return
    from flows.launcher import prefect_server

    os.environ["PREFECT_API_URL"] = prefect_server.ensure()


def _in_warm_worker(argv: list[str]) -> int | None:
    """Run this command in the shared server's warm worker (flows/launcher/warm_worker.py), which has everything
    imported: its exit code, or None to run it here. Only the console script comes here, not main([...]) calls."""
    if not argv or argv[0] not in WARM_COMMANDS or {"-h", "--help"} & set(argv):
        return None
    _env_defaults()
    if (os.environ.get("PREFECT_API_URL") or os.environ.get("SLUICE_PREFECT") == "ephemeral"
            or os.environ.get("SLUICE_WARM_WORKER") == "off"):
        return None
    try:
        _prefect_api()
    except (RuntimeError, OSError):
        return None  # the command, run here, reports it
    from flows.launcher import warm_worker

    return warm_worker.run_in_worker(argv)


def cmd_server(args: argparse.Namespace) -> int:
    import time

    from flows.launcher import prefect_server

    if args.action == "start":
        if args.idle_seconds:
            os.environ["SLUICE_SERVER_IDLE_SECONDS"] = str(args.idle_seconds)
        url = prefect_server.ensure(args.idle_seconds)
        server, _ = prefect_server.status()
        print(f"Prefect server at {url} (pid {server.server_pid}, supervisor {server.supervisor_pid}; stops after "
              f"{server.idle_seconds} s unused; SQLite under {prefect_server.home()})")
    elif args.action == "stop":
        server = prefect_server.stop()
        print(f"stopped the Prefect server at {server.url}" if server else "no Sluice Prefect server was running")
    else:
        server, up = prefect_server.status()
        if server is None:
            print("no Sluice Prefect server (the next command that needs one starts it)")
            return 0
        print(f"{'running' if up else 'NOT answering'}: {server.url} (pid {server.server_pid}, supervisor "
              f"{server.supervisor_pid}), up {time.time() - server.started_at:,.0f} s, stops after "
              f"{server.idle_seconds} s unused")
        from flows.launcher import warm_worker

        worker = warm_worker.read_record()
        if worker and prefect_server.alive(worker["pid"]):
            print(f"warm worker: pid {worker['pid']}, {worker['served']} commands served, up "
                  f"{time.time() - worker['started_at']:,.0f} s")
        else:
            print("warm worker: not running (commands start in their own process)")
        return 0 if up else 1
    return 0
