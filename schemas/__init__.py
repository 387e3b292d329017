"""Data contracts: the canonical record, per-stage Great Expectations suites, and config models."""
