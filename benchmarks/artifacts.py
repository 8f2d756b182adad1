"""Artifact sync benchmarks: the real node agent's final sync to an artifact store, through a
real ``broker serve --sim`` on loopback. Run by hand:
``python benchmarks/artifacts.py [--check] [--runs N] [--files N] [--large-mib M]``.

Measured, for each store and each workload, ``--runs`` times (a fresh one-node cluster each):
  Stores: (a) ``file://`` (the default: under the server's state directory, the agent's PUTs
  served by the service at ``/v1/blobs``); (b) S3 on moto's server (``ThreadedMotoServer`` on
  127.0.0.1 in this process, ``[artifacts] url = "s3://bench/runs"`` and ``endpoint`` = its
  URL, fake credentials in the server's environment; the agent PUTs to moto's presigned URLs).
  (c) "far": ``file://`` again with the small files only, every connection of the nodes to
  the server (agent calls and PUTs) held ``--latency-ms`` (40) by a loopback Delay, as a
  service and store far away would.
  Workloads: (i) ``--files`` files of 4 KiB (2,000); (ii) one file of ``--large-mib`` MiB
  (256), which goes in parts (the store's part size: 64 MiB on S3, the file store's own).
  The command copies the files into ``$OUTPUT_PATH`` (the ``checkpoints`` kind, synced every
  10 minutes, so only the final sync sends them), then prints the time (``date +%s.%N``) and
  exits. The wall time is from that line to this script seeing rank 0's final ``checkpoints``
  sync report in ``GET /v1/clusters/{id}`` (polled every 20 ms): the agent noticing the exit
  (at most 0.1 s) and sending its last log batch, then the whole final sync of that kind,
  every file an ``artifact_upload`` call, its PUT(s) and for parts an ``artifact_complete``.
  The bytes and files are the agent's own ``artifact_report`` totals, checked against what
  was written (a short or failed sync is an error, not a figure).

Targets (``--check`` exits 1 if one is missed), floors set after measuring on this machine
(2 shared CPUs, 3 runs, medians; see the README's Performance section for the figures), about
a third of what was measured so that a busy machine still passes and a regression of the
sync path (a call per file become several, a part buffered in memory, a store call per
part) does not:
  - file:// one large file: at least 50 MB/s.   - file:// small files: at least 25 files/s.
  - S3 (moto) one large file: at least 20 MB/s. - S3 (moto) small files: at least 25 files/s.
  - far, small files: at least 30 files/s (one file at a time cannot pass 12.5 at 40 ms;
    8 at once measured 79, one at a time 10.8).
  Small files measured ~61 files/s on both stores (a one-run calibration, 200 files), well
  under the 100 files/s first proposed: each file costs an ``artifact_upload`` call to the
  service and its own PUT, one at a time, ~16 ms on this machine.
Every process is started here and stopped here (the server by SIGTERM, then its simulated
node processes; moto's thread with this script); everything is on 127.0.0.1, every wait is
bounded, nothing imports from ``tests/``, and the working tree is never written.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.loopback import Client, Delay, clean_env, free_port, serving  # noqa: E402

SHAPE = "aws:us-east-1:g5.12xlarge:on-demand"  # 4 GPUs a node: gpus = 4 is one node
ORG = "bench"
SMALL_SIZE = 4096
BUCKET = "bench"
FAKE_KEY, FAKE_SECRET = "AKIDBURSTBROKERBENCH", "burst-broker-bench-secret"
POLL = 0.02
DEADLINE = 600.0  # seconds one cluster may take, submit to its final report
MB = 1_000_000
TARGETS: Mapping[tuple[str, str], float] = {  # (store, workload) -> floor
    ("file", "large"): 50.0,  # MB/s
    ("file", "small"): 25.0,  # files/s: measured ~61 (a service call and a PUT per file)
    ("s3", "large"): 20.0,
    ("s3", "small"): 25.0,
    # files/s with every agent connection held --latency-ms (40): one at a time the most
    # is 1 / (2 x 40 ms) = 12.5 (a service call and a PUT per file); measured ~100
    ("far", "small"): 30.0,
}


@dataclass(frozen=True)
class Workload:
    name: str  # "small" or "large"
    source: Path  # a directory whose files the command copies into $OUTPUT_PATH
    files: int
    bytes: int

    @property
    def label(self) -> str:
        if self.name == "small":
            return f"{self.files:,} files of {SMALL_SIZE // 1024} KiB"
        return f"1 file of {self.bytes // (1024 * 1024)} MiB"


@dataclass(frozen=True)
class Run:
    seconds: float
    files: int
    bytes: int

    @property
    def mb_s(self) -> float:
        return self.bytes / MB / self.seconds

    @property
    def files_s(self) -> float:
        return self.files / self.seconds


def make_workloads(tmp: Path, files: int, large_mib: int) -> tuple[Workload, Workload]:
    small = tmp / "small"
    for i in range(files):
        folder = small / f"d{i // 500:02d}"  # a few directories, as a run writes them
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(SMALL_SIZE))
    large = tmp / "large"
    large.mkdir()
    size = large_mib * 1024 * 1024
    with (large / "model.pt").open("wb") as out:
        chunk = os.urandom(1024 * 1024)
        for _ in range(large_mib):
            out.write(chunk)
    return (
        Workload("small", small, files, files * SMALL_SIZE),
        Workload("large", large, 1, size),
    )


def launch_file(source: Path) -> str:
    command = f'cp -r {json.dumps(str(source))}/. "$OUTPUT_PATH/" && date +%s.%N'
    return (
        f'isc_project_id = "bench"\nexperiment_name = "sync"\ngpus = 4\n'
        f'compute_mode = "burst"\nburst_shape_priority_list = ["{SHAPE}"]\n'
        f"command = {json.dumps(command)}\n"
    )


def rank0_checkpoints(doc: Mapping[str, object]) -> dict[str, object] | None:
    for row in doc.get("artifact_syncs") or []:  # type: ignore[attr-defined]
        if row["rank"] == 0 and row["kind"] == "checkpoints":
            return dict(row)
    return None


def one_run(client: Client, work: Workload) -> Run:
    """One cluster: submit, wait for the command's time line and the final report."""
    t0 = time.monotonic()
    cid = client.ok("POST", "/v1/clusters", {"launch_file": launch_file(work.source)})["cluster_id"]
    ended_at: float | None = None
    try:
        while True:
            if time.monotonic() - t0 > DEADLINE:
                raise TimeoutError(f"{cid}: no final checkpoints sync in {DEADLINE:.0f} s")
            doc = client.ok("GET", f"/v1/clusters/{cid}")
            row = rank0_checkpoints(doc)
            if row is not None and row["final"]:
                seen = time.time()
                break
            if doc["status"] == "FAILED":
                raise RuntimeError(f"{cid} FAILED: {doc.get('reason')} {doc.get('detail')}")
            time.sleep(POLL)
        page = client.ok("GET", f"/v1/clusters/{cid}/logs?rank=0&tail=200")
        stamps = [x["line"] for x in page["lines"] if x["line"][:1].isdigit()]
        if not stamps:
            raise RuntimeError(f"{cid}: the command printed no time: {page['lines'][-5:]}")
        ended_at = float(stamps[-1])
    finally:
        doc = client.ok("GET", f"/v1/clusters/{cid}")
        if doc["status"] not in ("COMPLETED", "FAILED", "STOPPED"):
            client.ok("POST", f"/v1/clusters/{cid}/stop")
    if row["failed"] or row["files"] != work.files or row["bytes"] != work.bytes:
        raise RuntimeError(
            f"{cid}: the final sync sent {row['files']} file(s), {row['bytes']} bytes, "
            f"{row['failed']} failed ({row['errors']}); expected {work.files}, {work.bytes}"
        )
    return Run(seen - ended_at, int(str(row["files"])), int(str(row["bytes"])))


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 on 127.0.0.1 (a thread of this process) with the bucket made; its URL."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request line, and a presigned URL's query is its signature
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("PUT", f"/{BUCKET}")  # moto's server takes an unsigned CreateBucket
        answer = conn.getresponse()
        answer.read()
        conn.close()
        if answer.status != 200:
            raise RuntimeError(f"moto: CreateBucket {BUCKET}: HTTP {answer.status}")
        yield endpoint
    finally:
        server.stop()


def s3_env(env: Mapping[str, str], home: Path, endpoint: str) -> dict[str, str]:
    config = home / "config.toml"
    config.write_text(
        f'[artifacts]\nurl = "s3://{BUCKET}/runs"\nregion = "us-east-1"\n'
        f"endpoint = {json.dumps(endpoint)}\n"
    )
    out = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    out.update(
        BROKER_CONFIG=str(config),
        AWS_ACCESS_KEY_ID=FAKE_KEY,
        AWS_SECRET_ACCESS_KEY=FAKE_SECRET,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return out


def measure(
    env: Mapping[str, str], works: tuple[Workload, ...], runs: int, latency: float = 0.0
) -> dict[str, list[Run]]:
    """Each workload ``runs`` times on one server. With ``latency`` (seconds), the nodes
    reach the server (its agent calls and, for file://, its PUTs) through a Delay: the
    server's public URL is the Delay's."""
    out: dict[str, list[Run]] = {}
    delay = Delay(latency) if latency > 0 else None
    args = ("--public-url", f"http://127.0.0.1:{delay.port}") if delay is not None else ()
    try:
        with serving(env, *args) as server:
            if delay is not None:
                delay.target = server.port
            client = Client(server.port, server.token(ORG, "bench"), retry_idle=True)
            try:
                one_run(client, works[-1])  # warm-up: bytecode, first imports, the store
                for work in works:
                    out[work.name] = [one_run(client, work) for _ in range(runs)]
            finally:
                client.close()
    finally:
        if delay is not None:
            delay.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--runs", type=int, default=3, help="clusters per store and workload (3)")
    parser.add_argument("--files", type=int, default=2000, help="small files (2000)")
    parser.add_argument("--large-mib", type=int, default=256, help="the large file, MiB (256)")
    parser.add_argument(
        "--latency-ms", type=float, default=40.0,
        help="ms each agent connection is held, for the 'far' row (40; 0: no such row)",
    )  # fmt: skip
    args = parser.parse_args()
    if not 0 <= args.latency_ms <= 1000:
        parser.error("need 0 <= --latency-ms <= 1000")
    if not 1 <= args.runs <= 20 or not 10 <= args.files <= 50_000:
        parser.error("need 1 <= --runs <= 20 and 10 <= --files <= 50000")
    if not 1 <= args.large_mib <= 4096:
        parser.error("need 1 <= --large-mib <= 4096")

    results: dict[tuple[str, str], list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as tmp:
        base = Path(tmp)
        cache = base / "pycache"
        works = make_workloads(base / "data", args.files, args.large_mib)

        def home(name: str) -> dict[str, str]:
            path = base / name
            path.mkdir()
            return clean_env(path, cache)

        for name, runs in measure(home("file"), works, args.runs).items():
            results[("file", name)] = runs
        with moto_s3() as endpoint:
            env = home("s3")
            for name, runs in measure(s3_env(env, base / "s3", endpoint), works, args.runs).items():
                results[("s3", name)] = runs
        if args.latency_ms > 0:
            far = measure(home("far"), works[:1], args.runs, args.latency_ms / 1000)
            results[("far", "small")] = far["small"]

    print(f"## Artifact sync: the agent's final sync, {os.cpu_count()} CPUs, {args.runs} runs")
    print("one node on sim; from the command's exit to its final report; median (worst)")
    print("| store | workload | seconds | MB/s | files/s |")
    print("|---|---|---|---|---|")
    by_name = {w.name: w for w in works}
    stores = {
        "file": "file:// (broker serve)",
        "s3": "S3 (moto server)",
        "far": f"file:// (broker serve) {args.latency_ms:g} ms away",
    }

    def med(runs: list[Run], of: Callable[[Run], float]) -> str:
        values = [of(r) for r in runs]
        worst = max(values) if of is seconds else min(values)
        return f"{statistics.median(values):,.1f} ({worst:,.1f})"

    def seconds(r: Run) -> float:
        return r.seconds

    for (store, name), runs in results.items():
        print(
            f"| {stores[store]} | {by_name[name].label} | {med(runs, seconds)} "
            f"| {med(runs, lambda r: r.mb_s)} | {med(runs, lambda r: r.files_s)} |"
        )
    print()
    checks = []
    for (store, name), floor in TARGETS.items():
        if (store, name) not in results:
            continue  # --latency-ms 0
        runs = results[(store, name)]
        if name == "large":
            value, unit = statistics.median(r.mb_s for r in runs), "MB/s"
        else:
            value, unit = statistics.median(r.files_s for r in runs), "files/s"
        checks.append((f"{stores[store]}, {by_name[name].label}", value, floor, unit))
    print("## Targets")
    print("| measure | measured (median) | floor | |")
    print("|---|---|---|---|")
    for what, value, floor, unit in checks:
        ok = "PASS" if value >= floor else "MISS"
        print(f"| {what} | {value:,.1f} {unit} | {floor:g} {unit} | {ok} |")
    missed = [what for what, value, floor, _ in checks if value < floor]
    if missed:
        print(f"missed: {'; '.join(missed)}", file=sys.stderr)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
