"""What the inspecting commands print for a person (issue 14, item 5): kept rows of a stage, quarantined rows
with their text and the failing rule, and $SLUICE_OUTPUT standing in for --output."""

from __future__ import annotations

import os
import subprocess

from conftest import SLUICE


def sluice(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_sample_shows_kept_rows_with_what_the_stage_added(demo_run):
    out, _ = demo_run
    proc = sluice("sample", "demo-run", "--stage", "quality", "-n", "3", env={"SLUICE_OUTPUT": str(out)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("quality of run demo-run: ") and lines[0].endswith("showing 3")
    assert sum(1 for line in lines if line.startswith("    text: ")) == 3
    assert all("q_lang=en" in line for line in lines if line.startswith("    q_"))
    missing = sluice("sample", "demo-run", "--stage", "nope", "--output", str(out))
    assert missing.returncode == 2 and "has no committed stage nope" in missing.stderr


def test_quarantine_shows_the_text_and_the_rule_with_its_threshold(demo_run):
    out, _ = demo_run
    proc = sluice("quarantine", "demo-run", "--output", str(out), "--stage", "quality", "--limit", "5")
    assert proc.returncode == 0, proc.stderr
    counts = [int(line.split()[-1].replace(",", "")) for line in proc.stdout.splitlines()[1:]
              if line.startswith("  quality")]
    assert counts == sorted(counts, reverse=True) and counts  # reasons by count, largest first
    assert proc.stdout.count("    failed: q_") == 5 and proc.stdout.count("    text: ") == 5


def test_output_is_required_unless_sluice_output_is_set(demo_run):
    out, _ = demo_run
    bare = sluice("runs", env={"SLUICE_OUTPUT": ""})
    assert bare.returncode == 2 and "--output" in bare.stderr
    listed = sluice("runs", env={"SLUICE_OUTPUT": str(out)})
    assert listed.returncode == 0 and "demo-run" in listed.stdout


def test_the_readme_sample_is_what_the_demo_prints(demo_run):
    """README.md's sample output is generated from a real `make run` (infra/readme_sample.py --write); the suite's
    run of the demo uses the same config, so a change to what the demo does fails here until it is regenerated."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "infra"))
    from readme_sample import in_readme, normalized, sample

    out, _ = demo_run
    printed = sample(str(out), "demo-run")
    assert "/…/sluice-data/runs/demo-run/report/index.html" in printed and "publish " in printed
    assert normalized(in_readme((REPO / "README.md").read_text())) == normalized(printed)
