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
from dataclasses import dataclass, field

import pandas as pd

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

    def __init__(self, stage: str, result: ContractResult):
        self.stage, self.result = stage, result
        super().__init__(f"contract of stage '{stage}' failed: " + "; ".join(result.failures))


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
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.gx = gx
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.datasource = self.ctx.data_sources.add_pandas("sluice")
        self.docs_dir = docs_dir or tempfile.mkdtemp(prefix="sluice-docs-")
        self.ctx.add_data_docs_site(
            site_name="sluice",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": self.docs_dir},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )

    def validate(self, name: str, suite_def: dict, df: pd.DataFrame, docs: bool = True) -> ContractResult:
        """Validate `df`; with `docs`, also render it into Data Docs (costly per call: per-shard checks pass
        docs=False and are rendered only when they fail)."""
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
            checkpoint = self.ctx.checkpoints.add(gx.Checkpoint(
                name=name,
                validation_definitions=[vd],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["sluice"])],
                result_format=RESULT_FORMAT,
            ))
            self._definitions[name] = (vd, checkpoint)
        return self._definitions[name]

    def _validate(self, name: str, suite_def: dict, df: pd.DataFrame, docs: bool) -> ContractResult:
        from great_expectations.core.run_identifier import RunIdentifier

        vd, checkpoint = self._definition(suite_def)
        if docs:
            run = checkpoint.run(batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=name))
            validation = next(iter(run.run_results.values()))
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
        """Hand every rendered Data Docs file to `copy_file(relative_path, bytes)` (storage may be S3)."""
        for root, _, files in os.walk(self.docs_dir):
            for f in files:
                full = os.path.join(root, f)
                with open(full, "rb") as fh:
                    copy_file(os.path.relpath(full, self.docs_dir), fh.read())

    def close(self) -> None:
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
