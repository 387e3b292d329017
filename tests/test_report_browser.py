"""The run report in a real headless Chromium (Debian's `chromium`, driven directly): it loads offline with no
console error, every chart the run calls for is drawn, and a screenshot is kept in test-artifacts/ (issue 14)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# no network at all: a page that reaches for a CDN fails to load it, and says so on the console
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
# what a run of every stage must show (score/select/augment charts only where those stages ran)
EXPECTED = ["funnel", "quarantine-reasons", "length", "languages", "dedup-clusters", "contamination",
            "version-change", "quality-q_gopher_words", "quality-q_lang_score"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs "
                                "it; .ci/run too)")


def chromium(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *OFFLINE, f"--user-data-dir={tmp_path / 'profile'}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and re.search(r"error|uncaught|failed", line, re.I)
            or "Uncaught" in line or "ERR_NAME_NOT_RESOLVED" in line]


def test_the_console_check_catches_a_broken_page(tmp_path):
    """The check itself can fail: a page that calls a missing jQuery (as GE's Data Docs did offline) is caught."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><body><script src="https://cdn.example.org/jquery.js"></script>'
                    "<script>$(function(){})</script></body></html>")
    assert console_errors(chromium(page, tmp_path, "--dump-dom").stderr)


def test_the_report_loads_offline_with_every_chart(demo_run, tmp_path):
    out, run = demo_run
    report = Path(run["report"])
    dom = chromium(report, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    charts = re.findall(r'<figure class="chart" data-chart="([^"]+)"><figcaption>.*?</figcaption><svg',
                        dom.stdout, re.S)
    stages = set(run["stages"])
    expected = EXPECTED + (["score-score_perplexity"] if "score" in stages else []) + (
        ["select-labels"] if "select" in stages else []) + (["augment-share"] if "augment" in stages else [])
    assert set(expected) <= set(charts), sorted(set(expected) - set(charts))
    assert "could not be drawn" not in dom.stdout
    # rejected rows per reason: their text and the rule that failed with its threshold; the browse hint names the root
    assert "<th>what failed</th>" in dom.stdout and "<code>q_gopher_stop_words &lt; 2</code>" in dom.stdout
    assert f"sluice quarantine demo-run --output {out}" in dom.stdout
    assert dom.stdout.count('class="threshold"') >= 5  # thresholds drawn on the quality histograms
    contaminated = json.loads((out / "runs" / "demo-run" / "decontaminate" / "_manifest.json").read_text())
    assert ("<mark>" in dom.stdout) == (contaminated["rows_rejected"] > 0)  # matched spans highlighted, if any
    contracts = chromium(report.parent / "contracts.html", tmp_path, "--dump-dom")
    assert contracts.returncode == 0 and console_errors(contracts.stderr) == []
    assert contracts.stdout.count("<section id=") == len(run["stages"])
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    taken = chromium(report, tmp_path, f"--screenshot={shot}", "--window-size=1280,4200", "--hide-scrollbars")
    assert taken.returncode == 0 and shot.stat().st_size > 50_000, taken.stderr[-2000:]


def test_a_contaminated_row_shows_its_matched_span_highlighted(tmp_path):
    """The demo corpus holds no benchmark item, so the highlight is checked on a hand-made quarantined row."""
    import polars as pl

    from tasks.io.manifests import StageManifest
    from tasks.io.storage import Storage
    from tasks.ops.report.sections import contamination

    storage = Storage(str(tmp_path / "root"))
    text = "Intro words. Natalia sold clips to 48 of her friends in April. Outro words."
    start = text.index("Natalia")
    evidence = json.dumps({"action": "drop", "matches": [{"benchmark": "gsm8k", "item_id": "test-0",
                                                          "char_start": start, "char_end": start + 49}]})
    obj = storage.write_parquet("runs/r/decontaminate/rejected/part-0.parquet", pl.DataFrame(
        {"text": [text], "reason": ["decontaminate.gsm8k"], "evidence": [evidence]}))
    manifest = StageManifest(stage="decontaminate", run_id="r", rows_in=1, rows_out=0, rows_rejected=1,
                             rejected=[obj], summary={"gsm8k": {"docs_hit": 1, "items_found": 1}})
    page = tmp_path / "contamination.html"
    page.write_text(f"<!doctype html><html><body>{contamination(storage, manifest)}</body></html>")
    dom = chromium(page, tmp_path, "--dump-dom")
    assert console_errors(dom.stderr) == []
    assert "<mark>Natalia sold clips to 48 of her friends in April.</mark>" in dom.stdout
    assert 'data-chart="contamination"' in dom.stdout
