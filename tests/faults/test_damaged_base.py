"""An append never builds on damaged files (issue 24, item 4). Before the fix, a deleted or corrupted data file of
the newest version went unnoticed: the append published a version no reader could open, with exit 0."""

from __future__ import annotations

import json

import pytest
from test_incremental import DOCS, published_v1, write_jsonl  # noqa: F401

from flows.cli import main


def _data_file(out, version: int = 1):
    manifest = json.loads((out / "datasets" / "inc" / f"v{version}" / "_manifest.json").read_text())
    return out / manifest["outputs"][0]["path"]


def _append(tmp_path, out, config, run_id: str) -> int:
    write_jsonl(tmp_path / f"in-{run_id}" / "b.jsonl", DOCS[300:320])
    return main(["run", "--input", str(tmp_path / f"in-{run_id}"), "--output", str(out), "--config", str(config),
                 "--run-id", run_id, "--publish-mode", "append"])


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_an_append_on_a_damaged_base_fails_naming_the_file(published_v1, tmp_path, capsys, damage):  # noqa: F811
    out, config = published_v1
    assert main(["verify", "inc", "--output", str(out)]) == 0
    assert "every data file and index part matches" in capsys.readouterr().out
    victim = _data_file(out)
    if damage == "flip":
        data = bytearray(victim.read_bytes())
        middle = len(data) // 2
        for i in range(middle, middle + 200):
            data[i] ^= 0xFF
        victim.write_bytes(bytes(data))
    else:
        victim.unlink()
    capsys.readouterr()
    assert _append(tmp_path, out, config, "a1") == 5
    err = capsys.readouterr().err
    assert "dataset inc v1 is damaged" in err and victim.name in err
    assert not (out / "datasets" / "inc" / "v2" / "_manifest.json").exists()
    assert main(["verify", "inc", "--version", "1", "--output", str(out)]) == 5
    printed = capsys.readouterr()
    assert f"damaged: {victim}" in printed.out and ("missing" if damage == "delete" else "sha256") in printed.out
    if damage == "flip":  # size-only checking (the S3 default) does not see flipped bytes, hashing does
        assert main(["verify", "inc", "--check", "size", "--output", str(out)]) == 0


def test_a_damaged_index_part_stops_the_append_before_dedup(published_v1, tmp_path, capsys):  # noqa: F811
    out, config = published_v1
    manifest = json.loads((out / "datasets" / "inc" / "v1" / "_manifest.json").read_text())
    part = out / manifest["published"]["index"]["parts"][0]["path"]
    part.write_bytes(part.read_bytes()[:-10])
    assert _append(tmp_path, out, config, "a2") == 5
    assert "is damaged" in capsys.readouterr().err and not (out / "datasets" / "inc" / "v2").exists()
