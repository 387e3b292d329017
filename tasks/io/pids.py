"""Whether a process still runs, from its pid: the leases (tasks/io/locks.py) and the launcher's server and worker
(flows/launcher/) ask it. A module of its own so that the launcher's check costs no import of the storage layer."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a child that exited or was killed stays one until its parent reaps
    it, and holds nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True
