"""Stage logic: pure functions on polars frames, the runner that owns their I/O, and thin Prefect task wrappers."""
