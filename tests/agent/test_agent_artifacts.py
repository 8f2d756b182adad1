"""The node agent's artifacts and inputs (docs/agent-protocol.md, "Artifacts and inputs"):
a real ``python3 -I agent.py`` process against the scripted service stub of test_agent.py,
plus :class:`Blobs`, a loopback HTTP server standing in for the object store's signed URLs
(``single`` PUT, ``parts`` PUT answering an ETag, ``resumable`` PUT with Content-Range, GET),
which records every request it gets.

Sync intervals and timings are short (fractions of a second) so the file runs in seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from broker.agent import agent
from tests.agent.test_agent import (
    AGENT,
    CLUSTER,
    TOKEN,
    WAIT,
    Answer,
    QuietServer,
    Stub,
    finish,
    python38,
    run_answer,
    wait_until,
)

SECRET = "X-Sig=SECRET-SIGNATURE-0123"  # in every signed URL: must never be printed
MiB = 1024 * 1024
FAST = {"checkpoints": 0.2, "crud": 0.2, "lossy": 0.2, "logs": 600}
NEVER = {"checkpoints": 600, "crud": 600, "lossy": 600, "logs": 600}


class Blobs:
    """Signed URLs on 127.0.0.1: ``PUT /o/<key>`` (single), ``PUT /p/<upload>/<n>`` (a part:
    the answer's ETag is its quoted MD5), ``PUT /r/<key>`` (resumable: Content-Range, 308
    with Range until the last chunk), ``GET /o/<key>``. ``fail_put`` / ``fail_get(path,
    count)`` give a status to answer instead; ``put_delay`` / ``slow_get`` slow it down."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.parts: dict[tuple[str, int], bytes] = {}
        self.sessions: dict[str, bytearray] = {}
        self.requests: list[dict[str, Any]] = []
        self.fail_put: int | None = None
        self.fail_get: Callable[[str, int], int | None] = lambda path, count: None
        self.put_delay = 0.0
        self.slow_get: set[str] = set()
        self.lock = threading.Lock()
        blobs = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                blobs.put(self)

            def do_GET(self) -> None:
                blobs.get(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}?{SECRET}"

    def record(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> tuple[str, int]:
        path = handler.path.split("?")[0]
        entry = {
            "method": handler.command,
            "path": path,
            "query": handler.path.partition("?")[2],
            "headers": {k.lower(): v for k, v in handler.headers.items()},
            "body": body,
        }
        with self.lock:
            self.requests.append(entry)
            count = sum(1 for r in self.requests if r["path"] == path)
        return path, count

    def answer(
        self, handler: BaseHTTPRequestHandler, status: int, data: bytes = b"", **headers: str
    ) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def put(self, handler: BaseHTTPRequestHandler) -> None:
        assert "chunked" not in handler.headers.get("Transfer-Encoding", "")
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        path, _ = self.record(handler, body)
        time.sleep(self.put_delay)
        if self.fail_put is not None:
            error = b"<Error><Code>InternalError</Code><Message>no</Message></Error>"
            return self.answer(handler, self.fail_put, error)
        kind, _, rest = path[1:].partition("/")
        if kind == "o":
            self.objects[rest] = body
            return self.answer(handler, 201, ETag=f'"{hashlib.md5(body).hexdigest()}"')
        if kind == "p":
            upload, _, number = rest.partition("/")
            self.parts[upload, int(number)] = body
            return self.answer(handler, 200, ETag=f'"{hashlib.md5(body).hexdigest()}"')
        span = handler.headers["Content-Range"]
        if span.startswith("bytes */"):
            self.objects[rest] = b""
            return self.answer(handler, 200)
        first, last, total = map(int, re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", span).groups())
        got = self.sessions.setdefault(rest, bytearray())
        assert first == len(got) and last - first + 1 == len(body), (span, len(got))
        got += body
        if last + 1 == total:
            self.objects[rest] = bytes(got)
            return self.answer(handler, 200)
        return self.answer(handler, 308, Range=f"bytes=0-{last}")

    def get(self, handler: BaseHTTPRequestHandler) -> None:
        path, count = self.record(handler, None)
        status = self.fail_get(path, count)
        if status is not None:
            return self.answer(handler, status)
        data = self.objects[path.removeprefix("/o/")]
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if path in self.slow_get:  # half now, the rest 1.2 s later
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            time.sleep(1.2)
            handler.wfile.write(data[len(data) // 2 :])
        else:
            handler.wfile.write(data)

    def puts(self, prefix: str = "") -> list[dict[str, Any]]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r["method"] == "PUT" and r["path"][3:].startswith(prefix)
            ]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signed(url: str, method: str = "PUT", **headers: str) -> dict[str, Any]:
    return {"method": method, "url": url, "headers": headers, "expires_at": time.time() + 3600}


def uploads(stub: Stub, blobs: Blobs, mode: str = "single", part_size: int = MiB) -> None:
    """The stub's artifact_upload answers a plan on ``blobs`` (``parts`` only for files over
    one part); artifact_complete joins the parts after checking their ETags."""
    completed: list[dict[str, Any]] = []

    def upload(body: dict[str, Any], count: int, answer: Answer) -> Answer:
        key, size = f"{body['kind']}/{body['path']}", body["size"]
        plan: dict[str, Any] = {"key": key, "size": size, "part_size": part_size}
        if mode == "parts" and size > part_size:
            upload_id = f"up{count}"
            parts = -(-size // part_size)
            requests = [signed(blobs.url(f"/p/{upload_id}/{n}")) for n in range(parts)]
            plan.update(kind="parts", requests=requests, upload_id=upload_id)
        elif mode == "resumable":
            plan.update(kind="resumable", requests=[signed(blobs.url(f"/r/{key}"))])
        else:
            request = signed(blobs.url(f"/o/{key}"), **{"x-ms-blob-type": "BlockBlob"})
            plan.update(kind="single", requests=[request])
        return 200, {"state": "run", "plan": plan}

    def complete(body: dict[str, Any], count: int, answer: Answer) -> Answer:
        plan = body["plan"]
        parts = [blobs.parts[plan["upload_id"], n] for n in range(len(plan["requests"]))]
        assert body["etags"] == [f'"{hashlib.md5(p).hexdigest()}"' for p in parts]
        blobs.objects[plan["key"]] = b"".join(parts)
        completed.append(body)
        return 200, {"state": "run"}

    stub.hooks["artifact_upload"] = upload
    stub.hooks["artifact_complete"] = complete


@pytest.fixture
def blobs() -> Iterator[Blobs]:
    made = Blobs()
    yield made
    made.stop()


@pytest.fixture
def stubs() -> Iterator[list[Stub]]:
    made: list[Stub] = []
    yield made
    for stub in made:
        stub.stop()


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    started: list[subprocess.Popen[str]] = []

    def start(
        url: str, env: dict[str, str] | None = None, python: str = sys.executable
    ) -> subprocess.Popen[str]:
        argv = [python, "-I", AGENT, "--service", url, "--cluster", CLUSTER]
        argv += ["--token-file", str(token_file), "--address", "127.0.0.1"]
        argv += ["--root", str(tmp_path / "root")]
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def scenario(stubs: list[Stub], command: str, **overrides: Any) -> Stub:
    answer = run_answer(command, **{"sync": FAST, "final_sync_timeout": 20, **overrides})
    stub = Stub([WAIT, answer]).start()
    stubs.append(stub)
    return stub


def done(proc: subprocess.Popen[str], code: int = 0) -> str:
    """The agent ended with ``code``; its stderr, which names no signed URL."""
    returned, err = finish(proc)
    assert returned == code, err
    assert SECRET not in err and "SECRET" not in err
    return err


def reports(stub: Stub, final: bool | None = None) -> list[dict[str, Any]]:
    bodies = stub.bodies("artifact_report")
    return [b for b in bodies if final is None or b["final"] is final]


def between(stub: Stub, name: str, first: str, last: str) -> int:
    """How many ``name`` calls came after the first ``first`` call and before ``last``."""
    times = [(t, n) for t, n, _, _ in stub.calls]
    start = next(t for t, n in times if n == first)
    end = next(t for t, n in times if n == last)
    return sum(1 for t, n in times if n == name and start < t < end)


# -- sync ---------------------------------------------------------------------------------

WRITE_EACH_KIND = (
    'printf one > "$CHECKPOINT_ARTIFACT_PATH/model.pt"; '
    'mkdir -p "$CRUD_ARTIFACT_PATH/sub/dir"; printf nested > "$CRUD_ARTIFACT_PATH/sub/dir/n.txt"; '
    'printf lossy-1 > "$LOSSY_ARTIFACT_PATH/step.txt"; '
    'ln -s /etc/hostname "$CRUD_ARTIFACT_PATH/link"; mkdir "$LOSSY_ARTIFACT_PATH/empty"; '
    "echo ready; sleep 1.0; "
    'printf lossy-22 > "$LOSSY_ARTIFACT_PATH/step.txt"; '
    'printf "epoch 1\\n" > "$LOG_ARTIFACT_PATH/train.log"; exit 3'
)


def test_each_kind_reaches_the_store_and_the_final_sync_comes_before_exit(
    stubs: list[Stub], blobs: Blobs, run_agent: Any
) -> None:
    stub = scenario(stubs, WRITE_EACH_KIND)
    uploads(stub, blobs)
    err = done(run_agent(stub.url))
    assert blobs.objects == {
        "checkpoints/model.pt": b"one",
        "crud/sub/dir/n.txt": b"nested",
        "lossy/step.txt": b"lossy-22",
        "logs/train.log": b"epoch 1\n",
    }  # not the symlink, not the empty directory
    # Sent once while unchanged (every 0.2 s), again once changed.
    assert len(blobs.puts("checkpoints/model.pt")) == 1
    assert len(blobs.puts("lossy/step.txt")) == 2
    for request in blobs.puts():
        assert "authorization" not in request["headers"]  # the node token stays home
        assert request["headers"]["x-ms-blob-type"] == "BlockBlob"  # the plan's headers
        assert request["headers"]["content-length"] == str(len(request["body"]))
    uploaded = stub.bodies("artifact_upload")
    assert {(b["kind"], b["path"], b["size"]) for b in uploaded} == {
        ("checkpoints", "model.pt", 3),
        ("crud", "sub/dir/n.txt", 6),
        ("lossy", "step.txt", 7),
        ("lossy", "step.txt", 8),
        ("logs", "train.log", 8),
    }
    # The final sync: one report per kind, final, after the command ended, before exit.
    names = stub.names()
    final = [
        i for i, (_, n, b, _) in enumerate(stub.calls) if n == "artifact_report" and b["final"]
    ]
    assert [stub.calls[i][2]["kind"] for i in final] == ["checkpoints", "crud", "lossy", "logs"]
    assert names[-1] == "exit" and final[-1] < len(names) - 1
    assert all(i > names.index("started") for i in final)
    logs = next(b for b in reports(stub, final=True) if b["kind"] == "logs")
    assert (logs["files"], logs["bytes"], logs["failed"], logs["errors"]) == (1, 8, 0, [])
    assert all(b["files"] > 0 for b in reports(stub, final=False))  # only syncs with work
    assert stub.exit()["exit_code"] == 3 and stub.exit()["last_lines"] == ["ready"]
    assert "[burst-agent] final sync of logs: 1 file(s), 8 B sent" in stub.lines()
    assert "final sync of the artifacts (at most 20s)" in err


def test_an_unchanged_file_is_not_sent_again_by_a_restarted_agent(
    stubs: list[Stub], blobs: Blobs, run_agent: Any, tmp_path: Path
) -> None:
    first = scenario(
        stubs, 'printf a > "$CRUD_ARTIFACT_PATH/a.txt"; printf b > "$CRUD_ARTIFACT_PATH/b.txt"'
    )
    uploads(first, blobs)
    done(run_agent(first.url))
    assert sorted(b["path"] for b in first.bodies("artifact_upload")) == ["a.txt", "b.txt"]
    manifest = tmp_path / "root/var/lib/burst-broker" / agent.MANIFEST
    assert "a.txt" in manifest.read_text()

    again = scenario(
        stubs, 'printf bb > "$CRUD_ARTIFACT_PATH/b.txt"; printf c > "$CRUD_ARTIFACT_PATH/c.txt"'
    )
    uploads(again, blobs)
    done(run_agent(again.url))
    assert sorted(b["path"] for b in again.bodies("artifact_upload")) == ["b.txt", "c.txt"]
    assert blobs.objects["crud/b.txt"] == b"bb" and len(blobs.puts("crud/a.txt")) == 1


def big_file(command_path: str, size: int) -> str:
    """A command writing ``size`` random bytes at ``command_path``, copied to <root>/mnt."""
    copy = '"$OUTPUT_PATH/../copy.bin"'
    return f"head -c {size} /dev/urandom > {command_path}; cp {command_path} {copy}"


@pytest.mark.parametrize("python", ["current", "3.8"])
def test_a_large_file_goes_in_parts_with_their_etags(
    stubs: list[Stub], blobs: Blobs, run_agent: Any, tmp_path: Path, python: str
) -> None:
    exe = sys.executable if python == "current" else python38()
    if exe is None:
        pytest.skip("no Python 3.8 on this machine")
    size = 3 * MiB + MiB // 2
    stub = scenario(stubs, big_file('"$OUTPUT_PATH/big.bin"', size), sync=NEVER)
    uploads(stub, blobs, "parts", part_size=MiB)
    done(run_agent(stub.url, python=exe))
    data = (tmp_path / "root/mnt/copy.bin").read_bytes()
    assert len(data) == size and blobs.objects["checkpoints/big.bin"] == data
    assert [len(blobs.parts["up1", n]) for n in range(4)] == [MiB, MiB, MiB, MiB // 2]
    (complete,) = stub.bodies("artifact_complete")
    assert (complete["kind"], complete["path"]) == ("checkpoints", "big.bin")
    assert complete["plan"]["upload_id"] == "up1"  # the plan as received
    final = next(b for b in reports(stub, final=True) if b["kind"] == "checkpoints")
    assert (final["files"], final["bytes"], final["failed"]) == (1, size, 0)


def test_a_resumable_plan_sends_consecutive_chunks(
    stubs: list[Stub], blobs: Blobs, run_agent: Any, tmp_path: Path
) -> None:
    size = 700 * 1024
    command = big_file('"$CRUD_ARTIFACT_PATH/r.bin"', size) + '; : > "$CRUD_ARTIFACT_PATH/empty"'
    stub = scenario(stubs, command, sync=NEVER)
    uploads(stub, blobs, "resumable", part_size=256 * 1024)
    done(run_agent(stub.url))
    assert blobs.objects["crud/r.bin"] == (tmp_path / "root/mnt/copy.bin").read_bytes()
    assert blobs.objects["crud/empty"] == b""
    spans = [r["headers"]["content-range"] for r in blobs.puts("crud/r.bin")]
    assert spans == [
        f"bytes 0-262143/{size}",
        f"bytes 262144-524287/{size}",
        f"bytes 524288-{size - 1}/{size}",
    ]
    assert [r["headers"]["content-range"] for r in blobs.puts("crud/empty")] == ["bytes */0"]


def test_a_failing_store_in_the_final_sync_is_reported(
    stubs: list[Stub], blobs: Blobs, run_agent: Any
) -> None:
    stub = scenario(stubs, 'printf x > "$CHECKPOINT_ARTIFACT_PATH/ckpt.pt"', sync=NEVER)
    uploads(stub, blobs)
    blobs.fail_put = 500
    err = done(run_agent(stub.url))
    assert len(blobs.puts()) == agent.TRANSFER_TRIES  # a 5xx is tried again, then given up
    final = {b["kind"]: b for b in reports(stub, final=True)}
    assert set(final) == {"checkpoints", "crud", "lossy", "logs"}
    assert (final["checkpoints"]["files"], final["checkpoints"]["failed"]) == (0, 1)
    (error,) = final["checkpoints"]["errors"]
    assert error == "ckpt.pt: PUT: HTTP 500 Internal Server Error (InternalError)"
    assert final["crud"]["failed"] == 0
    assert stub.names()[-1] == "exit"
    assert any(
        "final sync of checkpoints: 0 file(s)" in line and "1 NOT sent" in line
        for line in stub.lines()
    )
    assert "checkpoints/ckpt.pt not sent" in err


def test_the_final_sync_is_bounded_and_heartbeats_go_on(
    stubs: list[Stub], blobs: Blobs, run_agent: Any
) -> None:
    command = 'printf 1 > "$CRUD_ARTIFACT_PATH/slow"; printf 2 > "$CRUD_ARTIFACT_PATH/never"'
    stub = scenario(stubs, command, sync=NEVER, final_sync_timeout=1.5)
    uploads(stub, blobs)
    blobs.put_delay = 5.0  # longer than the final sync may take
    started = time.monotonic()
    done(run_agent(stub.url))
    assert time.monotonic() - started < 8
    crud = next(b for b in reports(stub, final=True) if b["kind"] == "crud")
    assert (crud["files"], crud["failed"]) == (0, 2)
    assert crud["errors"][-1] == "the final sync ran out of time (1.5s): 2 file(s) not sent"
    # heartbeat_every is 0.2 s: they kept coming while the final sync waited on the store.
    assert between(stub, "heartbeat", "artifact_upload", "exit") >= 4
    assert stub.names()[-1] == "exit"


def test_the_final_sync_sends_files_side_by_side(
    stubs: list[Stub], blobs: Blobs, run_agent: Any
) -> None:
    """Sixteen files whose PUTs take 0.4 s each: one by one they need 6.4 s, more than the
    final sync's 4 s (a preemption notice's budget is 30 s: a directory of small files is
    bound by the round trips); SYNC_STREAMS at a time they all arrive."""
    command = 'for i in $(seq -w 1 16); do printf "$i" > "$CHECKPOINT_ARTIFACT_PATH/s$i"; done'
    stub = scenario(stubs, command, sync=NEVER, final_sync_timeout=4)
    uploads(stub, blobs)
    blobs.put_delay = 0.4
    done(run_agent(stub.url))
    sent = {f"checkpoints/s{i:02}": f"{i:02}".encode() for i in range(1, 17)}
    assert blobs.objects == sent
    final = next(b for b in reports(stub, final=True) if b["kind"] == "checkpoints")
    assert (final["files"], final["bytes"], final["failed"]) == (16, 32, 0)
    assert -(-16 // agent.SYNC_STREAMS) * 0.4 < 4 < 16 * 0.4  # what this test stands on


def test_a_signalled_agent_syncs_before_it_ends(
    stubs: list[Stub], blobs: Blobs, run_agent: Any
) -> None:
    command = 'printf last > "$CHECKPOINT_ARTIFACT_PATH/last.pt"; echo ready; sleep 30'
    stub = scenario(stubs, command, sync=NEVER)
    uploads(stub, blobs)
    proc = run_agent(stub.url)
    wait_until(lambda: "ready" in stub.lines())
    proc.send_signal(signal.SIGTERM)
    done(proc, 128 + signal.SIGTERM)
    assert blobs.objects == {"checkpoints/last.pt": b"last"}
    assert [b["kind"] for b in reports(stub, final=True)] == list(agent.KIND_DIRS)
    assert "exit" not in stub.names()


def test_no_sync_without_an_artifact_store(stubs: list[Stub], blobs: Blobs, run_agent: Any) -> None:
    stub = scenario(stubs, 'printf x > "$CRUD_ARTIFACT_PATH/x"', sync={})
    done(run_agent(stub.url))
    assert not {"artifact_upload", "artifact_report"} & set(stub.names())


# -- inputs -------------------------------------------------------------------------------

ARTIFACT_ID = "bb-0123456789ab.checkpoints"
INPUTS = {
    "/data/ds1/a.txt": b"hello",
    "/data/ds1/deep/b.bin": bytes(range(256)) * 1200,
    f"/data/{ARTIFACT_ID}/rank-0/w.pt": b"weights",
    "/mnt/checkpoints/step-1.pt": b"restored",
}


def serve_inputs(stub: Stub, blobs: Blobs, files: dict[str, bytes], **answer: Any) -> None:
    listing = []
    for dest, data in files.items():
        blobs.objects[dest.lstrip("/")] = data
        url = blobs.url(f"/o/{dest.lstrip('/')}")
        listing.append({"dest": dest, "size": len(data), "request": signed(url, "GET")})
    document = {"state": "run", "files": listing, "missing": []}
    document["total_bytes"] = sum(len(d) for d in files.values())
    document.update(answer)
    stub.hooks["inputs"] = lambda body, count, given: (200, document)


def test_inputs_arrive_before_the_command_starts(
    stubs: list[Stub], blobs: Blobs, run_agent: Any
) -> None:
    command = (
        "cat data/ds1/a.txt; echo; wc -c < data/ds1/deep/b.bin; "
        f"cat data/{ARTIFACT_ID}/rank-0/w.pt; echo; "
        'cat "$OUTPUT_PATH/step-1.pt"; echo; ls -A data/ds1'
    )
    stub = scenario(stubs, command, inputs=True, sync=NEVER)
    uploads(stub, blobs)
    serve_inputs(stub, blobs, INPUTS)
    blobs.fail_get = lambda path, count: 503 if path.endswith("a.txt") and count == 1 else None
    blobs.slow_get.add("/o/data/ds1/deep/b.bin")
    err = done(run_agent(stub.url))
    lines = stub.lines()
    agent_lines = [line for line in lines if line.startswith(agent.AGENT_LINE)]
    assert agent_lines[0] == "[burst-agent] inputs: 4 file(s), 307.2 KB to download"
    assert agent_lines[-1].startswith("[burst-agent] inputs: 4/4 files, 307.2 KB in ")
    assert [line for line in lines if line not in agent_lines] == [
        "hello",
        "307200",
        "weights",
        "restored",
        "a.txt",
        "deep",  # no temporary files left
    ]
    names = stub.names()
    assert names.index("inputs") < names.index("started")
    assert "input /data/ds1/a.txt: GET: HTTP 503" in err  # tried again
    # Heartbeats went on during the slow download (1.2 s, heartbeat_every 0.2 s).
    assert between(stub, "heartbeat", "inputs", "started") >= 4
    # The restored checkpoint is what the store holds: the final sync does not send it back.
    assert "artifact_upload" not in names
    assert stub.exit()["reason"] == "exited"


def test_not_enough_disk_fails_the_inputs_before_any_download(
    stubs: list[Stub], blobs: Blobs, run_agent: Any
) -> None:
    stub = scenario(stubs, "echo never", inputs=True)
    serve_inputs(stub, blobs, {"/data/ds1/a.txt": b"x"}, total_bytes=10**18)
    done(run_agent(stub.url))
    report = stub.exit()
    assert report["reason"] == "inputs_failed" and report["exit_code"] is None
    assert re.fullmatch(
        r"\[burst-agent\] inputs failed: they need 1000.0 PB \(10{18} bytes\) of disk, "
        r"\S+/root has [\d.]+ [KMGT]?B \(\d+ bytes\) free",
        report["last_lines"][-1],
    ), report["last_lines"]
    assert blobs.requests == [] and "started" not in stub.names()
    assert "artifact_report" not in stub.names()  # nothing ran: no final sync


def test_a_missing_input_fails_at_once_naming_it(
    stubs: list[Stub], blobs: Blobs, run_agent: Any
) -> None:
    stub = scenario(stubs, "echo never", inputs=True)
    serve_inputs(stub, blobs, {}, missing=["ds-gone", ARTIFACT_ID])
    done(run_agent(stub.url))
    report = stub.exit()
    assert report["reason"] == "inputs_failed"
    assert report["last_lines"][-1] == (
        f"[burst-agent] inputs failed: not in the artifact store: ds-gone, {ARTIFACT_ID}"
    )
    assert stub.lines()[-1] == report["last_lines"][-1]  # in the log too


def test_a_download_that_keeps_failing_fails_the_inputs(
    stubs: list[Stub], blobs: Blobs, run_agent: Any, tmp_path: Path
) -> None:
    stub = scenario(stubs, "echo never", inputs=True)
    serve_inputs(stub, blobs, {"/data/ds1/a.txt": b"hello"})
    blobs.fail_get = lambda path, count: 404
    done(run_agent(stub.url))
    assert stub.exit()["last_lines"][-1] == (
        "[burst-agent] inputs failed: /data/ds1/a.txt: not downloaded after 3 tries: "
        "GET: HTTP 404 Not Found"
    )
    assert len(blobs.requests) == 3
    assert len(stub.bodies("inputs")) == 3  # a refused URL is asked for again
    assert os.listdir(tmp_path / "root/data/ds1") == []  # no partial file left


def test_with_an_image_inputs_come_after_the_pull_and_are_mounted(
    stubs: list[Stub], blobs: Blobs, run_agent: Any, tmp_path: Path
) -> None:
    pulled = tmp_path / "pulled"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = pull ]; then touch {pulled}; exit 0; fi\n'
        'shift; for arg in "$@"; do echo "$arg"; done\n'
    )
    docker.chmod(0o755)
    stub = scenario(stubs, "train", image="me/train:1", inputs=True, datasets=["ds1"])
    serve_inputs(stub, blobs, {f"/data/{ARTIFACT_ID}/rank-0/w.pt": b"w"})
    seen: list[bool] = []
    serve = stub.hooks["inputs"]
    stub.hooks["inputs"] = lambda body, count, given: (
        seen.append(pulled.exists()) or serve(body, count, given)
    )
    done(run_agent(stub.url, env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")))
    assert seen == [True]
    root = tmp_path / "root"
    lines = stub.lines()
    assert f"{root}/data/ds1:/data/ds1" in lines
    assert f"{root}/data/{ARTIFACT_ID}:/data/{ARTIFACT_ID}" in lines


# -- units --------------------------------------------------------------------------------


def test_human_bytes() -> None:
    assert [agent.human_bytes(n) for n in (0, 999, 1000, 1_234_567, 4 * 10**9, 10**18)] == [
        "0 B",
        "999 B",
        "1.0 KB",
        "1.2 MB",
        "4.0 GB",
        "1000.0 PB",
    ]


def test_the_scan_skips_symlinks_and_special_files(tmp_path: Path) -> None:
    (tmp_path / "d/e").mkdir(parents=True)
    (tmp_path / "d/e/f.txt").write_text("abc")
    (tmp_path / "top.txt").write_text("")
    (tmp_path / "link.txt").symlink_to(tmp_path / "top.txt")
    (tmp_path / "linkdir").symlink_to(tmp_path / "d")
    os.mkfifo(tmp_path / "fifo")
    found, problems = agent.scan(str(tmp_path))
    assert sorted(found) == ["d/e/f.txt", "top.txt"] and problems == []
    assert found["d/e/f.txt"][0] == 3
    assert agent.scan(str(tmp_path / "absent")) == ({}, [])


def test_a_manifest_of_another_cluster_is_ignored(tmp_path: Path) -> None:
    path = str(tmp_path / "m.json")
    mine = agent.Manifest(path, {"cluster": "c1", "rank": 0})
    mine.record("crud", "a.txt", 1, 2)
    mine.save(force=True)
    assert agent.Manifest(path, {"cluster": "c1", "rank": 0}).files("crud") == {"a.txt": [1, 2]}
    assert agent.Manifest(path, {"cluster": "c2", "rank": 0}).files("crud") == {}
    assert os.listdir(tmp_path) == ["m.json"]  # no temporary file left


def test_upload_plans_the_agent_cannot_follow_are_refused() -> None:
    request = {"method": "PUT", "url": "http://127.0.0.1/x"}
    good = {"kind": "parts", "size": 10, "part_size": 4, "requests": [request] * 3}
    assert len(agent._plan_requests(good, 10)) == 3
    for plan, size in (
        (None, 10),
        ({**good, "kind": "ftp"}, 10),
        ({**good, "requests": [request] * 2}, 10),
        ({**good, "part_size": 0}, 10),
        (good, 11),
    ):
        with pytest.raises(agent.TransferError):
            agent._plan_requests(plan, size)


def test_progress_lines_come_at_most_every_five_seconds() -> None:
    said: list[str] = []
    progress = agent.Progress(said.append, 2, 2000)
    for _ in range(100):
        progress.add(10)
    assert said == ["inputs: 2 file(s), 2.0 KB to download"]
    progress.last -= agent.PROGRESS_EVERY
    progress.done_files = 1
    progress.add(1000)
    assert said[-1] == "inputs: 1/2 files, 2.0 KB of 2.0 KB"


def test_proxies_are_honoured_unless_bypassed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
    monkeypatch.setenv("no_proxy", "127.0.0.1,.local.example")
    assert agent._proxy_for("https", "bucket.s3.amazonaws.com") == ("proxy.internal", 3128)
    assert agent._proxy_for("https", "store.local.example") is None
    assert agent._proxy_for("http", "bucket.s3.amazonaws.com") is None
