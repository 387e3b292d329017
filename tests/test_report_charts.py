"""The report's charts say what they mean (issue 27 item 5): a signal's own rejections apart from other rules',
heavy tails on a log axis, thresholds beyond the data named instead of squashing it, axis titles."""

from __future__ import annotations

import re

import numpy as np

from tasks.io.manifests import StageManifest
from tasks.ops.report.charts import histogram
from tasks.ops.report.sections import rules_reading


def test_three_groups_are_stacked_and_named_with_counts():
    rng = np.random.default_rng(0)
    svg = histogram("q", "q_x", rng.normal(5, 1, 500), rng.normal(1, 0.2, 30), [2.0],
                    names=("kept", "rejected by this rule", "rejected by other rules"),
                    others=rng.normal(5, 1, 70), x_title="q_x")
    assert "kept (500)" in svg and "rejected by this rule (30)" in svg and "rejected by other rules (70)" in svg
    assert 'class="axis-title"' in svg and ">rows</text>" in svg and ">q_x</text>" in svg
    assert svg.count('class="threshold"') == 1 and "(log scale)" not in svg


def test_a_threshold_beyond_every_value_is_named_not_drawn():
    words = np.arange(5, 120, dtype=float)
    svg = histogram("w", "q_gopher_words", words, None, [8.0, 100_000.0])
    caption = re.search(r"<figcaption>(.*?)</figcaption>", svg).group(1)
    assert "threshold 100,000 beyond the data" in caption
    assert svg.count('class="threshold"') == 1  # 8 is drawn; the axis ends near the data, not at 100,000
    assert re.findall(r'text-anchor="middle">([\d,.]+)</text>', svg)[-1] in {"119", "118"}


def test_a_heavy_tail_goes_on_a_log_axis_and_labels_stay_inside():
    lengths = np.concatenate([np.full(950, 40.0), np.linspace(1_000, 90_000, 50)])
    svg = histogram("len", "length", lengths, None, [80_000.0], x_title="characters")
    assert "characters (log scale)" in svg
    threshold = re.search(r'class="threshold".*?<text x="([\d.]+)"[^>]*text-anchor="(\w+)"', svg)
    assert threshold.group(2) == "end"  # near the right edge: the label runs left, never clipped


def test_each_signal_knows_the_rules_that_read_it():
    own = rules_reading(StageManifest(stage="quality", run_id="r", rows_in=0, rows_out=0, rows_rejected=0))
    assert own["q_gopher_words"] == {"quality.gopher.word_count"}
    assert own["q_c4_sentences"] == {"quality.c4.min_sentences"}
    assert own["q_lang_score"] == {"quality.language.low_score"}
    assert {"quality.fineweb.line_punct_ratio"} <= own["q_fw_line_punct"]
