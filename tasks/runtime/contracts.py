"""Runs a stage's Great Expectations suite on its output, in an ephemeral GE context, and renders Data Docs.

GE is imported lazily: it costs seconds to import, and a run that resumes past every stage never needs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import polars as pl

from schemas.expectations import columns_of, load_suite, scoped
from tasks.io import layout
from tasks.io.manifests import DataObject

if TYPE_CHECKING:
    from tasks.runtime.context import RunContext

log = logging.getLogger("sluice")
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 5}


@dataclass
class ContractResult:
    suite: str
    success: bool
    failures: list[str] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"suite": self.suite, "success": self.success, "failures": self.failures, "results": self.results}

    @classmethod
    def merge(cls, suite: str, parts: list[dict], labels: list[str]) -> ContractResult:
        """Combine per-shard results into one per expectation: it passes only if it passed on every shard."""
        merged: dict[str, dict] = {}
        failures = []
        for part, label in zip(parts, labels, strict=True):
            for r in part["results"]:
                key = f"{r['expectation']}|{sorted(r['kwargs'].items())}"
                agg = merged.setdefault(key, {**r, "result": {"unexpected_count": 0, "element_count": 0},
                                              "success": True, "scope": "shard", "failed_shards": []})
                for k in ("unexpected_count", "element_count"):
                    agg["result"][k] += r["result"].get(k) or 0
                if not r["success"]:
                    agg["success"] = False
                    agg["failed_shards"].append(label)
            failures += [f"{f} [shard {label}]" for f in part["failures"]]
        results = list(merged.values())
        return cls(suite, all(r["success"] for r in results), failures, results)


class ContractError(RuntimeError):
    """A stage's output broke its contract; nothing downstream runs and the stage is not committed."""

    def __init__(self, stage: str, result: ContractResult | dict):
        self.stage = stage
        self.result = result if isinstance(result, ContractResult) else ContractResult(
            result.get("suite", stage), bool(result.get("success")), result.get("failures", []),
            result.get("results", []))
        super().__init__(f"contract of stage '{stage}' failed: " + "; ".join(self.result.failures))


def _describe(exp_type: str, kwargs: dict, result: dict) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in ("batch_id",))
    detail = []
    if result.get("unexpected_count") is not None:
        detail.append(f"{result['unexpected_count']} unexpected")
        partial = result.get("partial_unexpected_list") or []
        if partial:
            detail.append(f"e.g. {partial[:3]!r}")
    if "observed_value" in result:
        detail.append(f"observed {result['observed_value']!r}")
    return f"{exp_type}({args})" + (f": {', '.join(detail)}" if detail else "")


class Contracts:
    """One ephemeral GE context per run; Data Docs go to `docs_dir` (a local folder)."""

    def __init__(self, docs_dir: str | None = None):
        self._lock = threading.Lock()  # GE contexts are not thread-safe; shard tasks run in threads
        self._definitions: dict[str, tuple] = {}
        self._rendered: list = []  # validation results to render into Data Docs, once, when the docs are copied
        self.docs_dir = docs_dir or tempfile.mkdtemp(prefix="sluice-docs-")
        # importing GE takes 2-5 s on 2 cores; it starts in the background here and the flow waits for it
        # (`ready`) before its first stage, so no stage's time holds it: measured, overlapping it with ingest
        # gained no wall time on 2 cores and made ingest look 2-3x slower (bench/stage_ab.py)
        self._failed: BaseException | None = None
        self._built = threading.Thread(target=self._build, name="ge-context", daemon=True)
        self._built.start()

    def _build(self) -> None:
        try:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            logging.getLogger("great_expectations").setLevel(logging.ERROR)
            self.gx = gx
            self.ctx = gx.get_context(mode="ephemeral")
            self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
            self.datasource = self.ctx.data_sources.add_pandas("sluice")
            self.ctx.add_data_docs_site(
                site_name="sluice",
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": self.docs_dir},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
        except BaseException as exc:  # re-raised in the thread that needs the context
            self._failed = exc

    def ready(self) -> float:
        """Wait until the GE context is built; the seconds waited (a run records them apart from its stages')."""
        started = time.perf_counter()
        self._ready()
        return round(time.perf_counter() - started, 3)

    def _ready(self) -> None:
        self._built.join()
        if self._failed is not None:
            raise RuntimeError(f"could not set up Great Expectations: {self._failed}") from self._failed

    def validate(self, name: str, suite_def: dict, df: pd.DataFrame, docs: bool = True) -> ContractResult:
        """Validate `df`; with `docs`, also render it into Data Docs (costly per call: per-shard checks pass
        docs=False and are rendered only when they fail)."""
        self._ready()
        with self._lock:
            result = self._validate(name, suite_def, df, docs)
            if not docs and not result.success:
                result = self._validate(f"{name}.failed", suite_def, df, True)
            return result

    def _definition(self, suite_def: dict):
        """One GE suite + validation definition (+ checkpoint) per distinct suite, reused for every batch:
        building them costs more than validating a shard."""
        gx = self.gx
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        digest = hashlib.sha256(json.dumps(suite_def, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{suite_def.get('name', 'suite')}-{digest}"
        if name not in self._definitions:
            suite = self.ctx.suites.add(gx.ExpectationSuite(name=name))
            for exp in suite_def["expectations"]:
                conf = ExpectationConfiguration(type=exp["type"], kwargs=dict(exp.get("kwargs", {})))
                suite.add_expectation(conf.to_domain_obj())
            batch_def = self.datasource.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
            vd = self.ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
            # no UpdateDataDocsAction: it rebuilds the site after every validation (0.5 s a stage); the results
            # to render are kept and the site is built once, in copy_docs_to
            checkpoint = self.ctx.checkpoints.add(gx.Checkpoint(
                name=name, validation_definitions=[vd], actions=[], result_format=RESULT_FORMAT))
            self._definitions[name] = (vd, checkpoint)
        return self._definitions[name]

    def _validate(self, name: str, suite_def: dict, df: pd.DataFrame, docs: bool) -> ContractResult:
        from great_expectations.core.run_identifier import RunIdentifier

        vd, checkpoint = self._definition(suite_def)
        if docs:
            run = checkpoint.run(batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=name))
            identifier, validation = next(iter(run.run_results.items()))
            self._rendered += [identifier, identifier.expectation_suite_identifier]
        else:
            # the quick pass: passing shards need no counts (they are 0); a failure is re-run with details
            validation = vd.run(batch_parameters={"dataframe": df}, result_format="BOOLEAN_ONLY")
        results, failures = [], []
        for r in validation.results:
            cfg = r.expectation_config
            kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
            res = {k: v for k, v in (r.result or {}).items()
                   if k in ("unexpected_count", "unexpected_percent", "observed_value", "element_count")}
            if not docs and r.success:
                res = {"unexpected_count": 0, "element_count": len(df)}
            if r.exception_info and r.exception_info.get("raised_exception"):
                res["exception"] = r.exception_info.get("exception_message")
            results.append({"expectation": cfg.type, "kwargs": kwargs, "success": bool(r.success), "result": res})
            if not r.success:
                failures.append(_describe(cfg.type, kwargs, {**(r.result or {}), **res}))
        return ContractResult(suite=name, success=bool(validation.success), failures=failures, results=results)

    def copy_docs_to(self, copy_file) -> None:
        """Render the run's stage validations into Data Docs (one build), then hand every file to
        `copy_file(relative_path, bytes)` (storage may be S3)."""
        self._ready()
        with self._lock:
            if self._rendered:
                self.ctx.build_data_docs(site_names=["sluice"], resource_identifiers=self._rendered)
                self._rendered = []
        for root, _, files in os.walk(self.docs_dir):
            for f in files:
                full = os.path.join(root, f)
                with open(full, "rb") as fh:
                    copy_file(os.path.relpath(full, self.docs_dir), fh.read())

    def close(self) -> None:
        self._built.join()
        shutil.rmtree(self.docs_dir, ignore_errors=True)


_per_run: dict[str, Contracts] = {}
_per_run_lock = threading.Lock()


def contracts_for(run_id: str) -> Contracts:
    """This process's GE context for a run (created on first use; a worker process gets its own)."""
    with _per_run_lock:
        if run_id not in _per_run:
            _per_run[run_id] = Contracts()
        return _per_run[run_id]


def close_contracts(run_id: str) -> Contracts | None:
    with _per_run_lock:
        return _per_run.pop(run_id, None)


# ------------------------------------------------------------------------------------ validating a stage's output

def for_ge(frame: pl.DataFrame) -> pd.DataFrame:
    """The frame as GE's pandas engine reads it, on Arrow-backed columns: no Python object per string, so a
    50,000-row shard of ~900-character texts validates in 0.46 s instead of 1.72 s with the same results (a null
    shows as <NA> in the evidence, not nan)."""
    return frame.to_pandas(use_pyarrow_extension_array=True)


def validate_shard(ctx: RunContext, stage_name: str, suite_name: str, shard: str, kept: pl.DataFrame
                   ) -> ContractResult:
    """Row-level ('shard' scope) expectations on one shard's kept rows, before they are written."""
    suite = scoped(load_suite(suite_name), "shard")
    cols = [c for c in columns_of(suite) if c in kept.columns]
    return contracts_for(ctx.run_id).validate(f"{ctx.run_id}.{stage_name}.{shard}", suite,
                                              for_ge(kept.select(cols)), docs=False)


def _read_columns(ctx: RunContext, outputs: Iterable[DataObject], columns: list[str]) -> pl.DataFrame:
    frames = []
    for obj in outputs:
        data = ctx.storage.read_bytes(obj.path)
        present = [c for c in columns if c in pl.read_parquet_schema(data)]
        frames.append(pl.read_parquet(data, columns=present))
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()


UNIQUENESS = {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique",
              "expect_select_column_values_to_be_unique_within_record"}
GROUP_BYTES_PER_ROW = 100  # a group holds its columns in Arrow (an id ~40 bytes), their hash and a split copy


def _groups(ctx: RunContext, rows: int) -> int:
    """Groups of rows checked one at a time, each a quarter of the task memory budget (GE itself then sees one
    bucket of `shard_rows` rows at a time)."""
    return max(1, -(-rows * GROUP_BYTES_PER_ROW // max(1, ctx.config.runner.task_memory // 4)))


def _grouped_columns(ctx: RunContext, stage_name: str, outputs: list[DataObject], cols: list[str], groups: int
                     ) -> Iterator[pl.DataFrame]:
    """The named columns of the stage's output, one hash group at a time (equal values share a group). More than
    one group is a shuffle through the run's storage: each output's columns are split once into per-group files
    under the stage's `_work/contracts`, then each group is read back alone, so no step holds a column of the whole
    corpus (10M ids and their hashes were ~0.5 GB in the committing process)."""
    if groups == 1:
        yield _read_columns(ctx, outputs, cols)
        return
    folder = layout.stage_dir(ctx.run_id, stage_name) + "/_work/contracts"
    ctx.storage.delete(folder)
    for i, obj in enumerate(outputs):
        part = _read_columns(ctx, [obj], cols)
        split = part.with_columns(_group=pl.struct(cols).hash(seed=1) % groups).partition_by(
            "_group", as_dict=True, include_key=False, maintain_order=True)
        for (g,), piece in split.items():
            ctx.storage.write_parquet(f"{folder}/g{g:05d}/{i:06d}.parquet", piece)
    try:
        for g in range(groups):
            names = ctx.storage.listdir(f"{folder}/g{g:05d}")
            frames = [ctx.storage.read_parquet(f"{folder}/g{g:05d}/{n}") for n in sorted(names)]
            yield pl.concat(frames, how="vertical") if frames else pl.DataFrame(
                schema={c: pl.String for c in cols})
    finally:
        ctx.storage.delete(folder)


def _validate_global(ctx: RunContext, contracts: Contracts, stage_name: str, suite: dict, outputs: list[DataObject]
                     ) -> ContractResult:
    """Stage-wide expectations. Uniqueness is checked in hash groups sized by `runner.task_memory` (read back
    from storage one at a time), and within a group in buckets of at most `shard_rows` rows for GE (equal values
    share a group and a bucket, so per-bucket uniqueness is exact). Other stage-wide expectations (none of the
    packaged suites has one) need the columns whole."""
    partitioned = {**suite, "expectations": [e for e in suite["expectations"] if e["type"] in UNIQUENESS]}
    whole = {**suite, "expectations": [e for e in suite["expectations"] if e["type"] not in UNIQUENESS]}
    parts: list[tuple[str, dict]] = []
    if whole["expectations"]:
        frame = _read_columns(ctx, outputs, columns_of(whole))
        res = contracts.validate(f"{ctx.run_id}.{stage_name}.global", whole, for_ge(frame))
        parts.append(("all", res.as_dict()))
    if partitioned["expectations"]:
        cols = columns_of(partitioned)
        groups = _groups(ctx, sum(o.rows for o in outputs))
        for g, frame in enumerate(_grouped_columns(ctx, stage_name, outputs, cols, groups)):
            buckets = max(1, -(-frame.height // ctx.config.ingest.shard_rows))
            keyed = frame.select(cols).with_columns(
                (pl.struct(cols).hash(seed=0) % buckets).alias("_bucket")
            ).partition_by("_bucket", as_dict=True, include_key=False, maintain_order=True)
            for b in range(buckets):
                part = keyed.get((b,), frame.select(cols).clear())
                label = f"bucket {b}" if groups == 1 else f"group {g} bucket {b}"
                res = contracts.validate(f"{ctx.run_id}.{stage_name}.unique-{g}-{b}", partitioned, for_ge(part),
                                         docs=buckets == 1 and groups == 1)
                parts.append((label, res.as_dict()))
    merged = ContractResult.merge(suite["name"], [p for _, p in parts], [label for label, _ in parts])
    merged.failures = [f.replace("[shard ", "[") for f in merged.failures]
    for r in merged.results:
        r.pop("failed_shards", None)
        r.pop("scope", None)
    return merged


def _extend(result: ContractResult, part: ContractResult, failures: list[str] | None = None, *, scope: str) -> None:
    """Add a stage-level validation to the merged shard result."""
    result.results += [{**r, "scope": scope} for r in part.results]
    result.failures += part.failures if failures is None else failures
    result.success = result.success and part.success


def _rate_ceiling(ctx: RunContext, contracts: Contracts, stage_name: str, ceiling: float, rows_in: int,
                  rows_rejected: int) -> tuple[ContractResult, list[str]]:
    rate = rows_rejected / rows_in if rows_in else 0.0
    suite = {"expectations": [{"type": "expect_column_values_to_be_between",
                               "kwargs": {"column": "reject_rate", "min_value": 0, "max_value": ceiling}}]}
    checked = contracts.validate(f"{ctx.run_id}.{stage_name}.rates", suite, pd.DataFrame({"reject_rate": [rate]}))
    return checked, [f"{f} (reject rate {rate:.4f} > ceiling {ceiling})" for f in checked.failures]


def _stage_rates(ctx: RunContext, contracts: Contracts, stage_name: str, rate_checks: list[dict], rows_in: int
                 ) -> tuple[ContractResult, list[str]]:
    suite = {"expectations": [{"type": "expect_column_values_to_be_between",
                               "kwargs": {"column": c["name"], "min_value": 0, "max_value": c["max"]}}
                              for c in rate_checks]}
    frame = pd.DataFrame({c["name"]: [c["rate"]] for c in rate_checks})
    checked = contracts.validate(f"{ctx.run_id}.{stage_name}.stage-rates", suite, frame)
    failures = [c.get("message") or
                f"{c['name']}: {c['count']:,} of {rows_in:,} documents ({c['rate']:.2%}) > ceiling {c['max']:.2%}; "
                "a mass hit usually means a broken benchmark file or normalizer, not a contaminated corpus"
                for c in rate_checks if c["rate"] > c["max"]]
    return checked, failures


def validate_stage(ctx: RunContext, contracts: Contracts, stage_name: str, suite_name: str, outputs: list[DataObject],
                   shard_contracts: list[tuple[str, dict]], rows_in: int, rows_rejected: int,
                   rate_checks: list[dict] | None = None) -> ContractResult:
    """The stage's contract: the shard results merged, the 'global' expectations on just the columns they name,
    the configured reject-rate ceiling, and the stage's own rate checks (e.g. the share of documents one benchmark
    hit)."""
    suite = load_suite(suite_name)
    result = ContractResult.merge(suite_name, [c for _, c in shard_contracts], [s for s, _ in shard_contracts])
    global_suite = scoped(suite, "global")
    if global_suite["expectations"]:
        _extend(result, _validate_global(ctx, contracts, stage_name, global_suite, outputs), scope="global")
    ceiling = ctx.config.contracts.max_reject_rate.get(stage_name)
    if ceiling is not None:
        _extend(result, *_rate_ceiling(ctx, contracts, stage_name, ceiling, rows_in, rows_rejected), scope="stage")
    if rate_checks:
        _extend(result, *_stage_rates(ctx, contracts, stage_name, rate_checks, rows_in), scope="stage")
    return result
