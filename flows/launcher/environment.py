"""The launcher's environment rules, shared by the server and the worker: where the Prefect home is, and which
variables a long-lived service (supervisor, server, warm worker) may inherit: what imports read and what a process
needs to run, never a credential.
"""

from __future__ import annotations

import os
from pathlib import Path

# read while importing Prefect, polars, numpy, GE or the interpreter itself; everything else (AWS credentials,
# PATH, ...) is read when used, and the child runs with the client's whole environment anyway
IMPORT_TIME_PREFIXES = ("PREFECT_", "SLUICE_", "POLARS_", "GX_", "GE_", "PYTHON", "OMP_", "OPENBLAS_", "MKL_",
                        "NUMEXPR_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "CUDA_", "LC_")
IMPORT_TIME_NAMES = ("HOME", "USER", "LANG", "LANGUAGE", "TZ", "VIRTUAL_ENV")
NOT_IMPORT_TIME = ("SLUICE_SERVER_IDLE_SECONDS",)  # read by the client only
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
# what a service (supervisor, server, worker) needs besides the import-time variables
SERVICE_NAMES = ("PATH", "TMPDIR", "TMP", "TEMP", "AWS_EC2_METADATA_DISABLED", "SSL_CERT_FILE", "SSL_CERT_DIR",
                 "REQUESTS_CA_BUNDLE", "NO_PROXY", "no_proxy")


def home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def secret_name(name: str) -> bool:
    return any(word in name.upper() for word in SECRET_WORDS)


def service_env(env: dict[str, str]) -> dict[str, str]:
    """The environment the supervisor, the server and the worker start with: what imports read and what a process
    needs to run, never a credential (the first command's AWS or OpenAI keys would otherwise live on in them)."""
    return {**import_time_env(env), **{k: env[k] for k in SERVICE_NAMES if k in env}}


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if (k.startswith(IMPORT_TIME_PREFIXES) or k in IMPORT_TIME_NAMES) and k not in NOT_IMPORT_TIME
            and not secret_name(k)}
