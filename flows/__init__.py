"""Prefect flows and the CLI: composition only, no data logic."""
