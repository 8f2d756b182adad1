"""broker.client.Client and the CLI with BROKER_URL, against real `broker serve --sim` processes.

The records the Client builds from the service's documents are compared with what the Broker
reads from the same store; the CLI's remote output with its local output; every error with
the class (and exit code) the Broker raises. No output, exception text or repr may contain
the token."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.api import Broker
from broker.client import Client, launch_text, request_body
from broker.errors import (
    BrokerError,
    Cancelled,
    ConflictError,
    EnvError,
    Forbidden,
    InvalidRequest,
    NoShape,
    NotFoundError,
    ProvisionFailed,
    ServiceError,
    ServiceUnavailable,
    Unauthorized,
    WaitTimeout,
)
from broker.inputs import RequestInputs, build_request
from broker.lifecycle import Status
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.settings import Settings
from broker.views import cluster_document, report_document
from shapes.catalog import ShapeFilter, load_bundled_catalog
from shapes.errors import Exit
from tests.conftest import bundled_shape_id
from tests.server.conftest import BrokerServer, free_port, server_env, wait_for

ROOT = Path(__file__).resolve().parents[2]
# The README's burst16 example with a command that keeps running: provisioning through a
# service now waits for every rank's command to start (torchrun is not on these nodes).
EXAMPLE = Path(tempfile.mkdtemp(prefix="bb-client-example-")) / "burst16.isc"
EXAMPLE.write_text(
    (ROOT / "examples" / "burst16.isc").read_text().split("command = ")[0]
    + "command = 'echo ready; sleep 300'\n"
)
CATALOG = load_bundled_catalog()
SLOW = bundled_shape_id("aws", "us-east-1")  # the scenario server's slow shape
API_NAMES = {"gpu": "gpu", "gpus": "gpus", "launch_file": "launch_file"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    """One server for the module; every test uses its own organisation."""
    home = tmp_path_factory.mktemp("client-server")
    server = BrokerServer(
        home / "state", server_env(home), "--workers", "2", "--reconcile-every", "1"
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scenario_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    """A server whose simulated cloud has no capacity but on SLOW, whose launches take a
    minute (so a provisioning can be caught in flight). A stopped cluster's worker stays in
    its launch until the cloud answers, so there is a worker for each slow cluster here."""
    home = tmp_path_factory.mktemp("client-scenario")
    scenario = home / "scenario.toml"
    scenario.write_text(
        f'[default]\ncapacity_nodes = 0\n[shapes."{SLOW}"]\ncapacity_nodes = 1000\n'
        "latency_ms = 60000\n"
    )
    server = BrokerServer(
        home / "state",
        server_env(home),
        "--workers",
        "6",
        "--reconcile-every",
        "1",
        "--sim-scenario",
        str(scenario),
    )
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


_orgs = iter(range(10**6))


def org_client(srv: BrokerServer, role: str = "member", **kwargs: Any) -> tuple[Client, str]:
    """A Client with a token of a fresh organisation, and that token."""
    org = f"org{os.getpid()}-{next(_orgs)}"
    token = srv.token(org, role)
    # The seed's example (EXAMPLE) lists this dataset: the service refuses it when missing.
    dataset = srv.state_dir / "artifacts" / org / "datasets" / "fashion-mnist" / "train.csv"
    dataset.parent.mkdir(parents=True, exist_ok=True)
    dataset.write_text("label,pixels\n")
    return Client(srv.url, token, **kwargs), token


def gpus(n: int = 16, **rank: Any) -> QuoteRequest:
    return QuoteRequest(rank=RankRequest(gpus=n, **rank))


def no_token(token: str, *texts: object) -> None:
    for text in texts:
        assert token not in str(text), f"the token leaked into: {str(text)[:300]}"


# -- the Client ----------------------------------------------------------------------------------


def test_client_has_the_broker_methods_a_scheduler_uses() -> None:
    for name in (
        "quote", "submit", "run", "provision", "restart", "requeue", "get", "attempts",
        "describe", "env", "list_clusters", "page_clusters", "release", "stop", "delete",
        "util", "create_token", "list_tokens", "revoke_token",
    ):  # fmt: skip
        assert callable(getattr(Broker, name)) and callable(getattr(Client, name)), name


def test_lifecycle_through_the_client(srv: BrokerServer) -> None:
    client, token = org_client(srv)
    submitted = client.submit(gpus(16))
    assert submitted.status is Status.PENDING and submitted.gpus == 16
    assert submitted.org and submitted.org.startswith("org")
    running = client.run(submitted.id)
    assert running.status is Status.RUNNING and running.id == submitted.id
    assert len(running.nodes) == running.nodes_count and running.procs_per_node
    assert client.get(submitted.id[:9]).id == submitted.id  # a unique prefix, as locally

    report = client.describe(submitted.id)
    assert [t.status for t in report.transitions] == [
        Status.PENDING, Status.QUEUED, Status.STARTING, Status.RUNNING,
    ]  # fmt: skip
    assert [a.outcome.value for a in report.attempts] == ["running"]
    assert report.usage.gpu_hours >= 0 and report.attempts[0].duration is not None

    env = client.env(submitted.id, 1)
    assert env["NODE_RANK"] == "1" and env["NNODES"] == str(len(running.nodes))
    assert env["MASTER_ADDR"] == running.nodes[0].private_ip
    util = client.util()
    assert sum(row["gpus_running"] for row in util.values()) == running.gpus_billed

    stopped = client.stop(submitted.id)
    assert stopped.status is Status.STOPPED and client.stop(submitted.id) == stopped
    again = client.restart(submitted.id)
    assert again.status is Status.RUNNING and again.cycle == 2
    released = client.release(submitted.id)
    assert released.status is Status.COMPLETED
    assert client.release(submitted.id).status is Status.COMPLETED  # twice is no error
    assert client.delete(submitted.id) is None
    with pytest.raises(NotFoundError) as err:
        client.get(submitted.id)
    assert err.value.exit_code == Exit.INVALID and submitted.id in str(err.value)
    no_token(token, repr(client), err.value)


def test_records_are_those_the_broker_reads_from_the_same_store(srv: BrokerServer) -> None:
    client, _ = org_client(srv)
    cluster = client.provision(gpus(8))
    client.release(cluster.id)  # finished: its usage no longer grows
    local = srv.broker().scoped(str(cluster.org))
    assert cluster_document(client.get(cluster.id)) == cluster_document(local.get(cluster.id))
    assert report_document(client.describe(cluster.id)) == report_document(
        local.describe(cluster.id)
    )
    ours, theirs = client.describe(cluster.id), local.describe(cluster.id)
    assert ours.usage == pytest.approx(theirs.usage)
    assert [t.at for t in ours.transitions] == [int(t.at) for t in theirs.transitions]
    assert [a.duration for a in ours.attempts] == [a.duration for a in theirs.attempts]
    assert client.util() == local.util()


def test_list_and_pages(srv: BrokerServer) -> None:
    client, _ = org_client(srv)
    ids = [client.submit(gpus(8)).id for _ in range(3)]
    assert [c.id for c in client.list_clusters()] == ids  # oldest first, as the Broker's
    assert [c.id for c in client.list_clusters(limit=2)] == ids[1:]
    assert [c.id for c in client.list_clusters(limit=None)] == ids
    first = client.page_clusters(limit=2)
    assert [c.id for c in first.clusters] == ids[:0:-1] and first.next_cursor
    rest = client.page_clusters(limit=2, cursor=first.next_cursor)
    assert [c.id for c in rest.clusters] == ids[:1] and rest.next_cursor is None
    for cluster_id in ids:
        client.wait(cluster_id, poll=0.2, timeout=30)
    client.stop(ids[0])
    running = client.list_clusters({Status.RUNNING})
    assert [c.id for c in running] == ids[1:]
    assert [c.id for c in client.list_clusters({Status.STOPPED})] == ids[:1]
    assert client.list_clusters(set()) == []
    assert client.page_clusters(mode="cycle").clusters == []


def test_a_launch_file_experiment_travels_as_its_text(srv: BrokerServer) -> None:
    client, _ = org_client(srv)
    request, experiment = build_request(
        RequestInputs(launch_path=EXAMPLE), burst_max_gpus=48, catalog=CATALOG
    )
    assert experiment is not None
    cluster = client.provision(request, experiment=experiment)
    assert cluster.name == experiment["experiment_name"] == client.get(cluster.id).name
    env = client.env(cluster.id, 0)
    assert env["STRONG_EXPERIMENT_NAME"] == experiment["experiment_name"]
    assert env["STRONG_COMPUTE_MODE"] == "burst"
    local = srv.broker().get(cluster.id)
    assert local.experiment == experiment  # the service parsed the same launch file
    assert local.request["rank"]["priority"] == list(request.rank.priority or ())


def test_launch_text_escapes_what_toml_needs() -> None:
    import tomllib

    odd = {"experiment_name": 'a "b" \\ \n\x7f é 😀', "gpus": 8, "dataset_id_list": ["x"],
           "compute_mode": "burst", "max_rapid_cycles": None}  # fmt: skip
    parsed = tomllib.loads(launch_text(odd))
    assert parsed == {k: v for k, v in odd.items() if v is not None}
    body = request_body(gpus(16, priority=("a", "b")), backend="sim")
    assert body == {"gpus": 16, "priority": ["a", "b"], "provider": ["sim"], "hours": 1.0}


def test_quote_is_the_document(srv: BrokerServer) -> None:
    client, _ = org_client(srv)
    doc = client.quote(gpus(16), limit=3)
    assert len(doc["plans"]) == 3 and doc["plans_total"] > 3
    assert doc["request"]["gpus"] == 16 and {"excluded", "warnings", "catalog"} <= set(doc)
    assert client.quote({"gpus": 4, "gpu": ["H100"]})["plans"][0]["gpu"] in ("H100", "H100-NVL")


def test_tokens_through_the_client(srv: BrokerServer) -> None:
    admin, token = org_client(srv, "admin")
    org = str(admin.whoami()["org"])
    secret, record = admin.create_token(org, name="ci", role="member")
    assert record.org == org and record.role == "member" and secret.startswith("bbt_")
    member = Client(srv.url, secret)
    assert member.whoami()["token_id"] == record.id
    assert record.id in [t.id for t in admin.list_tokens()]
    with pytest.raises(Forbidden) as forbidden:
        member.list_tokens()
    assert forbidden.value.exit_code == Exit.INVALID
    with pytest.raises(NotFoundError):
        admin.create_token("someone-else")
    revoked = admin.revoke_token(record.id)
    assert revoked.revoked_at is not None and admin.revoke_token(record.id).revoked_at
    with pytest.raises(Unauthorized) as refused:
        member.list_clusters()
    no_token(secret, refused.value, repr(member))
    no_token(token, forbidden.value, repr(admin))


# -- errors ----------------------------------------------------------------------------------------


def test_errors_come_back_as_the_brokers_classes(srv: BrokerServer, tmp_path: Path) -> None:
    client, token = org_client(srv)
    raised: list[BaseException] = []

    def fails(cls: type[BrokerError], call: Any) -> Any:
        with pytest.raises(cls) as err:
            call()
        assert type(err.value) is cls, repr(err.value)
        raised.append(err.value)
        return err.value

    assert fails(NotFoundError, lambda: client.describe("bb-nope")).exit_code == Exit.INVALID
    fails(NotFoundError, lambda: client.env("", 0))
    cluster = client.provision(gpus(8))
    fails(EnvError, lambda: client.env(cluster.id, 99))
    fails(ConflictError, lambda: client.delete(cluster.id))  # RUNNING: stop it first
    fails(NoShape, lambda: client.submit(gpus(8, max_price_per_hour=0.0001)))
    fails(InvalidRequest, lambda: client.page_clusters(cursor="not-one"))
    fails(Unauthorized, lambda: Client(srv.url, "bbt_" + "x" * 43).get(cluster.id))

    # 422: the same diagnostics, field by field, as the in-process Broker gives
    local = Broker(state_dir=tmp_path / "local", backend="sim", catalog=CATALOG)
    for request in (gpus(100), gpus(64), gpus(8, max_price_per_hour=-1.0)):
        with pytest.raises(InvalidRequest) as here:
            local.submit(request)
        there = fails(InvalidRequest, lambda r=request: client.submit(r))
        assert [d.field for d in there.errors] == [d.field for d in here.value.errors]
        if request.rank.max_price_per_hour is None:  # the API's schema words a bad price
            assert there.errors == here.value.errors and str(there) == str(here.value)
    body = {"gpus": 16, "gpu": ["X100"], "region": ["mars-1"], "provider": ["aws", "ibm"]}
    with pytest.raises(InvalidRequest) as here:
        build_request(
            RequestInputs(gpus=16, gpu=("X100",), region=("mars-1",), provider=("aws", "ibm"),
                          names=API_NAMES),
            burst_max_gpus=48,
            catalog=CATALOG,
        )  # fmt: skip
    there = fails(InvalidRequest, lambda: client.submit(body))
    assert there.errors == here.value.errors
    assert [d.field for d in there.errors] == ["gpu", "provider", "region"]
    schema = fails(InvalidRequest, lambda: client.submit({"gpus": "16", "colour": 1}))
    assert {d.field for d in schema.errors} == {"gpus", "colour"}
    bad_file = fails(InvalidRequest, lambda: client.submit({"launch_file": "gpus = 16\n["}))
    assert bad_file.errors[0].line is not None  # TOML syntax error: its line comes back
    for exc in raised:
        no_token(token, exc, repr(exc))


def test_an_unreachable_service_is_service_unavailable(tmp_path: Path) -> None:
    token = "bbt_" + "s" * 43
    slept: list[float] = []
    url = f"http://127.0.0.1:{free_port()}"
    client = Client(url, token, sleep=slept.append)
    for call in (lambda: client.get("bb-1"), lambda: client.submit(gpus(8))):
        with pytest.raises(ServiceUnavailable) as err:
            call()
        assert err.value.exit_code == Exit.UNAVAILABLE and err.value.http_status == 503
        assert url in str(err.value) and "3 tries" in str(err.value)
        no_token(token, err.value, repr(err.value), repr(client))
    assert len(slept) == 4  # two retries each for the GET and the keyed submit
    slept.clear()
    with pytest.raises(ServiceUnavailable):
        client.delete("bb-1")  # not idempotent: never retried
    assert slept == []


def test_the_client_refuses_what_it_cannot_send() -> None:
    for url, token in (
        ("ftp://host", "t"), ("http://user:pw@host", "t"), ("http://host", ""),
        ("http://host", "bad token\n"), ("http://host?x=1", "t"),
    ):  # fmt: skip
        with pytest.raises(InvalidRequest) as err:
            Client(url, token)
        assert "pw" not in str(err.value) and "bad token" not in str(err.value)
    with pytest.raises(InvalidRequest):
        Client("http://host", "t", backend="aws")
    settings = Settings.from_env({"BROKER_TOKEN": "bbt_secret", "BROKER_URL": "http://h"})
    assert settings.service_token == "bbt_secret" and settings.service_url == "http://h"
    assert "bbt_secret" not in repr(settings) and "token" not in repr(settings)


def test_a_service_that_is_not_the_broker_is_named(tmp_path: Path) -> None:
    """A URL that answers, but not as the broker: a 404 with no route, or not JSON."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Other(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404 if "clusters" in self.path else 200)
            self.end_headers()
            self.wfile.write(b"<html>nope</html>")

        def log_message(self, *_args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{httpd.server_port}", "bbt_tok")
        with pytest.raises(ServiceError) as err:
            client.get("bb-1")
        assert err.value.status == 404 and "HTTP 404" in str(err.value)
        with pytest.raises(ServiceError, match="not JSON"):
            client.util()
    finally:
        httpd.shutdown()


class DroppingProxy:
    """Forwards each HTTP request to the server; the first ``drop`` requests whose first
    line starts with ``method`` reach the server, but their answer never comes back (the
    connection is closed), as when a network drops a reply."""

    def __init__(self, port: int, method: str, drop: int = 1) -> None:
        self.target = port
        self.method = method.encode()
        self.drop = drop
        self.forwarded: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += conn.recv(65536)
        request = head + b"\r\n\r\n" + body
        self.forwarded.append(head.split(b"\r\n")[0])
        with socket.create_connection(("127.0.0.1", self.target)) as up:
            up.sendall(request)
            answer = b""
            while chunk := up.recv(65536):
                answer += chunk
        if request.startswith(self.method) and self.drop > 0:
            self.drop -= 1
            return  # the server did it; the client hears nothing
        conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()


def test_a_retried_submission_returns_the_same_cluster(srv: BrokerServer) -> None:
    client, token = org_client(srv)
    once = client.submit(gpus(8), idempotency_key="job-42")
    assert client.submit(gpus(8), idempotency_key="job-42").id == once.id

    proxy = DroppingProxy(srv.port, "POST")
    try:
        through = Client(proxy.url, token, sleep=lambda _s: None)
        made = through.submit(gpus(8))  # the first answer is lost: retried with its key
        assert [line.split()[0] for line in proxy.forwarded] == [b"POST", b"POST"]
        assert {c.id for c in client.list_clusters()} == {once.id, made.id}
        proxy.drop, proxy.method = 1, b"GET"
        assert through.get(made.id).id == made.id  # a GET is retried too
        assert len(proxy.forwarded) == 4
    finally:
        proxy.close()


def test_wait_raises_what_broker_run_raises(scenario_srv: BrokerServer) -> None:
    client, token = org_client(scenario_srv)
    no_capacity = ShapeFilter(gpus=("H100",), providers=("gcp",))  # SLOW is neither
    with pytest.raises(ProvisionFailed) as failed:
        client.provision(gpus(8, filter=no_capacity), poll=0.2)
    cluster = failed.value.cluster
    assert cluster.status is Status.FAILED and cluster.reason == "NoCapacity"
    assert failed.value.attempts and failed.value.exit_code == Exit.NO_SHAPE
    assert all(a.outcome.value == "failed" for a in failed.value.attempts)

    slow = client.submit(gpus(16, priority=(SLOW,), strict_priority=True))
    with pytest.raises(WaitTimeout) as late:
        client.wait(slow.id, poll=0.1, timeout=0.5)
    assert late.value.cluster is not None and late.value.cluster.id == slow.id
    assert late.value.exit_code == Exit.NO_SHAPE

    def stop_soon() -> None:
        time.sleep(0.5)
        client.stop(slow.id)

    threading.Thread(target=stop_soon, daemon=True).start()
    with pytest.raises(Cancelled) as moved:
        client.wait(slow.id, poll=0.1)
    assert moved.value.cluster is not None and moved.value.cluster.status is Status.STOPPED
    no_token(token, failed.value, late.value, moved.value)


# -- the CLI with BROKER_URL ---------------------------------------------------------------------


class Cli:
    """`python -m broker.cli` processes, local (own state dir) or remote (BROKER_URL)."""

    def __init__(self, tmp_path: Path, url: str | None = None, token: str | None = None) -> None:
        self.env = server_env(tmp_path / "cli")
        self.state = tmp_path / "cli-state"
        self.env["BROKER_STATE_DIR"] = str(self.state)
        self.env.pop("BROKER_URL", None)
        self.env.pop("BROKER_TOKEN", None)
        if url is not None:
            self.env["BROKER_URL"] = url
        if token is not None:
            self.env["BROKER_TOKEN"] = token
        self.seen: list[str] = []

    def __call__(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "broker.cli", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.seen += [proc.stdout, proc.stderr]
        return proc

    def json(self, *argv: str) -> Any:
        proc = self(*argv, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


def keys(doc: Any) -> Any:
    """The shape of a document: its keys, recursively (lists by their first item)."""
    if isinstance(doc, dict):
        return {k: keys(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [keys(doc[0])] if doc else []
    return None


def test_the_cli_with_broker_url_prints_what_it_prints_locally(
    srv: BrokerServer, tmp_path: Path
) -> None:
    client, token = org_client(srv)
    remote = Cli(tmp_path / "remote", srv.url, token)
    local = Cli(tmp_path / "local")

    there = remote.json("provision", "--gpus", "16")
    here = local.json("provision", "--provider", "sim", "--gpus", "16")
    assert keys(there) == keys(here) and there["status"] == here["status"] == "RUNNING"
    assert there["org"] == client.whoami()["org"] and here["org"] is None
    cid = there["cluster_id"]
    assert client.get(cid).status is Status.RUNNING

    assert keys(remote.json("list")) == keys(local.json("list"))
    assert [c["cluster_id"] for c in remote.json("list")] == [cid]
    described = remote.json("describe", cid)
    assert keys(described) == keys(local.json("describe", here["cluster_id"]))
    assert described == report_document(srv.broker().describe(cid)) | {
        "gpu_hours": described["gpu_hours"], "cost": described["cost"],
    }  # fmt: skip
    env = remote.json("env", cid[:10], "--rank", "1")
    assert env == client.env(cid, 1)
    assert set(env) == set(local.json("env", here["cluster_id"], "--rank", "1"))
    util_there, util_here = remote.json("util"), local.json("util")  # credits: org vs none
    assert keys(util_there["providers"]) == keys(util_here["providers"])
    assert set(util_there) == set(util_here)
    proc = remote("env", cid, "--rank", "0")
    assert proc.returncode == 0 and "export NODE_RANK=0\n" in proc.stdout

    proc = remote("stop", cid)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{cid} STOPPED"
    proc = remote("restart", cid)
    assert proc.returncode == 0 and f"{cid} RUNNING:" in proc.stdout, proc.stderr
    assert "attempt 2:" in proc.stderr and "attempt 1:" not in proc.stderr
    assert remote.json("release", cid)["status"] == "COMPLETED"
    proc = remote("release", cid)
    assert proc.stdout.strip() == f"{cid} was already COMPLETED: nothing to release"
    assert remote.json("delete", cid) == {"deleted": cid}
    proc = remote("describe", cid)
    assert proc.returncode == Exit.INVALID and f"no cluster '{cid}'" in proc.stderr
    proc = remote("describe", cid, "--json")
    assert json.loads(proc.stdout)["error"] == "NotFoundError"

    # human output, a launch file, and warnings as locally
    proc = remote("provision", str(EXAMPLE), "--priority", "nope:x:y:spot")
    assert proc.returncode == 0, proc.stderr
    assert " RUNNING: " in proc.stdout and "environment: broker env " in proc.stdout
    assert "attempt 1:" in proc.stderr and "RUNNING" in proc.stderr
    assert "warning: burst_shape_priority_list: overridden" in proc.stderr
    assert "warning: priority" in proc.stderr
    assert not (remote.state / "broker.sqlite").exists()  # nothing ran on a local store
    no_token(token, *remote.seen, srv.output())


def test_cli_errors_with_broker_url(srv: BrokerServer, tmp_path: Path) -> None:
    _, token = org_client(srv)
    remote = Cli(tmp_path, srv.url, token)
    proc = remote("provision", "--gpus", "16", "--gpu", "X100", "--json")
    assert proc.returncode == Exit.INVALID
    doc = json.loads(proc.stdout)
    assert doc["error"] == "InvalidRequest" and doc["errors"][0]["field"] == "gpu"
    proc = remote("provision", "--gpus", "16", "--max-price-per-hour", "0.01")
    assert proc.returncode == Exit.NO_SHAPE and "no shape can serve" in proc.stderr
    assert remote("list", "--status", "RUNNING").returncode == 0

    wrong = Cli(tmp_path, srv.url, "bbt_" + "w" * 43)
    proc = wrong("list")
    assert proc.returncode == Exit.INVALID and "API token" in proc.stderr
    down_url = f"http://127.0.0.1:{free_port()}"
    down = Cli(tmp_path, down_url, token)
    proc = down("describe", "bb-1")
    assert proc.returncode == Exit.UNAVAILABLE and down_url in proc.stderr
    assert "Traceback" not in proc.stderr
    untokened = Cli(tmp_path, srv.url)
    proc = untokened("list")
    assert proc.returncode == Exit.INVALID and "BROKER_TOKEN is not" in proc.stderr
    assert untokened("quote", "--gpus", "8", "--limit", "1").returncode == 0  # stays local
    bad_url = Cli(tmp_path, "http://me:hunter2@host", token)
    proc = bad_url("list")
    assert proc.returncode == Exit.INVALID and "BROKER_URL" in proc.stderr
    assert "hunter2" not in proc.stderr
    no_token(token, *remote.seen, *down.seen, *bad_url.seen)


def test_cli_provision_failed_and_interrupted(scenario_srv: BrokerServer, tmp_path: Path) -> None:
    client, token = org_client(scenario_srv)
    remote = Cli(tmp_path, scenario_srv.url, token)
    proc = remote("provision", "--gpus", "8", "--provider", "azure", "--gpu", "H100", "--json")
    assert proc.returncode == Exit.NO_SHAPE, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "FAILED" and doc["reason"] == "NoCapacity" and doc["attempts"]
    assert "FAILED" in proc.stderr

    proc = remote("provision", "--gpus", "16", "--priority", SLOW, "--strict-priority",
                  "--timeout", "1")  # fmt: skip
    assert proc.returncode == Exit.NO_SHAPE, proc.stderr
    assert "after --timeout 1 s; stopped it: it is STOPPED" in proc.stderr

    child = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "provision", "--gpus", "16", "--priority", SLOW],
        env=remote.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None
    first = child.stderr.readline()
    assert first.startswith("submitted "), first
    cid = first.split()[1]
    wait_for(lambda: client.get(cid).status is Status.STARTING, timeout=20)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == Exit.SIGINT, err
    assert f"{cid} is STOPPED" in err
    assert client.get(cid).status is Status.STOPPED
    no_token(token, *remote.seen, out, err)


def test_broker_help_and_quote_load_no_client() -> None:
    probe = (
        "import sys\nfrom broker.cli import main\n"
        "for argv in (['--help'], ['quote', '--gpus', '16', '--json']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "mods = ('broker.client', 'broker.cli.remote', 'urllib.request', 'tenacity')\n"
        "print('LOADED:' + ','.join(m for m in mods if m in sys.modules), file=sys.stderr)\n"
    )
    env = dict(os.environ, BROKER_URL="http://127.0.0.1:9", BROKER_TOKEN="bbt_x")
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False,
        timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert "LOADED:\n" in proc.stderr, proc.stderr[-2000:]


def test_a_submission_the_credits_cannot_pay_exits_8_through_the_cli(
    srv: BrokerServer, tmp_path: Path
) -> None:
    client, token = org_client(srv)
    org = client.whoami()["org"]
    srv.broker().set_credits(org, 0.01)  # the cheapest 4-GPU plan costs ~$0.25 an hour
    remote = Cli(tmp_path / "remote", srv.url, token)
    proc = remote("provision", "--gpus", "4", "--provider", "sim")
    assert proc.returncode == 8, proc.stderr
    assert f"organisation {org!r} has $0.01 of credits left" in proc.stderr
    assert "Traceback" not in proc.stderr
