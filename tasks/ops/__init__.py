"""Ops commands over what runs wrote: replay, diff, status, the watch ledger, the retrain hook, the demo
corpus, reports."""
