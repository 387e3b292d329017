"""Commands for deployments: deploy, serve."""

from __future__ import annotations

import argparse


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import register

    for name in register(args.config, args.pool):
        print(f"registered deployment {name}")
    if args.pool:
        print(f"start a worker: prefect worker start --pool {args.pool}")
    else:
        print(f"run them: sluice serve --config {args.config}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.deploy import serve_all

    serve_all(args.config)
    return 0
