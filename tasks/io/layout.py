"""Every path under an output root, in one place (DESIGN.md, "commit protocol").

Paths are relative to the root, so a root can be copied or moved (local -> S3, one bucket to another) and every
manifest in it still resolves. Nothing else in the code spells out a path under `runs/` or `datasets/`.

    runs/<run>/run.json                              config, stages, status, timings
    runs/<run>/<stage>/part-<shard>.parquet          kept rows
    runs/<run>/<stage>/rejected/part-<shard>.parquet quarantined rows
    runs/<run>/<stage>/_shards/<shard>.json          shard receipt (the shard's commit marker)
    runs/<run>/<stage>/_work/<generation>/           a global stage's shuffles, routes and receipts (deleted
                                                     once the stage is committed, unless runner.keep_work)
    runs/<run>/<stage>/_manifest.json                the stage's commit marker, written last
    runs/<run>/<stage>/_contract_failure.json        what would have been the manifest, when the contract failed
    runs/<run>/report/                               index.html, card.md, contracts/ (GE Data Docs)
    datasets/<name>/v<N>/data/part-<i>.parquet       a published version's rows (their own folder: every reader
                                                     opens `v<N>/data` or `v<N>` through README.md's configs)
    datasets/<name>/v<N>/README.md                   its dataset card (Hugging Face YAML front matter)
    datasets/<name>/v<N>/_manifest.json, _diff.json  its commit marker, the change against v<N-1>
    datasets/<name>/_claims/v<N>.json                who took version N
    datasets/<name>/_index/v<N>/part-<i>.parquet     dedup index of v<N>/data/part-<i> (hashes, short MinHash)
    datasets/<name>/_tombstones/<stamp>.json|.parquet a `sluice forget`: who, what, why; the forgotten rows' index
    datasets/<name>/_lock/gen-<N>.json               the lease on the dataset, generation N (the fencing token)
    runs/<run>/_lock/gen-<N>.json                    the lease on the run id
"""

from __future__ import annotations

import re

from schemas.errors import BadInput

RUNS = "runs"
DATASETS = "datasets"
MANIFEST = "_manifest.json"
CONTRACT_FAILURE = "_contract_failure.json"
DIFF = "_diff.json"
EVENT = "_event.json"
CARD = "README.md"
VERSION_DATA = "data"
VERSION_TOKENS = "tokens"
_VERSION = re.compile(r"^v(\d+)(?:\.json)?$")  # a version folder `v3`, or its claim `v3.json`


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------------------------ runs

def run_dir(run_id: str) -> str:
    return _join(RUNS, run_id)


def run_json(run_id: str) -> str:
    return _join(RUNS, run_id, "run.json")


def stage_dir(run_id: str, stage: str) -> str:
    return _join(RUNS, run_id, stage)


def stage_manifest(run_id: str, stage: str) -> str:
    return _join(RUNS, run_id, stage, MANIFEST)


def contract_failure(run_id: str, stage: str) -> str:
    return _join(RUNS, run_id, stage, CONTRACT_FAILURE)


def kept_part(run_id: str, stage: str, shard: str) -> str:
    return _join(RUNS, run_id, stage, f"part-{shard}.parquet")


def rejected_part(run_id: str, stage: str, shard: str) -> str:
    return _join(RUNS, run_id, stage, "rejected", f"part-{shard}.parquet")


def edits_part(run_id: str, stage: str, shard: str) -> str:
    return _join(RUNS, run_id, stage, "edits", f"part-{shard}.parquet")


def shard_receipt(run_id: str, stage: str, shard: str) -> str:
    return _join(RUNS, run_id, stage, "_shards", f"{shard}.json")


def file_receipt(run_id: str, stage: str, file_index: int) -> str:
    """A source stage's record of one input file done (all its chunks' receipts)."""
    return _join(RUNS, run_id, stage, "_shards", f"file-{file_index:05d}.json")


def features(run_id: str, stage: str, shard: str, folder: str = "_features") -> str:
    """A global stage's per-shard features (the score stage's are its embeddings: `score/embeddings/part-*`)."""
    name = f"part-{shard}.parquet" if not folder.startswith("_") else f"{shard}.parquet"
    return _join(RUNS, run_id, stage, folder, name)


def stage_artifact(run_id: str, stage: str, name: str) -> str:
    """A file a global stage's reduce step made besides its decisions (the score stage's quality head)."""
    return _join(RUNS, run_id, stage, name)


def stage_work(run_id: str, stage: str, generation: str, *parts: str) -> str:
    """A partitioned global stage's working files (shuffles, routed decisions, step receipts), one folder per
    generation (inputs + params + code + partition counts): a rerun with other settings never reads stale files."""
    return _join(RUNS, run_id, stage, "_work", generation, *parts)


def replay_input(run_id: str, stage: str) -> str:
    return _join(RUNS, run_id, "_replay", f"{stage}.parquet")


def report(run_id: str, name: str = "") -> str:
    return _join(RUNS, run_id, "report", name)


def shard_of_part(path: str) -> str:
    """`.../part-00003-00000.parquet` -> `00003-00000`: a map stage names its shards after its input's parts."""
    return path.rsplit("/", 1)[-1].removeprefix("part-").removesuffix(".parquet")


# -------------------------------------------------------------------------------------------------------- datasets

def dataset_dir(dataset: str) -> str:
    return _join(DATASETS, dataset)


def version_dir(dataset: str, version: int) -> str:
    return _join(DATASETS, dataset, f"v{version}")


def version_part(dataset: str, version: int, index: int) -> str:
    return _join(DATASETS, dataset, f"v{version}", VERSION_DATA, f"part-{index:05d}.parquet")


def token_part(dataset: str, version: int, index: int) -> str:
    """The token shard of `version_part(dataset, version, index)`, without its suffix (.bin, .idx, .docs.parquet;
    tasks/text/token_shards.py)."""
    return _join(DATASETS, dataset, f"v{version}", VERSION_TOKENS, f"part-{index:05d}")


def version_manifest(dataset: str, version: int) -> str:
    return _join(DATASETS, dataset, f"v{version}", MANIFEST)


def version_card(dataset: str, version: int) -> str:
    return _join(DATASETS, dataset, f"v{version}", CARD)


def version_diff(dataset: str, version: int) -> str:
    return _join(DATASETS, dataset, f"v{version}", DIFF)


def version_event(dataset: str, version: int) -> str:
    """What the published event told subscribers about the version (written once it was sent)."""
    return _join(DATASETS, dataset, f"v{version}", EVENT)


def index_part(dataset: str, version: int, index: int) -> str:
    """The dedup index rows of `version_part(dataset, version, index)`, outside the version folder so that no
    reader of the version meets them."""
    return _join(DATASETS, dataset, "_index", f"v{version}", f"part-{index:05d}.parquet")


def tombstones_dir(dataset: str) -> str:
    return _join(DATASETS, dataset, "_tombstones")


def tombstone(dataset: str, stamp: str, suffix: str = ".json") -> str:
    return _join(DATASETS, dataset, "_tombstones", f"{stamp}{suffix}")


def claims_dir(dataset: str) -> str:
    return _join(DATASETS, dataset, "_claims")


def claim(dataset: str, version: int) -> str:
    return _join(DATASETS, dataset, "_claims", f"v{version}.json")


def dataset_lock_dir(dataset: str) -> str:
    """The dataset's lease (tasks/io/locks.py): one file per generation."""
    return _join(DATASETS, dataset, "_lock")


def run_lock_dir(run_id: str) -> str:
    """The run's lease: one process per run id."""
    return _join(RUNS, run_id, "_lock")


def lock_generation(folder: str, generation: int) -> str:
    return _join(folder, f"gen-{generation:08d}.json")


def version_numbers(names: list[str]) -> list[int]:
    """Version numbers among folder or claim names (`v3`, `v3.json`), sorted."""
    return sorted(int(m.group(1)) for n in names if (m := _VERSION.match(n)))


# Under a published version's own folder (a Storage rooted there, as the retrain flow has): MANIFEST, DIFF and
# the retrain outcomes.
RETRAIN_OUTCOMES = "_retrain"

# ----------------------------------------------------------------------------------------------------------- watch

WATCH_LEDGER = "watch/ledger.json"
WATCH_ALERTS = "watch/changed"


def watch_alert(stamp: str) -> str:
    return _join(WATCH_ALERTS, f"{stamp}.json")


# -------------------------------------------------------------------------------------------- relocating old paths

def relative_to_root(uri: str, root: str) -> str:
    """The path under `root` of `uri`. Format-1 manifests recorded absolute URIs of the root they were written
    under; if that root has since been copied elsewhere, the part after its `runs/` or `datasets/` is the path."""
    prefix = root.rstrip("/") + "/"
    if uri.startswith(prefix):
        return uri[len(prefix):]
    at = max(uri.rfind(f"/{RUNS}/"), uri.rfind(f"/{DATASETS}/"))
    if at >= 0:
        return uri[at + 1:]
    raise BadInput(f"{uri} is not under the storage root {root}, and is not a path under runs/ or datasets/")
