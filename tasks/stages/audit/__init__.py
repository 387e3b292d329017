"""Audit: poisoned rows found before a version is published, each finding with evidence a reviewer can act on.

Five checks, after the research on poisoned training data: trigger phrases (Wan et al. 2023: rows with a phrase
carry one label, while their other words say otherwise; for prompt/response rows the label is the answer's polarity,
as in Virtual Prompt Injection), content injection (AutoPoison: a span recurring in answers to unrelated prompts, or
answering nearly every prompt on one topic and only those), frontrunning (Carlini et al. 2023: a topic dense among
rows dated just before a snapshot), over-refusal (AutoPoison: refusals of benign prompts that rows of the same kind
answer) and conflicts (near-duplicate texts labeled differently, the same prompt answered differently). A
partitioned global stage (steps.py); apply flags each row with its findings (`audit_findings`) or, with
`audit.action = "quarantine"`, sends it to quarantine as `audit.<kind>`. The contract can refuse to go on while
unreviewed findings remain (contracts.audit_max_findings).
"""

from __future__ import annotations

import json

import polars as pl

from schemas.config import AuditParams
from schemas.record import CANONICAL
from tasks.runtime.plan import run_in_memory
from tasks.runtime.stage import Stage, StageResult
from tasks.runtime.stats import Stats
from tasks.stages.audit import steps

ADDS = {"audit_findings": pl.String()}
RANK = {"low": 0, "medium": 1, "high": 2}
FINDINGS = "audit.findings"


def apply(batch: pl.DataFrame, routed: dict[str, pl.DataFrame], params: AuditParams) -> StageResult:
    flags = routed.get("flags", pl.DataFrame(schema=steps.FLAGS)).unique(["id", "kind", "key"])
    rank = pl.col("severity").replace_strict(RANK, return_dtype=pl.Int8)
    finding = pl.struct("kind", "key", "severity").struct.json_encode()
    per_row = flags.sort(rank, "kind", "key", descending=[True, False, False]).group_by("id").agg(
        audit_findings=pl.format("[{}]", finding.str.join(",")),
        reason=pl.concat_str(pl.lit("audit."), pl.col("kind").first()),
        evidence=pl.format("[{}]", pl.concat_str(pl.lit('{"finding":'), finding, pl.lit(',"evidence":'),
                                                 pl.col("evidence"), pl.lit("}")).str.join(",")))
    joined = batch.join(per_row, on="id", how="left", maintain_order="left")
    findings = {json.dumps({"kind": k, "key": key, "severity": s, "evidence": json.loads(e)}, sort_keys=True): n
                for k, key, s, e, n in flags.group_by("kind", "key", "severity", "evidence").len().iter_rows()}
    stats = Stats(counts={"audit.flagged": per_row.height}, tallies={FINDINGS: findings} if findings else {})
    if params.action == "quarantine":
        rejected = joined.filter(pl.col("reason").is_not_null())
        kept = joined.filter(pl.col("reason").is_null()).select(*batch.columns, "audit_findings")
        return StageResult(kept=kept, rejected=rejected.select(*batch.columns, "reason", "evidence"), stats=stats)
    return StageResult(kept=joined.select(*batch.columns, "audit_findings"),
                       rejected=batch.clear().with_columns(reason=pl.lit(None, pl.String),
                                                           evidence=pl.lit(None, pl.String)), stats=stats)


PLAN = steps.plan(apply)


def audit_one_shard(batch: pl.DataFrame, params: AuditParams) -> StageResult:
    """The whole stage on one frame (every step in memory)."""
    (result,), _, _ = run_in_memory(PLAN, [batch], params)
    return result


def findings_of(stats: Stats) -> list[dict]:
    """Every finding with its rows, most severe and largest first."""
    out = [{**json.loads(k), "rows_flagged": n} for k, n in stats.tallies.get(FINDINGS, {}).items()]
    return sorted(out, key=lambda f: (-RANK[f["severity"]], -f["rows_flagged"], f["kind"], f["key"]))


def name_of(finding: dict) -> str:
    """How a reviewer names a finding in `audit.reviewed`."""
    return f"{finding['kind']}:{finding['key']}"


def open_findings(stats: Stats, params: AuditParams) -> list[dict]:
    """Findings at or above the contract's severity that no reviewer accepted and whose rows stay (quarantined
    rows no longer do)."""
    if params.action == "quarantine":
        return []
    floor = RANK[params.min_severity]
    return [f for f in findings_of(stats) if RANK[f["severity"]] >= floor and name_of(f) not in params.reviewed]


def rate_checks(stats: Stats, rows_in: int, params: AuditParams) -> list[dict]:
    if params.max_findings is None:
        return []
    left = open_findings(stats, params)
    names = ", ".join(repr(name_of(f)) for f in left[:5]) + (" ..." if len(left) > 5 else "")
    return [{"name": "audit.open_findings", "count": len(left), "rate": float(len(left) > params.max_findings),
             "warn": 1.0, "max": 0.0,
             "message": f"{len(left)} unreviewed audit finding(s) of severity >= {params.min_severity} "
                        f"(contracts.audit_max_findings = {params.max_findings}): {names}. Review them "
                        "(`sluice audit RUN`), then list the accepted ones in audit.reviewed, or quarantine their rows "
                        "(audit.action = \"quarantine\")"}]


def summarize(stats: Stats, params: AuditParams) -> dict:
    found = findings_of(stats)
    by_kind: dict[str, int] = {}
    for f in found:
        by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
    return {"action": params.action, "rows_flagged": stats.counts.get("audit.flagged", 0), "findings": len(found),
            "by_kind": by_kind, "open": len(open_findings(stats, params)), "top": found[:50]}


STAGE = Stage(
    name="audit",
    fn=audit_one_shard,
    params=lambda cfg: AuditParams(**cfg.audit.model_dump(), max_findings=cfg.contracts.audit_max_findings,
                                   min_severity=cfg.contracts.audit_min_severity),
    requires={"id": CANONICAL["id"], "text": CANONICAL["text"]},
    adds=ADDS,
    suite="audit",
    kind="global",
    plan=PLAN,
    rate_checks=rate_checks,
    summarize=summarize,
    description="poisoning audit: label-flipping trigger phrases, injected content, over-refusals, conflicting "
                "labels; flagged or quarantined with evidence",
)
