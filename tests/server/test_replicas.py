"""Several replicas on one PostgreSQL database (issue 17 §2): 300 submissions spread over 3
`broker serve --sim` replicas from 30 concurrent clients, the simulated cloud with random
(seeded) launch latency and errors, one replica killed (SIGKILL) half-way.

Bounded in count and time, loopback only. Afterwards every cluster is RUNNING or ended with a
reason, none was provisioned twice (one fallback loop at a time: attempts numbered without a
repeat, at most one winning attempt and one RUNNING per cycle), the simulated cloud runs
exactly the nodes of the RUNNING clusters (zero that no cluster owns: the killed replica's
half-launched gangs were settled and swept by the others), and no log has a traceback.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from broker.lifecycle import Status
from providers.sim import SimProvider
from tests.server.conftest import BrokerServer, assert_provisioned_once, server_env
from tests.store.pgserver import PostgresServer

REPLICAS = 3
CLIENTS = 30  # threads, each with its own token and keep-alive connection
PER_CLIENT = 10  # 300 submissions in all
KILL_AFTER = CLIENTS * PER_CLIENT // 2  # answered submissions before one replica is killed
ORGS = ("acme", "globex", "initech")
BODIES: tuple[dict[str, Any], ...] = (
    {"gpus": 16},
    {"gpus": 8},
    {"gpus": 16, "provisioning": "on-demand"},
    {"gpus": 16, "hours": 2},
)
DEADLINE = 150.0  # seconds for the whole run: submissions, provisioning, settling, sweeping


def scenario(seed: int) -> str:
    """Random launch latency and errors per cloud and market (seeded: reproducible)."""
    rng = random.Random(seed)
    kinds = ["throttle", "server_error", "capacity", "timeout"]
    lines = ["[default]", f"latency_ms = {rng.randint(20, 60)}"]
    for pattern in ("aws:*:*:spot", "aws:*:*:on-demand", "gcp:*:*:*", "azure:*:*:*"):
        errors = [rng.choice(kinds) for _ in range(rng.randint(10, 30))]
        lines += [
            f'[shapes."{pattern}"]',
            f"latency_ms = {rng.randint(10, 120)}",
            f"errors = {json.dumps(errors)}",
        ]
    return "\n".join(lines) + "\n"


class Client:
    """A scheduler's client: a keep-alive connection to its replica; when that replica is
    gone it sends the same request (same Idempotency-Key) to the next one."""

    def __init__(self, ports: list[int], token: str) -> None:
        self.ports = ports
        self.token = token
        self.conn = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=30)
        self.failovers = 0

    def post(self, body: dict[str, Any], key: str) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        }
        for _ in range(2 * len(self.ports)):
            try:
                self.conn.request("POST", "/v1/clusters", body=data, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, json.loads(resp.read())
            except (ConnectionError, http.client.HTTPException, TimeoutError):
                self.conn.close()
                self.ports = self.ports[1:] + self.ports[:1]  # the next replica
                self.failovers += 1
                self.conn = http.client.HTTPConnection("127.0.0.1", self.ports[0], timeout=30)
        raise AssertionError(f"no replica answered {key}")

    def close(self) -> None:
        self.conn.close()


def test_300_submissions_over_3_replicas_one_killed_half_way(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    started = time.monotonic()
    url = postgres_server.database("replicas")
    scenario_file = tmp_path / "scenario.toml"
    scenario_file.write_text(scenario(seed=20261206))
    env = {
        **server_env(tmp_path),
        "BROKER_STATE_URL": url,
        "BROKER_SIM_SCENARIO": str(scenario_file),
    }
    state = tmp_path / "state"  # shared: the simulated cloud's file is one cloud for all
    replicas: list[BrokerServer] = []
    boot = [
        threading.Thread(
            target=lambda: replicas.append(
                BrokerServer(state, env, "--workers", "4", "--reconcile-every", "1")
            )
        )
        for _ in range(REPLICAS)
    ]
    for t in boot:  # together: the schema is created once, whoever comes first
        t.start()
    for t in boot:
        t.join(timeout=60)
    try:
        assert len(replicas) == REPLICAS, "a replica did not start"
        _load_and_check(replicas, started)
    finally:
        for srv in replicas:
            srv.stop(timeout=10)


def _load_and_check(replicas: list[BrokerServer], started: float) -> None:
    ports = [srv.port for srv in replicas]
    tokens = [replicas[0].token(ORGS[i % len(ORGS)], name=f"client-{i}") for i in range(CLIENTS)]
    submitted: list[str] = []
    failures: list[str] = []
    failovers: list[int] = []
    lock = threading.Lock()
    killed = threading.Event()
    victim = replicas[-1]
    go = threading.Barrier(CLIENTS)

    def submit_all(i: int) -> None:
        mine = ports[i % REPLICAS :] + ports[: i % REPLICAS]  # spread over the replicas
        client = Client(mine, tokens[i])
        try:
            go.wait(timeout=30)
            for n in range(PER_CLIENT):
                body = BODIES[(i + n) % len(BODIES)]
                status, doc = client.post(body, f"client-{i}-{n}")
                with lock:
                    if status != 202 or doc.get("status") != "PENDING":
                        failures.append(f"client {i} #{n}: {status} {doc}")
                        continue
                    submitted.append(doc["cluster_id"])
                    if len(submitted) >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        victim.proc.send_signal(signal.SIGKILL)  # mid-provision
        except Exception as exc:  # reported below with the client that saw it
            with lock:
                failures.append(f"client {i}: {type(exc).__name__}: {exc}")
        finally:
            failovers.append(client.failovers)
            client.close()

    threads = [threading.Thread(target=submit_all, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE)
    assert not any(t.is_alive() for t in threads), "a client did not finish in time"
    assert failures == [], failures[:5]
    assert killed.is_set() and victim.proc.wait(timeout=10) == -signal.SIGKILL
    # Retried submissions (same key) are the same cluster: exactly one per request.
    assert len(submitted) == len(set(submitted)) == CLIENTS * PER_CLIENT
    submit_seconds = time.monotonic() - started

    broker = replicas[0].broker()
    sim = broker.provider("sim")
    assert isinstance(sim, SimProvider)
    settled = {Status.RUNNING, Status.FAILED, Status.STOPPED, Status.COMPLETED}
    while True:  # every cluster settles; the sim runs exactly the RUNNING clusters' nodes
        stored = broker.store.list_clusters(limit=None)
        running = {c.id: c.nodes_count for c in stored if c.status is Status.RUNNING}
        alive = Counter(n.cluster_id for n in sim.all_nodes())
        if all(c.status in settled for c in stored) and dict(alive) == running:
            break
        if time.monotonic() - started > DEADLINE:
            pytest.fail(
                f"not settled after {DEADLINE:.0f}s: "
                f"{dict(Counter(c.status.value for c in stored))}; sim nodes of clusters "
                f"not RUNNING: {sorted(str(c) for c in set(alive) - set(running))[:5]}\n"
                + replicas[0].output()[-3000:]
            )
        time.sleep(0.5)
    settle_seconds = time.monotonic() - started

    assert sorted(c.id for c in stored) == sorted(submitted)
    orphaned_then_requeued = 0
    for cluster in stored:
        if cluster.status is not Status.RUNNING:
            assert cluster.reason, cluster  # ended with a reason
        assert_provisioned_once(broker, cluster)
        orphaned_then_requeued += cluster.cycle > 1
    for srv in replicas:
        log = srv.output()
        assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
    print(
        f"\n{len(submitted)} submissions over {REPLICAS} replicas in {submit_seconds:.1f}s "
        f"({sum(failovers)} client failovers after the kill), settled and swept after "
        f"{settle_seconds:.1f}s: {dict(Counter(c.status.value for c in stored))}; "
        f"{orphaned_then_requeued} cluster(s) ran a second cycle after the kill"
    )
