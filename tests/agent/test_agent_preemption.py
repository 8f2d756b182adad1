"""The node agent's preemption watch (docs/agent-protocol.md, ``preempted``): a real
``python3 -I agent.py --cloud C --metadata-url URL`` process against the scripted service stub
of test_agent.py, with :class:`Metadata`, a loopback stand-in for each cloud's instance
metadata endpoint that answers as the cloud does (IMDSv2 token required, ``Metadata-Flavor:
Google``, ``Metadata: true``) and raises a preemption notice when told to.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from broker.agent import agent
from tests.agent import test_agent
from tests.agent.test_agent import CLUSTER, WAIT, Answer, Stub, finish, run_answer, wait_until
from tests.agent.test_agent_artifacts import NEVER, Blobs, uploads

# test_agent's fixtures: its service stubs and agent processes, cleaned up after each test.
agents, run_agent, stubs = test_agent.agents, test_agent.run_agent, test_agent.stubs

GCP_KEYS = {
    "/computeMetadata/v1/instance/preempted",
    "/computeMetadata/v1/instance/maintenance-event",
}
VM_NAME = "burst-c-agenttest-0"
AWS_WINDOW, AZURE_WINDOW = 120, 30  # seconds the stand-ins announce before the end
COMMAND = 'printf w > "$CHECKPOINT_ARTIFACT_PATH/w.pt"; echo ready; sleep 3.5; echo still-running'
GARBAGE: list[tuple[int, bytes]] = [
    (200, b"\xff\xfe<html>not metadata"),
    (200, b"[]"),
    (200, b'{"action": 7, "Events": "none"}'),
    (500, b"internal error"),
    (200, b"TRUE-ish"),
]


Served = tuple[int, bytes, dict[str, str]]  # status, body, headers


class _QuietServer(ThreadingHTTPServer):
    """A stand-in whose handler threads may outlive their test (a long poll held open while
    the agent is killed): a connection error there is expected, never a traceback on stderr
    in whatever test runs next."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class Metadata:
    """One cloud's metadata endpoint on 127.0.0.1 (``cloud``: aws, gcp or azure), without a
    notice until :meth:`preempt`; ``garbage``: every answer is the next of GARBAGE instead.
    Records every request (method, path and query, lower-cased headers)."""

    def __init__(self, cloud: str, garbage: bool = False, imds_v1: bool = False) -> None:
        self.cloud = cloud
        self.garbage = garbage
        self.imds_v1 = imds_v1  # AWS: the token PUT is refused (403), GETs need no token
        self.noticed_at: float | None = None  # unix time of the notice
        self.noticed_mono = 0.0  # and on time.monotonic()
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.refused = 0  # requests without the cloud's required header or token
        self.served = 0
        self.changed = threading.Condition()
        meta = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                meta.handle(self, "GET")

            def do_PUT(self) -> None:
                meta.handle(self, "PUT")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def preempt(self) -> None:
        with self.changed:
            self.noticed_at, self.noticed_mono = time.time(), time.monotonic()
            self.changed.notify_all()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.changed:  # wake the long polls (GCP wait_for_change) still held open
            self.changed.notify_all()

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append((method, request.path, headers))
        parts = urllib.parse.urlsplit(request.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        if self.garbage:
            status, body = GARBAGE[self.served % len(GARBAGE)]
            self.served += 1
            answer: Served = (status, body, {})
        elif self.cloud == "aws":
            answer = self.aws(method, parts.path, headers)
        elif self.cloud == "gcp":
            answer = self.gcp(parts.path, query, headers)
        else:
            answer = self.azure(parts.path, query, headers)
        status, body, extra = answer
        request.send_response(status)
        for name, value in extra.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def aws(self, method: str, path: str, headers: dict[str, str]) -> Served:
        """IMDSv2 only: a token from PUT /latest/api/token (TTL header required), then every
        GET with X-aws-ec2-metadata-token; without it, 401."""
        text = {"Content-Type": "text/plain"}
        if method == "PUT" and self.imds_v1:
            return 403, b"", text
        if method == "PUT":
            ttl = headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if path != "/latest/api/token" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                self.refused += 1
                return 400, b"", text
            token = f"AQAEAtoken{len(self.tokens)}=="
            self.tokens.add(token)
            return 200, token.encode(), {**text, "X-aws-ec2-metadata-token-ttl-seconds": ttl}
        if not self.imds_v1 and headers.get("x-aws-ec2-metadata-token") not in self.tokens:
            self.refused += 1
            return 401, b"", text
        if path == "/latest/meta-data/spot/instance-action" and self.noticed_at is not None:
            end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.noticed_at + AWS_WINDOW))
            body = json.dumps({"action": "terminate", "time": end}).encode()
            return 200, body, {"Content-Type": "application/json"}
        return 404, b"<title>404 - Not Found</title>", {"Content-Type": "text/html"}

    def gcp(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Served:
        """``Metadata-Flavor: Google`` required (else 403); ``wait_for_change`` holds the
        answer until the value's ETag differs from ``last_etag`` or ``timeout_sec`` passed."""
        flavor = {"Metadata-Flavor": "Google", "Content-Type": "application/text"}
        if headers.get("metadata-flavor") != "Google" or "x-forwarded-for" in headers:
            self.refused += 1
            return 403, b"Missing Metadata-Flavor:Google header.", flavor
        if path not in GCP_KEYS:
            return 404, b"Not Found", flavor

        def current() -> tuple[str, str]:
            if path.endswith("/preempted"):
                value = "TRUE" if self.noticed_at is not None else "FALSE"
            else:
                value = "NONE"
            return value, hashlib.md5(value.encode()).hexdigest()[:16]

        value, etag = current()
        if query.get("wait_for_change") == "true":
            deadline = time.monotonic() + min(float(query.get("timeout_sec", "60")), 60)
            with self.changed:
                while etag == query.get("last_etag", etag) and time.monotonic() < deadline:
                    self.changed.wait(max(0.0, deadline - time.monotonic()))
                    value, etag = current()
        return 200, value.encode(), {**flavor, "ETag": etag}

    def azure(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Served:
        """``Metadata: true`` required (else 400); the VM's name; Scheduled Events, with a
        Preempt of another VM and a Freeze of this one before the notice."""
        json_type = {"Content-Type": "application/json; charset=utf-8"}
        if headers.get("metadata") != "true":
            self.refused += 1
            body = b'{"error": "Bad request. Required metadata header not specified"}'
            return 400, body, json_type
        if "api-version" not in query:
            return 400, b'{"error": "Bad request. api-version was not specified"}', json_type
        if path == "/metadata/instance/compute/name" and query.get("format") == "text":
            return 200, VM_NAME.encode(), {"Content-Type": "text/plain; charset=utf-8"}
        if path != "/metadata/scheduledevents":
            return 404, b'{"error": "Not found"}', json_type
        later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 600))
        events = [
            event("e-other", "Preempt", ["burst-c-agenttest-9"], later),
            event("e-freeze", "Freeze", [VM_NAME], later),
        ]
        if self.noticed_at is not None:
            end = self.noticed_at + AZURE_WINDOW
            stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(end))
            events.append(event("e-ours", "Preempt", [VM_NAME], stamp))
        document = {"DocumentIncarnation": len(events), "Events": events}
        return 200, json.dumps(document).encode(), json_type


def event(ident: str, kind: str, resources: list[str], not_before: str) -> dict[str, Any]:
    return {
        "EventId": ident,
        "EventStatus": "Scheduled",
        "EventType": kind,
        "ResourceType": "VirtualMachine",
        "Resources": resources,
        "NotBefore": not_before,
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }


@pytest.fixture
def metadata() -> Iterator[list[Metadata]]:
    made: list[Metadata] = []
    yield made
    for each in made:
        each.stop()


@pytest.fixture
def blobs() -> Iterator[Blobs]:
    made = Blobs()
    yield made
    made.stop()


def scenario(stubs: list[Stub], command: str) -> Stub:
    stub = Stub([WAIT, run_answer(command, sync=NEVER, final_sync_timeout=20)]).start()
    stubs.append(stub)
    return stub


def watch(cloud: str, url: str) -> list[str]:
    return ["--cloud", cloud, "--metadata-url", url, "--metadata-poll", "0.2"]


def times(stub: Stub, name: str, final: bool | None = None) -> list[float]:
    with stub.lock:
        return [
            t for t, n, b, _ in stub.calls if n == name and (final is None or b["final"] is final)
        ]


EXPECTED_ACTION = {"aws": "terminate", "gcp": "preempt", "azure": "preempt"}
WINDOW = {"aws": AWS_WINDOW, "gcp": None, "azure": AZURE_WINDOW}


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_notice_is_reported_once_and_the_final_sync_starts_while_the_command_runs(
    cloud: str, stubs: list[Stub], metadata: list[Metadata], blobs: Blobs, run_agent: Any
) -> None:
    meta = Metadata(cloud)
    metadata.append(meta)
    stub = scenario(stubs, COMMAND)
    uploads(stub, blobs)

    def notice_soon(body: dict[str, Any], count: int, answer: Answer) -> None:
        threading.Timer(1.0, meta.preempt).start()  # the command runs by then

    stub.hooks["started"] = notice_soon
    code, err = finish(run_agent(stub.url, *watch(cloud, meta.url)))
    assert code == 0, err
    assert meta.noticed_at is not None
    (preempted,) = stub.bodies("preempted")  # once, though the notice stays up
    window = WINDOW[cloud]
    not_before = preempted.pop("not_before")
    assert preempted == {
        "cluster_id": CLUSTER,
        "rank": 0,
        "cloud": cloud,
        "action": EXPECTED_ACTION[cloud],
    }
    if window is None:
        assert not_before is None
    else:  # the cloud's time, to the second
        assert abs(not_before - (meta.noticed_at + window)) <= 1.0
    # Reported at once (polls every 0.2 s), the final sync right after, the command still
    # running: its last line and its exit come seconds later.
    (reported,) = times(stub, "preempted")
    (exited,) = times(stub, "exit")
    assert reported - meta.noticed_mono < 1.5
    early = [t for t in times(stub, "artifact_report", final=True) if reported < t < exited - 1.0]
    assert len(early) == len(agent.KIND_DIRS)  # one final report per kind, before the end
    assert blobs.objects == {"checkpoints/w.pt": b"w"}
    assert sum(1 for t in times(stub, "heartbeat") if reported < t < exited) >= 5
    assert stub.exit()["reason"] == "exited" and stub.exit()["exit_code"] == 0
    assert stub.exit()["last_lines"] == ["ready", "still-running"]
    assert any(f"preemption notice from {cloud}" in line for line in stub.lines())
    assert "final sync of the artifacts before the preemption" in err
    assert meta.refused == 0  # every request carried the cloud's header (and token)
    paths = [path for _, path, _ in meta.requests]
    if cloud == "aws":
        assert meta.requests[0][:2] == ("PUT", "/latest/api/token")
        assert len(meta.tokens) == 1  # the token is kept, not asked for at every poll
    elif cloud == "gcp":
        assert any("wait_for_change=true" in p and "last_etag=" in p for p in paths)
        assert any("maintenance-event" in p for p in paths)
    else:
        assert any(p.startswith("/metadata/instance/compute/name") for p in paths)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
@pytest.mark.parametrize("endpoint", ["down", "garbage"])
def test_a_metadata_endpoint_down_or_talking_garbage_never_hurts_the_run(
    cloud: str, endpoint: str, stubs: list[Stub], metadata: list[Metadata], run_agent: Any
) -> None:
    if endpoint == "garbage":
        meta = Metadata(cloud, garbage=True)
        metadata.append(meta)
        url = meta.url
    else:
        url = f"http://127.0.0.1:{free_port()}"
    stub = scenario(stubs, "echo ready; sleep 1.5; echo done")
    code, err = finish(run_agent(stub.url, *watch(cloud, url)))
    assert code == 0, err
    assert "preempted" not in stub.names()
    assert stub.exit()["reason"] == "exited" and stub.exit()["last_lines"] == ["ready", "done"]
    assert stub.names().count("heartbeat") >= 3
    assert "Traceback" not in err
    failures = re.findall(r"preemption watch \(([a-z-]+)\): (?!the metadata endpoint answers)", err)
    assert failures, err
    assert len(failures) == len(set(failures)), err  # logged once per watch, not at every try
    if endpoint == "garbage":
        assert meta.served >= 3  # it kept asking


def test_the_notices_are_read_as_the_clouds_write_them() -> None:
    body = b'{"action": "stop", "time": "2026-12-06T14:02:00Z"}'
    notice = agent.aws_notice(body)
    assert notice.action == "stop"
    assert notice.not_before == calendar.timegm((2026, 12, 6, 14, 2, 0, 0, 0, 0))
    assert agent.aws_notice(b'{"action": "hibernate"}').not_before is None
    with pytest.raises(agent.MetadataError, match="not JSON"):
        agent.aws_notice(b"<html>")
    stamp = "Sun, 06 Dec 2026 14:02:30 GMT"
    document = {
        "DocumentIncarnation": 2,
        "Events": [
            event("a", "Preempt", ["other"], stamp),
            event("b", "Reboot", ["me"], stamp),
            event("c", "Preempt", ["me"], stamp),
        ],
    }
    raw = json.dumps(document).encode()
    (mine,) = agent.azure_notices(raw, "me")
    assert (mine.key, mine.action) == ("azure:c", "preempt")
    assert mine.not_before == calendar.timegm((2026, 12, 6, 14, 2, 30, 0, 0, 0))
    assert [n.key for n in agent.azure_notices(raw, None)] == ["azure:a", "azure:c"]
    started = event("d", "Preempt", ["me"], "")  # already under way: no time
    only = json.dumps({"Events": [started]}).encode()
    assert agent.azure_notices(only, "me")[0].not_before is None


def test_the_watch_flags(tmp_path: Any) -> None:
    base = ["--service", "http://127.0.0.1:1", "--cluster", CLUSTER, "--token-file", "t"]
    assert agent.parse_args(base).cloud == "none"
    for cloud, url in agent.METADATA_URLS.items():
        assert agent.parse_args([*base, "--cloud", cloud]).metadata_url == url
    assert agent.METADATA_URLS["gcp"] == "http://metadata.google.internal"
    given = agent.parse_args([*base, "--cloud", "aws", "--metadata-url", "http://127.0.0.1:9"])
    assert given.metadata_url == "http://127.0.0.1:9"
    for bad in (
        ["--cloud", "oracle"],
        ["--metadata-url", "http://127.0.0.1:9"],
        ["--cloud", "gcp", "--metadata-url", "metadata"],
        ["--cloud", "gcp", "--metadata-poll", "0"],
    ):
        with pytest.raises(SystemExit) as raised:
            agent.parse_args([*base, *bad])
        assert raised.value.code == 2


def preempt_when_started(stub: Stub, meta: Metadata) -> None:
    def notice_soon(body: dict[str, Any], count: int, answer: Answer) -> None:
        threading.Timer(0.5, meta.preempt).start()

    stub.hooks["started"] = notice_soon


def test_the_sync_does_not_wait_for_a_service_that_cannot_take_the_notice(
    stubs: list[Stub], metadata: list[Metadata], blobs: Blobs, run_agent: Any
) -> None:
    meta = Metadata("aws")
    metadata.append(meta)
    stub = scenario(stubs, COMMAND)
    uploads(stub, blobs)
    preempt_when_started(stub, meta)

    first: list[float] = []

    def busy(body: dict[str, Any], count: int, answer: Answer) -> Answer | None:
        first.append(time.monotonic())
        return (503, {"error": "busy"}) if time.monotonic() - first[0] < 4.0 else None

    stub.hooks["preempted"] = busy
    code, err = finish(run_agent(stub.url, *watch("aws", meta.url)))
    assert code == 0, err
    bodies = stub.bodies("preempted")
    assert len(bodies) >= 3 and all(b == bodies[0] for b in bodies)  # retried as it was
    first_final = min(times(stub, "artifact_report", final=True))
    answered = times(stub, "preempted")[-1]
    assert first_final < answered  # the sync did not wait for it
    assert answered < times(stub, "exit")[0]  # but the exit report did
    assert blobs.objects == {"checkpoints/w.pt": b"w"}


def test_stop_in_the_answer_stops_the_command_and_the_last_sync_sends_what_changed(
    stubs: list[Stub], metadata: list[Metadata], blobs: Blobs, run_agent: Any
) -> None:
    meta = Metadata("gcp")
    metadata.append(meta)
    command = (
        'printf 1 > "$CHECKPOINT_ARTIFACT_PATH/a.pt"; echo ready; '
        "trap 'printf 2 > \"$CHECKPOINT_ARTIFACT_PATH/b.pt\"; exit 143' TERM; "
        "sleep 20 & wait"
    )
    stub = scenario(stubs, command)
    uploads(stub, blobs)
    preempt_when_started(stub, meta)

    def stop_after_sync(body: dict[str, Any], count: int, answer: Answer) -> Answer | None:
        synced = [b for b in stub.bodies("artifact_report") if b["final"]]
        return (200, {"state": "stop"}) if len(synced) == len(agent.KIND_DIRS) else None

    stub.hooks["heartbeat"] = stop_after_sync
    started = time.monotonic()
    code, err = finish(run_agent(stub.url, *watch("gcp", meta.url)))
    assert code == 0, err
    assert time.monotonic() - started < 10
    assert stub.exit()["reason"] == "stopped"
    assert blobs.objects == {"checkpoints/a.pt": b"1", "checkpoints/b.pt": b"2"}
    finals = [b for b in stub.bodies("artifact_report") if b["final"]]
    assert len(finals) == 2 * len(agent.KIND_DIRS)  # the notice's, then the command's end


@pytest.fixture
def watchers() -> Iterator[list[agent.Watcher]]:
    made: list[agent.Watcher] = []
    yield made
    for each in made:
        each.stop()
    for each in made:
        for thread in each.threads:
            thread.join(2.0)
            assert not thread.is_alive()


def test_imds_v1_when_the_token_is_refused_and_a_new_token_after_a_401(
    metadata: list[Metadata], watchers: list[agent.Watcher]
) -> None:
    def in_process_watch(meta: Metadata) -> list[agent.Notice]:
        """A Watcher of ``meta`` in this process (no agent), polling every 0.05 s."""
        notices: list[agent.Notice] = []
        watchers.append(agent.Watcher(meta.cloud, meta.url, 0.05, notices.append))
        watchers[-1].start()
        return notices

    old = Metadata("aws", imds_v1=True)
    metadata.append(old)
    notices = in_process_watch(old)
    time.sleep(0.3)
    old.preempt()
    wait_until(lambda: len(notices) == 1)
    assert all("x-aws-ec2-metadata-token" not in h for m, _, h in old.requests if m == "GET")
    assert [m for m, _, _ in old.requests].count("PUT") == 1  # IMDSv1 from then on

    meta = Metadata("aws")
    metadata.append(meta)
    notices = in_process_watch(meta)
    wait_until(lambda: len(meta.tokens) == 1)
    time.sleep(0.2)
    meta.tokens.clear()  # every token expired: the next GET is a 401
    wait_until(lambda: len(meta.tokens) == 1)  # a new one
    meta.preempt()
    wait_until(lambda: len(notices) == 1)
    time.sleep(0.3)
    assert len(notices) == 1  # the notice stays up: handed over once
    assert notices[0].action == "terminate" and notices[0].not_before is not None
