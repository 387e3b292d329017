"""Install Sluice's pinned dependencies into the virtualenv that runs this script (`make install`).

uv installs the 230 pinned packages of requirements.lock in about 10 s where pip took about 2.5 min on 2 cores
(both from an empty cache; uv downloads and unpacks in parallel). uv does not read pip's configuration, so this
script hands it pip's: the indexes, find-links, constraints and CA file this machine's pip is set up with, and
pip's rule that every index counts alike (`--index-strategy unsafe-best-match`). Where uv cannot be installed or
fails, the same locks are installed with pip, as before. Standard library only: it runs before anything is
installed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

UV_VERSION = "0.13.9"
ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("requirements.lock", "requirements-models.lock")
# pip configuration key -> uv option; each may hold several values, separated by whitespace
PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
             "constraint": "--constraint"}


def pip_config() -> dict[str, str]:
    """pip's effective settings (files, then PIP_* variables, later ones winning), by key without the section."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=False).stdout
    settings: dict[str, str] = {}
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        key = name.rsplit(".", 1)[-1]
        if key and value:
            settings[key] = value.strip().strip("'\"")
    return settings


def uv_options(settings: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv's command-line options and environment for pip's settings."""
    options = ["--index-strategy", "unsafe-best-match"]
    for key, flag in PIP_TO_UV.items():
        for value in settings.get(key, "").split():
            options += [flag, value]
    env = dict(os.environ)
    if settings.get("cert"):
        env.setdefault("SSL_CERT_FILE", settings["cert"])
    return options, env


def run(command: list[str], env: dict[str, str] | None = None) -> bool:
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode == 0


def with_uv() -> bool:
    got = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"], cwd=ROOT,
                         capture_output=True, text=True, check=False)  # pip's index warnings are noise here
    if got.returncode != 0:
        print(got.stdout + got.stderr, file=sys.stderr)
        return False
    # no --compile-bytecode: compiling all 230 packages took the install from 15 s to 58 s, more than a first
    # `make run` saves; `make test` compiles them (compile_bytecode below) before its hundreds of processes
    uv = [str(Path(sys.executable).parent / "uv"), "pip", "install", "--quiet", "--python", sys.executable]
    options, env = uv_options(pip_config())
    # uv refuses a constraint without a pinned version in --require-hashes mode; the hashed lock is --no-deps
    hashed = [o for i, o in enumerate(options) if o != "--constraint" and options[i - 1] != "--constraint"]
    return (run([*uv, *options, "-r", LOCKS[0]], env)
            and run([*uv, *hashed, "--no-deps", "--require-hashes", "-r", LOCKS[1]], env)
            and run([*uv, *options, "--no-deps", "-e", "."], env))


def with_pip() -> bool:
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    return (run([*pip, "--upgrade", "pip"]) and run([*pip, "-r", LOCKS[0]])
            and run([*pip, "--no-deps", "--require-hashes", "-r", LOCKS[1]])
            and run([*pip, "--no-deps", "--no-build-isolation", "-e", "."]))


def compile_bytecode() -> int:
    """Compile every installed module once (`make test`). pip does this at install and uv does not; where
    PYTHONDONTWRITEBYTECODE is set (as on this project's machines) Python never caches them itself, so every
    process compiled its imports again: 10.4 s to import prefect, polars, torch and transformers instead of 4.8 s,
    and the suite's subprocess tests ran about 50% slower. A module that does not compile (a package's Python 2
    test fixture) is skipped, as pip skips it."""
    import compileall
    import sysconfig

    started = time.monotonic()
    compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=2, workers=0)
    print(f"compiled the installed modules in {time.monotonic() - started:.0f} s", flush=True)
    return 0


def main() -> int:
    if sys.argv[1:] == ["--compile"]:
        return compile_bytecode()
    started = time.monotonic()
    print(f"installing the pinned dependencies ({', '.join(LOCKS)}) into {Path(sys.executable).parent.parent}",
          flush=True)
    if with_uv():
        print(f"installed with uv {UV_VERSION} in {time.monotonic() - started:.0f} s", flush=True)
        return 0
    print("uv could not install them; installing with pip instead (slower, a few minutes)", flush=True)
    if with_pip():
        print(f"installed with pip in {time.monotonic() - started:.0f} s", flush=True)
        return 0
    print("the install failed: see pip's message above; run `"
          f"{shlex.join([sys.executable, '-m', 'pip', 'install', '-r', LOCKS[0]])}` to retry", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
