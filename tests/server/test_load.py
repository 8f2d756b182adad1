"""Load: 200 submissions from 20 concurrent clients against one `broker serve --sim` process.

Bounded in count and time (every wait has a deadline). Every submission is answered 202; every
cluster then ends RUNNING, or FAILED/STOPPED with a reason; none is lost (each organisation's
pages, followed through ``next_cursor``, list exactly its ids), none is made twice (the store
holds exactly the submitted clusters, each with one winning attempt per cycle, and the
simulated cloud runs exactly the nodes of the RUNNING ones), and an organisation sees only its
own clusters.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.lifecycle import Status
from providers.sim import SimProvider
from tests.server.conftest import BrokerServer, assert_provisioned_once, server_env

CLIENTS = 20  # threads, each with its own token
PER_CLIENT = 10  # submissions each: 200 in all
ORGS = ("acme", "globex")  # clients alternate between them
BODIES: tuple[dict[str, Any], ...] = (
    {"gpus": 16},
    {"gpus": 16, "hours": 2},
    {"gpus": 8},
    {"gpus": 16, "provisioning": "on-demand"},
)
SETTLED = {Status.RUNNING.value, Status.FAILED.value, Status.STOPPED.value}
DEADLINE = 45.0  # seconds for the whole run, submissions and provisioning


class Client:
    """One keep-alive HTTP/1.1 connection with one token (a scheduler's client)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        if data is not None:
            sent["Content-Type"] = "application/json"
        for tries in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=sent)
                resp = self.conn.getresponse()
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
            except (ConnectionError, http.client.HTTPException):
                # The server closed an idle keep-alive connection: open another and send
                # again (safe: a GET, or a POST carrying an Idempotency-Key).
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if tries == 2 or (method != "GET" and "Idempotency-Key" not in sent):
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def pages(client: Client, limit: int = 50) -> Iterator[dict[str, Any]]:
    """Every cluster document of the client's organisation, page by page."""
    cursor: str | None = None
    for _ in range(1000):  # bounded: 200 clusters are 4 pages of 50
        path = f"/v1/clusters?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        status, doc = client.request("GET", path)
        assert status == 200, doc
        yield from doc["clusters"]
        cursor = doc["next_cursor"]
        if cursor is None:
            return
    raise AssertionError("next_cursor never ended")


@pytest.fixture
def load_server(tmp_path: Path) -> Iterator[BrokerServer]:
    """A server on sim (latency 0) with 4 workers, reconciling every second."""
    srv = BrokerServer(
        tmp_path / "state", server_env(tmp_path), "--workers", "4", "--reconcile-every", "1"
    )
    try:
        yield srv
    finally:
        srv.stop(timeout=10)


def test_200_submissions_from_20_clients(load_server: BrokerServer) -> None:
    srv = load_server
    started = time.monotonic()
    tokens = [srv.token(ORGS[i % len(ORGS)], name=f"client-{i}") for i in range(CLIENTS)]
    submitted: dict[str, list[str]] = defaultdict(list)  # org -> cluster ids
    replays: list[tuple[str, str]] = []  # (id the first answer gave, id a replay gave)
    failures: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(CLIENTS)

    def submit_all(i: int) -> None:
        org = ORGS[i % len(ORGS)]
        client = Client(srv.port, tokens[i])
        try:
            go.wait(timeout=30)
            first: tuple[str, str] | None = None
            for n in range(PER_CLIENT):
                key = f"client-{i}-{n}"
                body = BODIES[(i + n) % len(BODIES)]
                status, doc = client.request("POST", "/v1/clusters", body, {"Idempotency-Key": key})
                if status != 202 or doc["status"] != "PENDING" or doc["org"] != org:
                    with lock:
                        failures.append(f"client {i} #{n}: {status} {doc}")
                    continue
                with lock:
                    submitted[org].append(doc["cluster_id"])
                if first is None:
                    first = (key, doc["cluster_id"])
            if first is not None:  # a retried submission is the same cluster, not a new one
                status, doc = client.request(
                    "POST", "/v1/clusters", BODIES[i % len(BODIES)], {"Idempotency-Key": first[0]}
                )
                with lock:
                    if status != 202:
                        failures.append(f"client {i} replay: {status} {doc}")
                    else:
                        replays.append((first[1], doc["cluster_id"]))
        except Exception as exc:  # reported below, with the client that saw it
            with lock:
                failures.append(f"client {i}: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    threads = [threading.Thread(target=submit_all, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE)
    assert not any(t.is_alive() for t in threads), "a client did not finish in time"
    submit_seconds = time.monotonic() - started
    assert failures == [], failures[:5]
    assert sum(len(ids) for ids in submitted.values()) == CLIENTS * PER_CLIENT
    assert len(replays) == CLIENTS and all(a == b for a, b in replays), replays

    # Every cluster settles, within the deadline; each organisation lists exactly its own.
    readers = {org: Client(srv.port, tokens[i]) for i, org in enumerate(ORGS)}
    listed: dict[str, list[dict[str, Any]]] = {}
    try:
        while True:
            listed = {org: list(pages(readers[org])) for org in ORGS}
            unsettled = [d for docs in listed.values() for d in docs if d["status"] not in SETTLED]
            if not unsettled:
                break
            if time.monotonic() - started > DEADLINE:
                statuses = Counter(d["status"] for d in unsettled)
                pytest.fail(
                    f"{len(unsettled)} cluster(s) unsettled after {DEADLINE:.0f}s: "
                    f"{dict(statuses)}\n{srv.output()[-3000:]}"
                )
            time.sleep(0.2)
        settle_seconds = time.monotonic() - started
        for org in ORGS:
            ids = [d["cluster_id"] for d in listed[org]]
            assert len(ids) == len(set(ids)), f"{org}: a cluster listed twice"
            assert sorted(ids) == sorted(submitted[org]), f"{org}: lost or foreign clusters"
            assert {d["org"] for d in listed[org]} == {org}
            created = [d["created_at"] for d in listed[org]]
            assert created == sorted(created, reverse=True), f"{org}: not newest first"
        # Another organisation's cluster does not exist for this one (404, not 403).
        for org, other in (ORGS, ORGS[::-1]):
            for cluster_id in submitted[other][:5]:
                status, _ = readers[org].request("GET", f"/v1/clusters/{cluster_id}")
                assert status == 404, (org, cluster_id, status)
        # A cluster that did not come up says why.
        for doc in (d for docs in listed.values() for d in docs):
            if doc["status"] != Status.RUNNING.value:
                assert doc["reason"], doc
    finally:
        for reader in readers.values():
            reader.close()

    # None twice, in the store: exactly the submitted clusters; one fallback loop at a time
    # (attempts numbered 1..k across cycles, none repeated: two workers running one cluster
    # would repeat them); per cycle at most one RUNNING transition and one winning attempt
    # (exactly one in a RUNNING cluster's current cycle); the simulated cloud runs exactly
    # the nodes of the RUNNING clusters, so no gang was launched twice or left behind.
    broker = srv.broker()
    stored = broker.store.list_clusters(limit=None)
    all_ids = sorted(i for ids in submitted.values() for i in ids)
    assert sorted(c.id for c in stored) == all_ids
    expected_nodes: dict[str, int] = {}
    for cluster in stored:
        assert_provisioned_once(broker, cluster)
        if cluster.status is Status.RUNNING:
            assert cluster.nodes_count is not None
            expected_nodes[cluster.id] = cluster.nodes_count
    sim = broker.provider("sim")
    assert isinstance(sim, SimProvider)
    alive = Counter(n.cluster_id for n in sim.all_nodes())
    assert dict(alive) == expected_nodes

    log = srv.output()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
    print(
        f"\n{len(all_ids)} submissions in {submit_seconds:.1f}s, all settled after "
        f"{settle_seconds:.1f}s: {dict(Counter(c.status.value for c in stored))}"
    )
