"""Provisioning benchmarks on the simulated cloud. Run by hand:
``python benchmarks/provisioning.py [--check]``.

1. Failover overhead: time to a RUNNING cluster after k shapes that fail (every zone out of
   capacity), against the sum of the latencies the simulated cloud charged for the launch
   calls. What is left is the broker's own cost: ranking, store writes (durable, before
   every call), cleanup checks. Target: within 5 % of the simulated latency.
2. Concurrent provisions through one store: N `broker provision` processes at once, each
   for its own cluster, against one SQLite store and one simulated cloud.
3. History does not slow the live work: `reconcile` and `list` (newest 50) with 0 and with
   2,000 finished clusters in the store. Target: at most 1.5x the times with 50.
Nothing real is created; the simulated cloud never opens a socket.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.api import Broker  # noqa: E402
from broker.quote import QuoteRequest  # noqa: E402
from broker.ranking import RankRequest  # noqa: E402
from shapes.catalog import load_bundled_catalog  # noqa: E402

CATALOG = load_bundled_catalog()
# Single-zone shapes (Azure regions are one pseudo-zone in the catalog): one call each.
ONE_ZONE = [s.id for s in CATALOG.shapes if len(s.zones) == 1 and s.gpus_per_node == 8]


def failover(k: int, latency_ms: int, repeat: int) -> tuple[float, float]:
    """(median wall seconds, simulated latency seconds) to a cluster after k failing shapes."""
    failing, winner = ONE_ZONE[:k], ONE_ZONE[k]
    text = f"[default]\nlatency_ms = {latency_ms}\n" + "".join(
        f'[shapes."{s}"]\ncapacity_nodes = 0\n' for s in failing
    )
    walls = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            scenario = Path(tmp) / "s.toml"
            scenario.write_text(text)
            broker = Broker(
                state_dir=Path(tmp) / "state", backend="sim", sim_scenario=scenario, catalog=CATALOG
            )
            request = QuoteRequest(rank=RankRequest(gpus=8, priority=(*failing, winner)))
            t0 = time.perf_counter()
            cluster = broker.provision(request)
            walls.append(time.perf_counter() - t0)
            assert cluster.shape_id == winner
            assert len(broker.store.attempts(cluster.id)) == k + 1
    return statistics.median(walls), (k + 1) * latency_ms / 1000


def bench_failover(check: bool) -> bool:
    latency_ms = 500
    print(f"## Failover overhead (simulated latency {latency_ms} ms per launch call, median of 3)")
    print("| failing shapes | launch calls | simulated latency s | wall s | broker overhead |")
    print("|---|---|---|---|---|")
    ok = True
    for k in (0, 1, 3, 6):
        wall, simulated = failover(k, latency_ms, repeat=3)
        overhead = (wall - simulated) / simulated
        ok = ok and overhead <= 0.05
        print(
            f"| {k} | {k + 1} | {simulated:.2f} | {wall:.3f} | {overhead * 100:+.1f} % "
            f"({(wall - simulated) / (k + 1) * 1000:.1f} ms per attempt) |"
        )
    print()
    return ok or not check


def bench_concurrent() -> None:
    print("## Concurrent provisions through one store (simulated latency 200 ms, wall clock)")
    print("| processes | all RUNNING | wall s | s per cluster |")
    print("|---|---|---|---|")
    for n in (1, 2, 4, 8):
        with tempfile.TemporaryDirectory() as tmp:
            scenario = Path(tmp) / "s.toml"
            scenario.write_text("[default]\nlatency_ms = 200\n")
            env = {
                **os.environ,
                "BROKER_STATE_DIR": str(Path(tmp) / "state"),
                "BROKER_SIM_SCENARIO": str(scenario),
                "PYTHONPATH": str(ROOT),
            }
            cmd = [sys.executable, "-m", "broker.cli", "provision", "--provider", "sim",
                   "--gpus", "16", "--json"]  # fmt: skip
            t0 = time.perf_counter()
            procs = [
                subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for _ in range(n)
            ]
            codes = [p.wait() for p in procs]
            wall = time.perf_counter() - t0
            print(f"| {n} | {'yes' if codes == [0] * n else codes} | {wall:.2f} | {wall / n:.2f} |")
    print()


def _timed(fn: Callable[[], object], repeat: int = 7) -> float:
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def bench_history(check: bool) -> bool:
    from broker.lifecycle import Status

    print("## History does not slow live work (in-process, median of 7, 2 clusters running)")
    print("| finished clusters | reconcile ms | list (newest 50) ms |")
    print("|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(state_dir=Path(tmp) / "state", backend="sim", catalog=CATALOG)
        request = QuoteRequest(rank=RankRequest(gpus=8, priority=(ONE_ZONE[0],)))
        for _ in range(2):
            broker.provision(request)
        made = 0
        for finished in (50, 2000):
            for _ in range(finished - made):
                broker.stop(broker.submit(request).id)
            made = finished
            assert len(broker.store.list_clusters([Status.STOPPED], limit=None)) == finished
            rec = _timed(broker.reconcile) * 1000
            lst = _timed(lambda: broker.list_clusters(limit=50)) * 1000
            rows.append((rec, lst))
            print(f"| {finished:,} | {rec:.1f} | {lst:.1f} |")
    print()
    (rec0, lst0), (rec1, lst1) = rows
    ok = rec1 <= 1.5 * rec0 and lst1 <= 1.5 * lst0
    return ok or not check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    ok = bench_failover(args.check)
    bench_concurrent()
    ok = bench_history(args.check) and ok
    if not ok:
        print("a target was missed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
