"""The one error class for what a user gave wrong: a config value, a flag, an input file, a dataset name.

`sluice` maps `BadInput` (and pydantic's validation of a config) to exit 2 with the message alone; any other
exception, a plain `ValueError` included, is a bug or an outage and exits 1 with a pointer to the traceback. Errors
about input subclass it; they stay `ValueError`s for callers that catch those.
"""

from __future__ import annotations


class BadInput(ValueError):
    """Something the user gave cannot be used; the message says what and how to fix it."""
