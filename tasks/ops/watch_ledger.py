"""The watch ledger: which input objects were curated, by key, etag/size and content hash.

An object is new when its key is not in the ledger. An object whose key is in the ledger but whose bytes differ is
*changed after curation*: data that was vetted and published has been replaced under the same name, which is how
split-view poisoning works (Carlini et al. 2023, "Poisoning web-scale training datasets is practical"). It is
reported, never silently re-ingested. An etag that changes with identical bytes (a re-upload, a multipart copy) is
only noted, because the content hash settles it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tasks.io import layout
from tasks.io.readers import InputFile, open_input
from tasks.io.storage import Storage


def content_sha256(file: InputFile, s3_options: dict | None, block: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open_input(file, None, s3_options) as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Scan:
    new: list[InputFile] = field(default_factory=list)
    changed: list[dict] = field(default_factory=list)
    retagged: list[InputFile] = field(default_factory=list)  # same bytes, new etag/size metadata
    unchanged: int = 0


def load_ledger(storage: Storage) -> dict[str, dict]:
    return (storage.read_json_if_exists(layout.WATCH_LEDGER) or {}).get("objects", {})


def save_ledger(storage: Storage, objects: dict[str, dict]) -> None:
    storage.write_json(layout.WATCH_LEDGER, {"updated_at": datetime.now(UTC).isoformat(), "objects": objects})


def scan(files: list[InputFile], ledger: dict[str, dict], s3_options: dict | None) -> Scan:
    """Compare what is under the prefix with the ledger. Hashing is paid only for objects whose metadata moved."""
    result = Scan()
    for f in files:
        entry = ledger.get(f.uri)
        if entry is None:
            result.new.append(f)
        elif entry["etag"] == f.version and entry["size"] == f.size:
            result.unchanged += 1
        else:
            sha = content_sha256(f, s3_options)
            if entry.get("sha256") == sha:
                result.retagged.append(f)
            else:
                result.changed.append({
                    "uri": f.uri, "curated_by_run": entry.get("run_id"), "curated_at": entry.get("curated_at"),
                    "was": {"etag": entry["etag"], "size": entry["size"], "sha256": entry.get("sha256")},
                    "now": {"etag": f.version, "size": f.size, "sha256": sha},
                })
    return result


def ledger_entry(f: InputFile, sha256: str | None, run_id: str) -> dict:
    return {"etag": f.version, "size": f.size, "sha256": sha256, "run_id": run_id,
            "curated_at": datetime.now(UTC).isoformat()}
