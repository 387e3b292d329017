"""`sluice` — the command line, one module per command group. Every command explains itself with --help.

  main      the entry point: logging, signals, exit codes
  parser    every command, its flags and its --help
  runs      run, replay, demo, status
  views     runs, show, sample, quarantine, edits, benchmarks
  versions  diff, forget, files, verify
  deploy    deploy, serve
  server    `sluice server`, the shared Prefect server and the warm worker as commands see them
  common    what the commands share
"""

from flows.cli.main import main
from flows.cli.parser import build_parser
from flows.cli.runs import run_summary

__all__ = ["build_parser", "main", "run_summary"]
