"""The launcher: how a `sluice` command reaches a running Prefect server and a warm process to run in.

prefect_server.py starts, finds and stops the shared local server (and its supervisor); warm_worker.py is the
process with the imports done that forks one child per command. Neither imports the CLI: the worker runs its
entry point by name (`flows.cli:main`), so the CLI depends on the launcher and not the other way round.
"""
