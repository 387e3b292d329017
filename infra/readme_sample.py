"""The README's sample output, generated from a real run so it cannot go stale by hand.

    make run && .venv/bin/python infra/readme_sample.py --write      # the newest run under ./sluice-data
    .venv/bin/python infra/readme_sample.py --output ROOT --run-id ID  # print it only

It prints what `sluice demo` printed for that run (flows/cli/runs.run_summary, without the Prefect line, which depends
on the machine), with the output root shown as `/…/sluice-data`. `--write` puts it in README.md between the
`readme-sample` markers. tests/test_cli_views.py renders the test suite's own run of the demo the same way and
checks the README against it, so a change to what the demo does fails the tests until this is re-run.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

START, END = "<!-- readme-sample: start (infra/readme_sample.py) -->", "<!-- readme-sample: end -->"
_RUN_ID = re.compile(r"\b\d{8}T\d{6}Z-[0-9a-f]{6}\b|\bdemo-run\b")


def sample(output: str, run_id: str | None = None) -> str:
    from flows.cli import run_summary
    from tasks.io import layout
    from tasks.io.storage import Storage

    storage = Storage(output)
    run_id = run_id or storage.listdir(layout.RUNS)[-1]
    run = storage.read_json_if_exists(layout.run_json(run_id))
    if run is None:
        raise SystemExit(f"no run {run_id} under {output}")
    root = str(Path(output).resolve())
    return "\n".join(line.replace(root, "/…/sluice-data") for line in run_summary(run))


def normalized(text: str) -> str:
    """What must match: everything but the run id."""
    return _RUN_ID.sub("RUN_ID", text.strip())


def in_readme(readme: str) -> str:
    """The sample block of the README (inside its markers and code fence)."""
    block = readme[readme.index(START) + len(START):readme.index(END)]
    return block.strip().removeprefix("```").removesuffix("```").strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=str(REPO / "sluice-data"))
    ap.add_argument("--run-id")
    ap.add_argument("--write", action="store_true", help="replace the sample in README.md")
    args = ap.parse_args()
    text = sample(args.output, args.run_id)
    print(text)
    if args.write:
        path = REPO / "README.md"
        readme = path.read_text()
        head, rest = readme.split(START, 1)
        _, tail = rest.split(END, 1)
        path.write_text(f"{head}{START}\n```\n{text}\n```\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
