"""What every step of a run is handed: where outputs go, which run, the config, the S3 options, the code version."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.config import SluiceConfig, check_safe_name
from tasks.io.locks import assert_current
from tasks.io.storage import Storage
from tasks.runtime.fingerprints import CODE_VERSION


@dataclass
class RunContext:
    storage: Storage
    run_id: str
    config: SluiceConfig
    s3_options: dict = field(default_factory=dict, repr=False)
    code_version: str = CODE_VERSION
    fence: dict | None = None  # {folder, generation, what} of the dataset lease a sink must still hold to commit

    def __post_init__(self) -> None:
        check_safe_name(self.run_id, "run id")

    def check_fence(self) -> None:
        """Only the holder of the dataset's current lease may make a version visible or announce it (LockLost)."""
        if self.fence:
            assert_current(self.storage, self.fence["folder"], self.fence["generation"], self.fence["what"])
