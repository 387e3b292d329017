"""Ingest throughput and peak memory on 1x and 10x the demo corpus, local and over a moto S3 server.

    .venv/bin/python bench/ingest.py            # writes bench/results/ingest.md and prints the table

Each measurement is its own `sluice run --stages ingest` process (so imports and RSS are its own), against one
Prefect server started here. Records/s and MB/s are over the ingest stage's wall time from run.json (listing,
reading, parsing, writing, per-shard contracts and the commit); peak RSS is the process's ru_maxrss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
from tables import publish  # noqa: E402  (bench/ is first on the path: scripts run as bench/NAME.py)

SLUICE_PY = [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"]


def build_corpora(work: Path, scale: int) -> Path:
    from tasks.ops.demo_corpus import build

    one = work / "corpus-1x"
    if not one.exists():
        build(one)
    if scale == 1:
        return one
    dest = work / f"corpus-{scale}x"
    if not dest.exists():
        dest.mkdir(parents=True)
        for copy in range(scale):
            for f in sorted(one.iterdir()):
                shutil.copy(f, dest / f"c{copy:02d}-{f.name}")
    return dest


def uncompressed_bytes(folder: Path) -> int:
    total = 0
    for f in folder.iterdir():
        d = zlib.decompressobj(wbits=47)
        with contextlib.suppress(zlib.error):
            total += len(d.decompress(f.read_bytes()))
    return total


def measure(inputs: str, output: str, env: dict) -> dict:
    """One ingest run in a child process; returns its timings and peak RSS."""
    code = (
        "import json, resource, sys, time\n"
        "from flows.curate import run_curate\n"
        "t = time.perf_counter()\n"
        "run = run_curate([sys.argv[1]], sys.argv[2], stages=['ingest'], run_id='bench')\n"
        "print(json.dumps({'total_s': time.perf_counter() - t, 'ingest_s': run['timings']['ingest'],"
        " 'rows_in': run['manifests'][0]['rows_in'], 'rows_out': run['manifests'][0]['rows_out'],"
        " 'maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, inputs, output], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(RESULTS / "ingest-work"), help="scratch folder for corpora/outputs")
    parser.add_argument("--scales", default="1,10", help="corpus multiples to measure ('' for none)")
    parser.add_argument("--small-files", type=int, default=10_000, help="also ingest this many one-row files, "
                        "local and on moto S3 (issue 24: 9 files/s before); 0 to skip")
    args = parser.parse_args()
    os.environ.update({"AWS_EC2_METADATA_DISABLED": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_LOGGING_LEVEL": "WARNING"})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import boto3
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    rows = []
    moto, endpoint = start_moto()
    try:
        with prefect_test_harness(server_startup_timeout=120):
            env = dict(os.environ, PREFECT_API_URL=prefect.settings.PREFECT_API_URL.value(),
                       AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_ENDPOINT_URL_S3=endpoint,
                       AWS_DEFAULT_REGION="us-east-1")
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
            s3.create_bucket(Bucket="bench-in")
            s3.create_bucket(Bucket="bench-out")
            small = []
            if args.small_files:
                folder = work / f"small-{args.small_files}"
                if not folder.exists():
                    folder.mkdir()
                    for i in range(args.small_files):
                        (folder / f"f{i:06d}.jsonl").write_text(json.dumps(
                            {"id": f"s{i}", "text": f"Small file number {i} holds one record of a few words."}) + "\n")
                for f in sorted(folder.iterdir()):
                    s3.put_object(Bucket="bench-in", Key=f"small/{f.name}", Body=f.read_bytes())
                for where, inputs, output in [("local", str(folder), str(work / "out-small")),
                                              ("s3 (moto)", "s3://bench-in/small/", "s3://bench-out/small")]:
                    if where == "local":
                        shutil.rmtree(output, ignore_errors=True)
                    r = measure(inputs, output, env)
                    small.append({"where": where, "files": args.small_files, **r})
                    print(json.dumps(small[-1]), flush=True)
            for scale in [int(s) for s in args.scales.split(",") if s]:
                corpus = build_corpora(work, scale)
                files = sorted(corpus.iterdir())
                size = sum(f.stat().st_size for f in files)
                raw = uncompressed_bytes(corpus)
                for f in files:
                    s3.upload_file(str(f), "bench-in", f"{scale}x/{f.name}")
                for where, inputs, output in [
                    ("local", str(corpus), str(work / f"out-{scale}x")),
                    ("s3 (moto)", f"s3://bench-in/{scale}x/*.jsonl.gz", f"s3://bench-out/{scale}x"),
                ]:
                    if where == "local":
                        shutil.rmtree(output, ignore_errors=True)
                    r = measure(inputs, output, env)
                    rows.append({"scale": f"{scale}x", "where": where, "files": len(files), **r,
                                 "gz_mb": size / 1e6, "raw_mb": raw / 1e6})
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        moto.terminate()

    lines = ["| corpus | storage | files | records in | ingest s | records/s | MB/s (gzip) | MB/s (raw JSON) | "
             "peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['scale']} | {r['where']} | {r['files']} | {r['rows_in']:,} | {r['ingest_s']:.2f} | "
                     f"{r['rows_in'] / r['ingest_s']:,.0f} | {r['gz_mb'] / r['ingest_s']:.1f} | "
                     f"{r['raw_mb'] / r['ingest_s']:.1f} | {r['maxrss_mb']:.0f} |")
    for where in ("local", "s3 (moto)"):
        by = {r["scale"]: r["maxrss_mb"] for r in rows if r["where"] == where}
        if "1x" in by and "10x" in by:
            lines.append(f"\nPeak RSS 10x / 1x ({where}): {by['10x'] / by['1x']:.2f}")
    if small:
        lines += ["", "Many small files (one JSON record each; files/s over the ingest stage's seconds):", "",
                  "| storage | files | ingest s | whole run s | files/s | peak RSS MB |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['where']} | {r['files']:,} | {r['ingest_s']:.2f} | {r['total_s']:.2f} | "
                  f"{r['files'] / r['ingest_s']:,.0f} | {r['maxrss_mb']:.0f} |" for r in small]
    table = "\n".join(lines)
    publish("ingest.md", table)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
