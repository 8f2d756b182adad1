"""Service benchmarks: `broker serve --sim` on loopback. Run by hand:
``python benchmarks/server.py [--check] [--clients N] [--clusters M]``.

Measured in one run on one machine (the throughput target is a ratio, so the machine's
speed cancels):
  1. Submissions through the API on the simulated cloud (latency 0): a real ``broker serve
     --sim`` process (default options: 4 provisioning workers) on a free loopback port with
     its own state and XDG directories; N client threads, each with a keep-alive connection
     and its own token, submit M clusters (``POST /v1/clusters {"gpus": 16}``) and the run
     ends when none is PENDING, QUEUED or STARTING. Reported: clusters/s end to end (first
     request to last RUNNING) and the submit rate alone (202 answers per second).
  2. The CLI path, in the same run: 16 concurrent ``broker provision --provider sim --gpus 16
     --json`` processes on one store, clusters/s from the first start to the last exit.
     Three CLI rounds alternate with three API runs (a fresh server each), so load from
     neighbours falls on both; medians. Target: the API path end to end at least 10x.
  3. ``GET /v1/clusters`` (default limit 50) with 10,000 clusters of one organisation in the
     store: 100 provisioned in-process on sim and left RUNNING, 9,900 finished ones (COMPLETED,
     STOPPED, FAILED, cloned from provisioned ones in one transaction, with their lifecycle
     rows). Latency from one client on loopback over one keep-alive connection, 500 requests
     after 20 warm-up ones, for the first page and for page 20 (reached through next_cursor:
     keyset pagination costs the same). Target: p99 under 50 ms. Then, without a target, page
     1 again and again while 8 clients submit 160 clusters and the workers provision them.
Every process is started here and stopped here (SIGTERM, then SIGKILL); all of them run with a
bytecode cache in a temporary PYTHONPYCACHEPREFIX (as an installed package has one), so the
working tree is never written. ``--check`` exits 1 if a target is missed. Nothing here talks
to a cloud, and nothing imports from ``tests/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.loopback import Client, Server, Submitters, clean_env, serving  # noqa: E402
from broker.api import Broker  # noqa: E402
from broker.lifecycle import Status  # noqa: E402
from broker.quote import QuoteRequest  # noqa: E402
from broker.ranking import RankRequest  # noqa: E402
from broker.settings import Settings  # noqa: E402

RATIO_TARGET = 10.0  # API clusters/s end to end over CLI clusters/s
P99_TARGET_MS = 50.0  # GET /v1/clusters with 10,000 clusters in the store
CLI_PROCESSES = 16
ROUNDS = 3  # CLI rounds and API runs, alternating
STORE_CLUSTERS = 10_000
STORE_RUNNING = 100
LATENCY_REQUESTS = 500
WARMUP_REQUESTS = 20
LOAD_WRITERS = 8  # clients submitting while page 1 is read (the busy row)
LOAD_CLUSTERS = 160
DEADLINE = 300.0  # seconds any one phase may take before the run gives up
UNSETTLED = "PENDING,QUEUED,STARTING"


# -- processes --------------------------------------------------------------------------------


# -- 1. submissions through the API -----------------------------------------------------------


@dataclass(frozen=True)
class ApiRun:
    clusters: int
    submit_seconds: float  # first POST sent to last 202 received
    total_seconds: float  # first POST sent to every cluster RUNNING
    failed: int  # clusters that ended other than RUNNING


def api_run(env: Mapping[str, str], clients: int, clusters: int) -> ApiRun:
    with serving(env) as server:
        tokens = [server.token("bench", f"client-{i}") for i in range(clients)]
        burst = Submitters([server.port], tokens, clusters, timeout=60)
        t0 = burst.go()
        try:
            submitted = burst.finish(t0 + DEADLINE)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{server.output()[-2000:]}") from None
        watcher = Client(server.port, tokens[0])
        try:
            wait_settled(watcher, t0)
            total = time.perf_counter() - t0
            _, doc = watcher.request("GET", "/v1/clusters?status=RUNNING&limit=500")
        finally:
            watcher.close()
        running = len(doc["clusters"])
    return ApiRun(clusters, submitted - t0, total, clusters - running)


# -- 2. the CLI path --------------------------------------------------------------------------


def cli_round(env: Mapping[str, str], round_no: int) -> float:
    """Seconds for CLI_PROCESSES concurrent `broker provision` processes on a fresh store."""
    run_env = {**env, "BROKER_STATE_DIR": str(Path(env["HOME"]) / f"cli-state-{round_no}")}
    cmd = [sys.executable, "-m", "broker.cli", "provision", "--provider", "sim",
           "--gpus", "16", "--json"]  # fmt: skip
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env=run_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(CLI_PROCESSES)
    ]
    outputs = [p.communicate(timeout=DEADLINE) for p in procs]
    wall = time.perf_counter() - t0
    for p, (out, err) in zip(procs, outputs, strict=True):
        if p.returncode != 0 or json.loads(out)["status"] != Status.RUNNING.value:
            raise RuntimeError(f"broker provision exited {p.returncode}: {err.decode()[-1000:]}")
    return wall


# -- 3. GET /v1/clusters with 10,000 clusters -------------------------------------------------


def fill_store(env: Mapping[str, str], org: str) -> None:
    """STORE_CLUSTERS clusters of ``org``: STORE_RUNNING provisioned on sim and left RUNNING,
    the rest finished ones cloned from provisioned ones (each status, its own id, an older
    creation time, its lifecycle rows), written in one transaction."""
    from sqlalchemy import insert, select

    from broker.state import clusters, transitions

    broker = Broker(Settings.from_env(env), backend="sim").scoped(org)
    request = QuoteRequest(rank=RankRequest(gpus=16))
    running = [broker.provision(request).id for _ in range(STORE_RUNNING)]
    models = {
        Status.COMPLETED: broker.release(broker.provision(request).id).id,
        Status.STOPPED: broker.stop(broker.provision(request).id).id,
        Status.FAILED: broker.stop(broker.submit(request).id).id,  # then relabelled FAILED
    }
    store = broker.store
    with store.engine.begin() as conn:
        rows = {
            status: dict(
                conn.execute(select(clusters).where(clusters.c.id == cid)).mappings().one()
            )
            for status, cid in models.items()
        }
        history = {
            status: [
                dict(r)
                for r in conn.execute(
                    select(transitions).where(transitions.c.cluster_id == cid)
                ).mappings()
            ]
            for status, cid in models.items()
        }
        rows[Status.FAILED].update(status="FAILED", reason="NoCapacity", detail="bench: cloned")
        now = time.time()
        oldest = now - 30 * 86400
        extra = STORE_CLUSTERS - STORE_RUNNING - len(models)
        cluster_rows: list[dict[str, Any]] = []
        transition_rows: list[dict[str, Any]] = []
        kinds = list(models)
        for i in range(extra):
            status = kinds[i % len(kinds)]
            cid = f"bb-{os.urandom(6).hex()}"
            at = oldest + i * (now - 3600 - oldest) / extra
            cluster_rows.append(
                {**rows[status], "id": cid, "created_at": at, "updated_at": at + 600}
            )
            for t in history[status]:
                shifted = {k: v for k, v in t.items() if k != "id"}
                shifted.update(cluster_id=cid, at=at + (t["at"] - history[status][0]["at"]))
                transition_rows.append(shifted)
        conn.execute(insert(clusters), cluster_rows)
        conn.execute(insert(transitions), transition_rows)
    total = len(broker.list_clusters(limit=None))
    assert total == STORE_CLUSTERS, total
    assert len(running) == len(broker.list_clusters({Status.RUNNING}, limit=None))


def latencies(client: Client, path: str, repeat: int) -> list[float]:
    for _ in range(WARMUP_REQUESTS):
        client.request("GET", path)
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        status, doc = client.request("GET", path)
        out.append(time.perf_counter() - t0)
        if status != 200 or len(doc["clusters"]) != 50:
            raise RuntimeError(f"GET {path}: {status}")
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class ListRun:
    page1: list[float]
    page20: list[float]
    filtered: list[float]
    busy: list[float]  # page 1 while LOAD_CLUSTERS are submitted and provisioned


def wait_settled(client: Client, started: float) -> None:
    """Until no cluster of the client's organisation is on its way (one cheap page)."""
    while True:
        status, doc = client.request("GET", f"/v1/clusters?status={UNSETTLED}&limit=1")
        if status != 200:
            raise RuntimeError(f"GET /v1/clusters: {status} {doc}")
        if not doc["clusters"]:
            return
        if time.perf_counter() - started > DEADLINE:
            raise TimeoutError(f"clusters still provisioning after {DEADLINE:.0f} s")
        time.sleep(0.05)


def timed_page(client: Client) -> float:
    t0 = time.perf_counter()
    status, _ = client.request("GET", "/v1/clusters")
    if status != 200:
        raise RuntimeError(f"GET /v1/clusters: {status}")
    return time.perf_counter() - t0


def busy_latencies(server: Server, reader: Client) -> list[float]:
    """Page 1 again and again while LOAD_WRITERS clients submit LOAD_CLUSTERS clusters and
    the workers provision them (reads next to writes, as a console user sees it)."""
    tokens = [server.token("bench", f"writer-{i}") for i in range(LOAD_WRITERS)]
    errors: list[str] = []

    def write(token: str) -> None:
        client = Client(server.port, token)
        try:
            for _ in range(LOAD_CLUSTERS // LOAD_WRITERS):
                status, doc = client.request("POST", "/v1/clusters", {"gpus": 16})
                if status != 202:
                    raise RuntimeError(f"POST /v1/clusters: {status} {doc}")
        except Exception as exc:  # reported after the run
            errors.append(str(exc))
        finally:
            client.close()

    writers = [threading.Thread(target=write, args=(t,)) for t in tokens]
    started = time.perf_counter()
    for t in writers:
        t.start()
    out: list[float] = []
    while any(t.is_alive() for t in writers) and time.perf_counter() - started < DEADLINE:
        out.append(timed_page(reader))
    for t in writers:
        t.join(timeout=DEADLINE)
    if errors:
        raise RuntimeError(f"submissions failed: {errors[:3]}")
    settled = False
    while not settled:  # and on, until every cluster is settled
        for _ in range(10):
            out.append(timed_page(reader))
        _, doc = reader.request("GET", f"/v1/clusters?status={UNSETTLED}&limit=1")
        settled = not doc["clusters"]
        if time.perf_counter() - started > DEADLINE:
            raise TimeoutError(f"clusters still provisioning after {DEADLINE:.0f} s")
    return out


def list_run(env: Mapping[str, str]) -> ListRun:
    fill_store(env, "bench")
    with serving(env) as server:
        client = Client(server.port, server.token("bench", "reader"))
        try:
            cursor = None
            for _ in range(19):
                path = "/v1/clusters" + (f"?cursor={cursor}" if cursor else "")
                _, doc = client.request("GET", path)
                cursor = doc["next_cursor"]
            page1 = latencies(client, "/v1/clusters", LATENCY_REQUESTS)
            page20 = latencies(client, f"/v1/clusters?cursor={cursor}", LATENCY_REQUESTS)
            filtered = latencies(client, "/v1/clusters?status=RUNNING", LATENCY_REQUESTS)
            busy = busy_latencies(server, client)
        finally:
            client.close()
    return ListRun(page1, page20, filtered, busy)


# -- the report -------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--clients", type=int, default=16, help="API client threads (16)")
    parser.add_argument("--clusters", type=int, default=320, help="clusters submitted (320)")
    args = parser.parse_args()
    if not 1 <= args.clients <= args.clusters <= 500:
        parser.error("need 1 <= --clients <= --clusters <= 500")

    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        cache = Path(tmp) / "pycache"

        def home(name: str) -> dict[str, str]:
            path = Path(tmp) / name
            path.mkdir()
            return clean_env(path, cache)

        warm = home("warm")  # fills the bytecode cache, as an installed package has one
        subprocess.run(
            [sys.executable, "-m", "broker.cli", "provision", "--provider", "sim", "--gpus", "16"],
            env=warm, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with serving(warm):
            pass

        # CLI rounds and API runs alternate, so a neighbour's load falls on both paths.
        cli_env = home("cli")
        cli_walls: list[float] = []
        apis: list[ApiRun] = []
        for r in range(ROUNDS):
            cli_walls.append(cli_round(cli_env, r))
            apis.append(api_run(home(f"api-{r}"), args.clients, args.clusters))
        cli_rate = statistics.median(CLI_PROCESSES / w for w in cli_walls)
        api_rate = statistics.median(a.clusters / a.total_seconds for a in apis)
        submit_rate = statistics.median(a.clusters / a.submit_seconds for a in apis)
        ratio = api_rate / cli_rate
        failed = sum(a.failed for a in apis)
        ratio_ok = ratio >= RATIO_TARGET and failed == 0

        def each(values: list[float]) -> str:
            return ", ".join(f"{v:.1f}" for v in values)

        print(f"## Submissions on sim (latency 0), {os.cpu_count()} CPUs, median of {ROUNDS}")
        print("| path | clusters per round | clusters/s | each round |")
        print("|---|---|---|---|")
        print(
            f"| CLI: {CLI_PROCESSES} concurrent `broker provision --provider sim --gpus 16 "
            f"--json` | {CLI_PROCESSES} | {cli_rate:.1f} "
            f"| {each([CLI_PROCESSES / w for w in cli_walls])} |"
        )
        print(
            f"| API: {args.clients} clients, first POST to every cluster RUNNING "
            f"| {args.clusters} | {api_rate:.1f} "
            f"| {each([a.clusters / a.total_seconds for a in apis])} |"
        )
        print(
            f"| API: submitting only (202 answers per second) | {args.clusters} "
            f"| {submit_rate:.1f} | {each([a.clusters / a.submit_seconds for a in apis])} |"
        )
        if failed:
            print(f"\n{failed} API cluster(s) did not end RUNNING")
        print()

        print(f"## GET /v1/clusters, {STORE_CLUSTERS:,} clusters in the store, keep-alive")
        lists = list_run(home("list"))
        print(
            f"| request (limit 50; {LATENCY_REQUESTS} each when idle) | p50 ms | p99 ms | max ms |"
        )
        print("|---|---|---|---|")
        for label, values in (
            ("page 1 (`GET /v1/clusters`)", lists.page1),
            ("page 20 (through `next_cursor`)", lists.page20),
            (f"`?status=RUNNING` ({STORE_RUNNING} of {STORE_CLUSTERS:,})", lists.filtered),
            (
                f"page 1 while {LOAD_WRITERS} clients submit {LOAD_CLUSTERS} clusters and the "
                f"workers provision them ({len(lists.busy)} requests; no target)",
                lists.busy,
            ),
        ):
            print(
                f"| {label} | {percentile(values, 50) * 1000:.1f} | "
                f"{percentile(values, 99) * 1000:.1f} | {max(values) * 1000:.1f} |"
            )
        print()

    p99_1 = percentile(lists.page1, 99) * 1000
    p99_20 = percentile(lists.page20, 99) * 1000
    results = [
        (
            "API clusters/s end to end over CLI clusters/s",
            f"{ratio:.1f}x ({api_rate:.1f} / {cli_rate:.1f})",
            f">= {RATIO_TARGET:g}x",
            ratio_ok,
        ),
        ("GET /v1/clusters p99, page 1", f"{p99_1:.1f} ms", f"< {P99_TARGET_MS:g} ms",
         p99_1 < P99_TARGET_MS),
        ("GET /v1/clusters p99, page 20", f"{p99_20:.1f} ms", f"< {P99_TARGET_MS:g} ms",
         p99_20 < P99_TARGET_MS),
    ]  # fmt: skip
    print("## Targets")
    print("| measure | measured | target | |")
    print("|---|---|---|---|")
    for name, value, target, ok in results:
        print(f"| {name} | {value} | {target} | {verdict(ok)} |")
    missed = [name for name, _, _, ok in results if not ok]
    if missed:
        print(f"missed: {'; '.join(missed)}", file=sys.stderr)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
