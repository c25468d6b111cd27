"""The fetch stage's throughput: one large object on a loopback S3 server (moto, in its own
process), fetched by ``python -m kubetrain.trainer.fetch`` as its Pod runs it, against boto3's
transfer manager (``download_file``: ranged GETs on 10 threads) on the same object; then the
same fetch again with the cache warm (only a listing: time to done).

The object is uploaded in one PUT, so its ETag is its MD5 and the fetcher's time includes
verifying it. Fetch times are the whole process (start, listing, download, verify, report).
Rounds alternate boto3, cold and warm; the medians are printed.

    .venv/bin/python bench/bench_fetch.py [--mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parents[1]
BUCKET, KEY = "bench", "weights/model.bin"
MIB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="object size (MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.mib * MIB
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        work = Path(tmp)
        server, endpoint = start_moto()
        try:
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                region_name="us-east-1",
            )
            client.create_bucket(Bucket=BUCKET)
            client.put_object(Bucket=BUCKET, Key=KEY, Body=os.urandom(size))
            secret = write_secret(work / "s3-creds", endpoint)
            boto, cold, warm, rates = [], [], [], []
            for round_ in range(args.rounds):
                target = work / "boto3.bin"
                started = time.monotonic()
                client.download_file(BUCKET, KEY, str(target))
                boto.append(time.monotonic() - started)
                target.unlink()
                cache = work / f"cache{round_}"
                seconds, report = fetch(work, cache, secret)
                cold.append(seconds)
                rates.append(report["fetch"]["bytesPerSecond"])
                seconds, report = fetch(work, cache, secret)
                assert report["fetched"][0]["reused"], report
                warm.append(seconds)
                shutil.rmtree(cache)
        finally:
            server.terminate()
            server.wait(10)
    b, c, w = statistics.median(boto), statistics.median(cold), statistics.median(warm)
    print(f"{args.mib} MiB object on moto over loopback, median of {args.rounds} rounds")
    print(f"  boto3 download_file      {b:6.2f} s  {size / MIB / b:7.1f} MiB/s")
    print(
        f"  fetch, cold cache        {c:6.2f} s  {size / MIB / c:7.1f} MiB/s"
        f"  (from its first byte, as reported: {statistics.median(rates) / MIB:.1f} MiB/s)"
    )
    print(f"  fetch, warm cache        {w:6.2f} s")
    print(f"  fetch / boto3 throughput {b / c:6.2f}x")
    print(f"  warm / cold time to done {w / c:6.2f}x")


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return server, endpoint
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.1)


def write_secret(directory: Path, endpoint: str) -> Path:
    directory.mkdir()
    values = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    for name, value in {**values, "AWS_ENDPOINT_URL": endpoint}.items():
        (directory / name).write_text(value)
    return directory


def fetch(work: Path, cache: Path, secret: Path) -> tuple[float, dict[str, Any]]:
    """Run the fetch stage on the object; (seconds to done, its final report)."""
    uri = f"s3://{BUCKET}/{KEY}"
    plan = {
        "cacheDir": str(cache),
        "sources": [{"name": "pretrainedWeights", "uri": uri, "kind": "weights",
                     "credentialsDir": str(secret), "credentialsSecret": "s3-creds"}],
    }  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KUBETRAIN_", "POD_"))},
        "PYTHONPATH": str(ROOT / "operator"),
        "KUBETRAIN_FETCH": json.dumps(plan),
        "KUBETRAIN_CHECKPOINT_DIR": str(work / "checkpoints"),
        "KUBETRAIN_REPORT_FILE": str(work / "report.json"),
        "KUBETRAIN_TERMINATION_LOG": str(work / "termination"),
    }
    started = time.monotonic()
    command = [sys.executable, "-m", "kubetrain.trainer.fetch"]
    done = subprocess.run(command, env=env, capture_output=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"the fetch failed ({done.returncode}):\n{done.stderr.decode()[-4000:]}")
    return seconds, json.loads((work / "report.json").read_text())


if __name__ == "__main__":
    main()
