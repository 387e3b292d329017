"""The `retrain` flow: run the user's retrain hook for a published version and record the outcome on it."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from schemas.config import load_config
from schemas.errors import BadInput
from tasks.io import layout
from tasks.io.storage import Storage
from tasks.ops.retrain_hook import outcomes, record_outcome, run_hook, worth_retraining


@flow(name="retrain", flow_run_name="retrain-{dataset}-v{version}", validate_parameters=True)
def retrain(dataset: str, version: int, uri: str, config_path: str | None = None, force: bool = False) -> dict:
    """Triggered by `sluice.dataset.published` (infra/prefect.yaml, `sluice deploy`). Skips a version whose diff is
    below `retrain.min_changed_fraction` or that already retrained successfully (events can be delivered twice),
    unless `force`. A failed hook fails the flow run, so Prefect shows it and can notify."""
    logger = get_run_logger()
    cfg = load_config(config_path)
    root = Storage(uri, cfg.storage.s3_options())
    if root.read_json_if_exists(layout.MANIFEST) is None:
        raise BadInput(f"{uri} is not a published version of {dataset} (no {layout.MANIFEST})")
    diff = root.read_json_if_exists(layout.DIFF)
    base = {"dataset": dataset, "version": version, "uri": uri}
    if not force and diff is not None and not worth_retraining(diff, cfg.retrain):
        logger.info(f"{dataset} v{version}: {diff['changed_fraction']:.2%} of rows changed, below "
                    f"{cfg.retrain.min_changed_fraction:.2%}; not retraining")
        return {**base, "status": "skipped", "reason": "below threshold"}
    if not force and any(o.get("status") == "succeeded" for o in outcomes(root)):
        logger.info(f"{dataset} v{version} was already retrained successfully; not again (use force)")
        return {**base, "status": "skipped", "reason": "already retrained"}
    outcome = run_hook(cfg.retrain, dataset, version, uri, diff)
    where = record_outcome(root, outcome, flow_run.id)
    for hook in outcome["hooks"]:
        detail = hook.get("exit_code", hook.get("http_status"))
        logger.info(f"retrain hook {hook['kind']} {hook['target']}: {'ok' if hook['ok'] else 'FAILED'} ({detail})")
    if not outcome["ok"]:
        raise RuntimeError(f"retrain hook failed for {dataset} v{version}; outcome recorded at {where}")
    return {**base, "status": "succeeded", "outcome": where}
