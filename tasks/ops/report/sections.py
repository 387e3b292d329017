"""The report's charts and samples, read back from what the run committed (kept and quarantined parts), never from
memory of the run, so a report rebuilt later shows the same. Reads only the columns a chart needs and at most
SAMPLE_ROWS rows per chart source, so the report costs little next to the run at any size."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import polars as pl

from tasks.io import layout
from tasks.io.manifests import StageManifest
from tasks.ops.report.charts import bars, histogram

SAMPLE_ROWS = 50_000  # a histogram's shape is settled long before; the report must stay cheap next to the run
SAMPLES_PER_REASON = 3
_THRESHOLD = re.compile(r"(q_\w+) [<>] (-?[\d.]+(?:e[-+]?\d+)?)")


def read_columns(storage, objects: list, wanted: list[str], limit: int = SAMPLE_ROWS) -> pl.DataFrame:
    """The `wanted` columns that the parts have, from the first parts until `limit` rows."""
    frames, rows = [], 0
    for obj in objects:
        if rows >= limit:
            break
        path = obj.path if hasattr(obj, "path") else obj["path"]
        have = [c for c in wanted if c in storage.parquet_schema(path)]
        if not have:
            continue
        frame = storage.read_parquet(path, columns=have).head(limit - rows)
        frames.append(frame)
        rows += frame.height
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def funnel(manifests: list[StageManifest]) -> str:
    if not manifests:
        return ""
    labels = ["input", *(m.stage for m in manifests)]
    values = [manifests[0].rows_in, *(m.rows_out for m in manifests)]
    series = {"rows": values}
    note = "input = rows the first stage read; synthetic rows count in the stage that made them"
    edited = [edited_rows(m) for m in manifests]
    if any(edited):
        series["rows it edited (kept, text changed)"] = [0, *edited]
        removed = ", ".join(f"{m.stage} {chars_removed(m)}" for m in manifests if edited_rows(m))
        note += f"; characters removed by edits: {removed} (sluice edits RUN --stage S)"
    return bars("funnel", "Rows after each stage", labels, series, note=note)


def edited_rows(m: StageManifest) -> int:
    return m.stats.counts.get("edits.rows", 0)


def chars_removed(m: StageManifest) -> str:
    """Characters the stage's edits removed, and their share of all it read."""
    removed, read = m.stats.counts.get("edits.chars_removed", 0), m.stats.counts.get("edits.chars_in", 0)
    return f"{removed:,} ({removed / read:.1%})" if read else f"{removed:,}"


def edits(manifests: list[StageManifest], run_id: str) -> str:
    """Per stage and rule: rows edited and characters removed (the edit ledger's counts)."""
    rows = []
    for m in manifests:
        counts = m.stats.counts
        for key in sorted(k for k in counts if k.startswith("edits.") and k.endswith(".rows") and k != "edits.rows"):
            rule = key.removeprefix("edits.").removesuffix(".rows")
            rows.append(f"<tr><td>{html.escape(m.stage)}</td><td>{html.escape(rule)}</td>"
                        f"<td>{counts[key]:,}</td><td>{counts.get(f'edits.{rule}.chars_removed', 0):,}</td></tr>")
    if not rows:
        return ""
    return ("<table><tr><th>stage</th><th>rule</th><th>rows edited</th><th>characters removed</th></tr>"
            + "".join(rows) + f"</table><p>Each row before and after, removed spans marked: <code>sluice edits "
            f"{html.escape(run_id)} --stage STAGE</code>. Rows a rule would have cut by more than its "
            "max_removed_fraction are in the quarantine (reason …removed_too_much), not here.</p>")


def quarantine(storage, manifests: list[StageManifest], run_id: str) -> str:
    """Reasons by count (largest first), then a few rejected rows per reason: the text, the rule and threshold
    that failed (or the stage's evidence)."""
    counts = [(m.stage, code, n) for m in manifests for code, n in m.rejected_by_reason.items()]
    if not counts:
        return "<p>No row was quarantined.</p>"
    counts.sort(key=lambda t: (-t[2], t[0], t[1]))
    out = [bars("quarantine-reasons", "Quarantined rows by reason", [c for _, c, _ in counts],
                {"rows": [n for _, _, n in counts]})]
    for m in manifests:
        if not m.rejected_by_reason:
            continue
        sample = read_columns(storage, m.rejected, ["reason", "text", "raw", "evidence", "src_file", "src_line"],
                              limit=50_000)
        if sample.is_empty():
            continue
        picked = sample.group_by("reason", maintain_order=True).head(SAMPLES_PER_REASON)
        rows = []
        for r in picked.iter_rows(named=True):
            text = r.get("text") if r.get("text") is not None else r.get("raw")
            rows.append(f"<tr><td><code>{html.escape(r['reason'])}</code></td>"
                        f"<td>{_failed(r.get('evidence'))}</td><td class=text>{html.escape((text or '')[:300])}</td>"
                        "</tr>")
        out.append(f"<h3>{html.escape(m.stage)}: sample of quarantined rows</h3><table class=samples><thead><tr>"
                   "<th>reason</th><th>what failed</th><th>text</th></tr></thead><tbody>" + "".join(rows)
                   + "</tbody></table>")
    out.append(f"<p>Browse them all: <code>sluice quarantine {html.escape(run_id)} --output "
               f"{html.escape(storage.root)}</code></p>")
    return "".join(out)


def _failed(evidence: str | None) -> str:
    try:
        ev = json.loads(evidence or "{}")
    except ValueError:
        return html.escape((evidence or "")[:200])
    if isinstance(ev, dict) and "test" in ev:
        values = ", ".join(f"{k} = {v}" for k, v in ev.items() if k not in ("rule", "test"))
        return f"<code>{html.escape(ev['test'])}</code><br><small>{html.escape(values)}</small>"
    return f"<small>{html.escape(json.dumps(ev)[:240])}</small>"


def _quality_rules(manifest: StageManifest) -> tuple:
    """(params, [(family, rule, expression)]): the quality stage's rules as the run configured them."""
    from schemas.config import QualityConfig
    from tasks.stages.quality import FAMILY_RULES

    params = QualityConfig(**manifest.params) if manifest.params else QualityConfig()
    sections = {"gopher_repetition": params.gopher_repetition, "gopher": params.gopher_quality, "c4": params.c4,
                "fineweb": params.fineweb}
    return params, [(family, name, expr) for family, rules in FAMILY_RULES.items()
                    for name, expr in rules(sections[family])]


def thresholds(manifest: StageManifest) -> dict[str, list[float]]:
    """signal -> the thresholds its rules test, read from the quality rules as the run configured them."""
    from tasks.stages.quality import rule_test

    params, rules = _quality_rules(manifest)
    found: dict[str, list[float]] = {}
    for family, name, expr in rules:
        if f"{family}.{name}" in params.disable:
            continue
        for signal, value in _THRESHOLD.findall(rule_test(expr)):
            found.setdefault(signal, []).append(float(value))
    if params.language.enabled:
        found["q_lang_score"] = [params.language.min_score]
    return found


def _numeric(df: pl.DataFrame, prefix: str) -> list[str]:
    return [c for c, t in df.schema.items() if c.startswith(prefix) and (t.is_numeric() or t == pl.Boolean)]


def rules_reading(manifest: StageManifest) -> dict[str, set[str]]:
    """signal column -> the quality reason codes whose rule reads it (so its chart can tell its own rejections)."""
    found: dict[str, set[str]] = {"q_lang": {"quality.language.not_allowed"},
                                  "q_lang_score": {"quality.language.low_score"},
                                  "q_c4_lines_removed": {"quality.c4.line_filter.removed_too_much"}}
    for family, name, expr in _quality_rules(manifest)[1]:
        for signal in expr.meta.root_names():
            found.setdefault(signal, set()).add(f"quality.{family}.{name}")
    return found


CATEGORIES = 30  # an integer column with at most this many distinct values is drawn as bars (a cluster id, a count)


def signals(storage, m: StageManifest, prefix: str, marks: dict[str, list[float]]) -> str:
    """One chart per numeric signal column the stage added: kept rows, rows rejected by the rule that reads this
    signal, rows rejected by other rules. Flags and small integer categories as bars; columns with one value
    everywhere (all-zero PII counts) are named in a note instead of drawn."""
    kept = read_columns(storage, m.outputs, _all_columns(storage, m.outputs, prefix))
    rejected = (read_columns(storage, m.rejected, [*kept.columns, "reason"]) if m.rejected and kept.width
                else pl.DataFrame())
    own = rules_reading(m) if m.stage == "quality" else {}
    out, constant = [], []
    for col in _numeric(kept, prefix):
        values = pl.concat([kept[col].cast(pl.Float64), rejected[col].cast(pl.Float64)]
                           if col in rejected.columns else [kept[col].cast(pl.Float64)]).drop_nulls()
        if values.len() == 0:
            continue
        if values.n_unique() == 1:
            constant.append(f"{col} (all {_value(values[0])})")
            continue
        if col in rejected.columns and "reason" in rejected.columns:
            mine = rejected["reason"].is_in(sorted(own.get(col, set())))
            r_own, r_other = rejected.filter(mine)[col], rejected.filter(~mine)[col]
        else:
            r_own = r_other = pl.Series(col, [], dtype=kept[col].dtype)
        chart_id, labels = f"{m.stage}-{col}", ("kept", "rejected by this rule", "rejected by other rules")
        if not own.get(col):
            labels = ("kept", "rejected", "rejected by other rules")
            r_own, r_other = pl.concat([r_own, r_other]), r_other.clear()
        if kept[col].dtype == pl.Boolean or (kept[col].dtype.is_integer() and values.n_unique() <= CATEGORIES
                                             and col not in marks):
            out.append(_category_bars(chart_id, col, kept[col], r_own, r_other, labels))
            continue
        out.append(histogram(chart_id, col, _finite(kept[col]), _finite(r_own), marks.get(col), names=labels,
                             others=_finite(r_other), x_title=col))
    if constant:
        out.append(f'<p class="muted">Not drawn, one value in every row: {html.escape(", ".join(constant))}.</p>')
    return "".join(out)


def _finite(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Float64).drop_nulls().to_numpy()


def _value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


def _category_bars(chart_id: str, col: str, kept: pl.Series, r_own: pl.Series, r_other: pl.Series,
                   labels: tuple[str, ...]) -> str:
    """A flag or a category: rows per value, kept and rejected (two series at most: other rules' rejections join
    the rejected ones)."""
    rejected = pl.concat([r_own.cast(kept.dtype), r_other.cast(kept.dtype)])
    keys = sorted(set(kept.drop_nulls().to_list()) | set(rejected.drop_nulls().to_list()))
    k_counts = dict(kept.drop_nulls().value_counts().iter_rows())
    r_counts = dict(rejected.drop_nulls().value_counts().iter_rows()) if rejected.len() else {}
    series = {"kept": [k_counts.get(v, 0) for v in keys]}
    if r_counts:
        series["rejected"] = [r_counts.get(v, 0) for v in keys]
    return bars(chart_id, f"{col} (rows per value)", [str(v) for v in keys], series)


def _all_columns(storage, objects: list, prefix: str) -> list[str]:
    if not objects:
        return []
    return [c for c in storage.parquet_schema(objects[0].path) if c.startswith(prefix)]


def lengths_and_languages(storage, manifests: list[StageManifest]) -> str:
    """Document length before the first filter and after the last stage; languages likewise (as quality saw them)."""
    by = {m.stage: m for m in manifests}
    from tasks.runtime.registry import SINKS

    data = [m for m in manifests if m.stage not in SINKS]
    if not data:
        return ""
    first, last = data[0], data[-1]
    after = read_columns(storage, last.outputs, ["id", "text"])
    before = read_columns(storage, first.outputs, ["id", "text"])
    out = []
    if after.width and before.width:
        kept_ids = set(after["id"].to_list())
        removed = before.filter(~pl.col("id").is_in(list(kept_ids)))
        out.append(histogram("length", "Document length in characters: after the last stage vs removed on the way",
                             after["text"].str.len_chars().to_numpy(), removed["text"].str.len_chars().to_numpy(),
                             names=("after", "removed")))
    if "quality" in by:
        q = by["quality"]
        kept = read_columns(storage, q.outputs, ["q_lang"])
        rejected = read_columns(storage, q.rejected, ["q_lang"])
        if kept.width:
            after_lang = read_columns(storage, last.outputs, ["q_lang"]) if last is not q else kept
            before_lang = pl.concat([kept, rejected], how="diagonal_relaxed") if rejected.width else kept
            top = before_lang["q_lang"].value_counts(sort=True).head(12)
            langs = [str(x) for x in top["q_lang"].to_list()]
            after_counts = dict(after_lang["q_lang"].value_counts().iter_rows()) if after_lang.width else {}
            out.append(bars("languages", "Languages (fastText lid.176): entering quality vs after the last stage",
                            langs, {"before": top["count"].to_list(),
                                    "after": [after_counts.get(code, 0) for code in langs]}))
    return "".join(out)


def dedup_clusters(storage, m: StageManifest) -> str:
    """Cluster sizes: each removed duplicate names its survivor; size = removed copies + the survivor."""
    ev = read_columns(storage, m.rejected, ["reason", "evidence"])
    if ev.is_empty():
        return "<p>No duplicates.</p>"
    survivors = ev.filter(pl.col("reason").str.starts_with("dedup.")).with_columns(
        survivor=pl.col("evidence").str.json_path_match("$.survivor_id")).drop_nulls("survivor")
    if survivors.is_empty():
        return ""
    sizes = survivors.group_by("survivor", "reason").agg(size=pl.len() + 1)
    hist = sizes.group_by("size").agg(pl.len().alias("clusters")).sort("size").head(30)
    return bars("dedup-clusters", "Duplicate clusters by size (rows in the cluster, survivor included)",
                [str(s) for s in hist["size"].to_list()], {"clusters": hist["clusters"].to_list()},
                note=f"{sizes.height:,} clusters; exact and near")


def contamination(storage, m: StageManifest) -> str:
    """Per benchmark: documents hit; then matched documents with the matched span highlighted."""
    summary = m.summary or {}
    per = {k: v for k, v in summary.items() if isinstance(v, dict)}
    out = []
    if per:
        names = sorted(per)
        out.append(bars("contamination", "Contamination: documents hit per benchmark", names,
                        {"documents hit": [per[n].get("docs_hit", 0) or 0 for n in names]}))
    hits = read_columns(storage, m.rejected, ["text", "evidence", "reason"], limit=2_000)
    rows = []
    for r in hits.head(5).iter_rows(named=True):
        try:
            match = (json.loads(r["evidence"] or "{}").get("matches") or [{}])[0]
        except ValueError:
            continue
        text, start, end = r["text"] or "", match.get("char_start"), match.get("char_end")
        if start is None or end is None:
            shown = html.escape(text[:300])
        else:
            lo = max(0, start - 120)
            shown = (html.escape(text[lo:start]) + "<mark>" + html.escape(text[start:end]) + "</mark>"
                     + html.escape(text[end:end + 120]))
        rows.append(f"<tr><td>{html.escape(str(match.get('benchmark')))}<br><small>"
                    f"{html.escape(str(match.get('item_id')))}</small></td><td class=text>{shown}</td></tr>")
    if rows:
        out.append("<table class=samples><thead><tr><th>benchmark / item</th><th>matched span</th></tr></thead>"
                   "<tbody>" + "".join(rows) + "</tbody></table>")
    return "".join(out)


def selection(storage, m: StageManifest) -> str:
    """What selection kept, per label when rows are labeled (else the policy counts are in the quarantine)."""
    kept = read_columns(storage, m.outputs, ["label"])
    removed = read_columns(storage, m.rejected, ["label", "reason"])
    if not kept.width or kept["label"].null_count() == kept.height:
        return ""
    labels = sorted({*kept["label"].drop_nulls().to_list(), *(removed["label"].drop_nulls().to_list()
                                                              if removed.width else [])})
    k = dict(kept["label"].value_counts().iter_rows())
    r = dict(removed["label"].value_counts().iter_rows()) if removed.width else {}
    return bars("select-labels", "Selection: rows kept and removed per label", labels,
                {"kept": [k.get(x, 0) for x in labels], "removed": [r.get(x, 0) for x in labels]})


def audit_findings(m: StageManifest) -> str:
    """The poisoning audit's findings: most severe and largest first, their statistics and example rows."""
    from tasks.stages import audit

    found = audit.findings_of(m.stats)
    if not found:
        return "<p>The audit found nothing.</p>" if m.stage == "audit" else ""
    rows = []
    for f in found[:30]:
        stats = {k: v for k, v in f["evidence"].items() if k not in ("examples", "also", "labels")}
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            f["severity"], audit.name_of(f), f"{f['rows_flagged']:,}",
            ", ".join(f"{k} {v}" for k, v in stats.items()), ", ".join(f["evidence"].get("examples", [])))) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("severity", "finding (audit.reviewed takes this name)", "rows",
                                            "statistics", "example rows"))
    more = f"<p class=\"muted\">{len(found) - 30} more: <code>sluice audit RUN</code></p>" if len(found) > 30 else ""
    action = (m.summary or {}).get("action", "flag")
    note = (f"<p>{len(found)} finding(s); rows were {'quarantined' if action == 'quarantine' else 'flagged'} "
            f"({m.stats.counts.get('audit.flagged', 0):,} rows).</p>")
    return f"{note}<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def augment_share(m: StageManifest) -> str:
    slices = (m.summary or {}).get("slices") or {}
    if not slices:
        return ""
    names = sorted(slices)
    gate = (m.summary or {}).get("gate") or {}
    note = ("gate refusals: " + ", ".join(f"{k.removeprefix('augment.gate.')} {v}" for k, v in gate.items())
            if gate else "")
    return bars("augment-share", "Augment: real and synthetic rows per slice", names,
                {"real": [slices[n]["real"] for n in names], "synthetic": [slices[n]["synthetic"] for n in names]},
                note=note)


def tokens_by_source(publish: StageManifest) -> str:
    """Rows and tokens per source of the published version's token shards."""
    tokens = publish.published["tokens"]
    rows = publish.published.get("rows_by_source", {})
    names = list(tokens["tokens_by_source"])
    tok = tokens["tokenizer"]
    return bars("tokens-by-source", "Tokens per source in the version's token shards", names,
                {"tokens": [tokens["tokens_by_source"][n] for n in names]},
                note=f"{tokens['tokens']:,} tokens of {tokens['rows']:,} rows, {tok['name']} ({tok['dtype']}); "
                     + ", ".join(f"{n}: {tokens['tokens_by_source'][n] / max(rows.get(n, 0), 1):,.1f} tokens a row"
                                 for n in names))


def change_vs_previous(storage, run: dict) -> str:
    published = run.get("published")
    if not published:
        return ""
    diff = storage.read_json_if_exists(layout.version_diff(published["dataset"], published["version"]))
    if not diff:
        return ""
    labels = ["previous version", "added", "removed", "unchanged", "this version"]
    values = [diff.get("rows_a", 0), diff.get("rows_added", 0), diff.get("rows_removed", 0),
              diff.get("rows_unchanged", 0), diff.get("rows_b", 0)]
    prev = f"v{diff['a']}" if diff.get("a") else "no previous version"
    return bars("version-change", f"Change against the previous published version ({prev})", labels,
                {"rows": values}, note=f"changed fraction {diff.get('changed_fraction', 0):.2%}")
