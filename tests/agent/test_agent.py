"""The node agent (broker/agent/agent.py) as nodes run it: a real ``python3 -I agent.py``
process against a scripted stub of the service's agent endpoints on 127.0.0.1
(docs/agent-protocol.md), plus unit tests of its pure parts.

The stub records every call; each test scripts the answers (by default: register says
"wait" twice then "run"). Timings in the "run" answer are short so that the whole file runs
in seconds. ``--spool-lines`` is the agent's tuning flag, used here to make it drop lines.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from broker.agent import agent
from broker.env import ARTIFACT_PATHS

AGENT = str(Path(agent.__file__).resolve())
TOKEN = "bbn_test-node-token-0123456789"
CLUSTER = "c-agenttest"
WAIT = {"state": "wait", "retry_after": 0.1}
ENV = {
    "NNODES": "2",
    "N_PROC": "8",
    "NODE_RANK": "0",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "IP_TO_RANK_MAPPING": '{"127.0.0.1":0,"127.0.0.2":1}',
    "STRONG_EXPERIMENT_ID": CLUSTER,
    "STRONG_EXPERIMENT_NAME": "agent-test",
    "STRONG_COMPUTE_MODE": "burst",
    "STRONG_CYCLE_COUNT": "1",
    **ARTIFACT_PATHS,
}

Answer = tuple[int, dict[str, Any]]
Hook = Callable[[dict[str, Any], int, Answer], Answer | None]


def run_answer(command: str, **overrides: Any) -> dict[str, Any]:
    return {
        "state": "run",
        "rank": 0,
        "env": ENV,
        "command": command,
        "image": None,
        "retry_after": 0.05,
        "heartbeat_every": 0.2,
        "stop_grace": 1.0,
        "log_batch_lines": 100,
        "log_batch_seconds": 0.05,
        **overrides,
    }


class QuietServer(ThreadingHTTPServer):
    """A stand-in whose handler threads may outlive their test (a call cut short when the
    agent is killed): such a connection error is expected, never a traceback on stderr in
    whatever test runs next."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class Stub:
    """The service's /v1/agent/* endpoints, scripted: ``register`` answers are taken in turn
    (the last one repeats), ``hooks[name]`` may replace any answer; ``logs`` batches are
    stored by seq, a seq seen before is ignored (and counted in ``duplicates``)."""

    def __init__(self, register: list[dict[str, Any]]) -> None:
        self.register = list(register)
        self.hooks: dict[str, Hook] = {}
        self.calls: list[tuple[float, str, dict[str, Any], int]] = []  # (time, name, body, size)
        self.auth: set[str] = set()
        self.stored: dict[int, list[str]] = {}
        self.duplicates = 0
        self.stops: list[float] = []  # when a hook answered "stop"
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self, port: int = 0) -> Stub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, answer = stub.handle(self.path, self.headers.get("Authorization", ""), raw)
                data = json.dumps(answer).encode()
                self.send_response(status)
                if "location" in answer:  # a redirect
                    self.send_header("Location", answer["location"])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, path: str, auth: str, raw: bytes) -> Answer:
        name = path.removeprefix("/v1/agent/")
        body = json.loads(raw)
        with self.lock:
            self.auth.add(auth)
            self.calls.append((time.monotonic(), name, body, len(raw)))
            count = sum(1 for c in self.calls if c[1] == name)
            answer = self.default(name, body)
        if auth != f"Bearer {TOKEN}":
            return 401, {"error": "unauthorized"}
        hook = self.hooks.get(name)
        replaced = hook(body, count, answer) if hook else None
        return replaced or answer

    def default(self, name: str, body: dict[str, Any]) -> Answer:
        if name == "register":
            return 200, self.register.pop(0) if len(self.register) > 1 else self.register[0]
        if name == "logs":
            if body["seq"] in self.stored:
                self.duplicates += 1
            else:
                self.stored[body["seq"]] = body["lines"]
        if name == "exit":
            return 200, {"state": "done"}
        return 200, {"state": "run"}

    def names(self) -> list[str]:
        with self.lock:
            return [c[1] for c in self.calls]

    def bodies(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c[2] for c in self.calls if c[1] == name]

    def lines(self) -> list[str]:
        with self.lock:
            return [line for seq in sorted(self.stored) for line in self.stored[seq]]

    def exit(self) -> dict[str, Any]:
        (body,) = self.bodies("exit")
        return body

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def stubs() -> Iterator[list[Stub]]:
    made: list[Stub] = []
    yield made
    for stub in made:
        stub.stop()


@pytest.fixture
def agents() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def run_agent(
    tmp_path: Path, agents: list[subprocess.Popen[str]]
) -> Callable[..., subprocess.Popen[str]]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    def start(
        url: str, *extra: str, env: dict[str, str] | None = None, python: str = sys.executable
    ) -> subprocess.Popen[str]:
        argv = [python, "-I", AGENT, "--service", url, "--cluster", CLUSTER]
        argv += ["--token-file", str(token_file), "--address", "127.0.0.1"]
        argv += ["--root", str(tmp_path / "root"), *extra]
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        agents.append(proc)
        return proc

    return start


def finish(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    """The agent's exit code and stderr (it prints nothing on stdout)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the agent did not end:\n{err}")
    assert out == ""
    assert TOKEN not in err
    return proc.returncode, err


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def scenario(stubs: list[Stub], command: str, **overrides: Any) -> Stub:
    stub = Stub([WAIT, WAIT, run_answer(command, **overrides)]).start()
    stubs.append(stub)
    return stub


# -- the protocol end to end ------------------------------------------------------------


def test_a_two_line_command_completes(stubs: list[Stub], run_agent: Any, tmp_path: Path) -> None:
    stub = scenario(stubs, "echo hello; echo world >&2")
    code, err = finish(run_agent(stub.url))
    assert code == 0, err
    names = stub.names()
    assert names[:3] == ["register"] * 3
    calls = [n for n in names if n != "heartbeat"]
    # the two lines come from two pipes, so they may be shipped in one batch or in two
    assert calls[:4] == ["register"] * 3 + ["started"] and calls[-1] == "exit"
    assert set(calls[4:-1]) == {"logs"} and 1 <= len(calls[4:-1]) <= 2
    register = stub.bodies("register")[0]
    assert register["cluster_id"] == CLUSTER and register["address"] == "127.0.0.1"
    assert register["agent_version"] == agent.AGENT_VERSION and register["python"]
    (started,) = stub.bodies("started")
    assert started["rank"] == 0 and started["pid"] > 0 and started["cluster_id"] == CLUSTER
    batches = stub.bodies("logs")
    assert [b["seq"] for b in batches] == [0, 1][: len(batches)]  # seq numbers lines
    assert [line for b in batches for line in b["lines"]] == ["hello", "world"]
    assert all(b["cluster_id"] == CLUSTER and b["rank"] == 0 and b["dropped"] == 0 for b in batches)
    assert stub.exit() == {
        "cluster_id": CLUSTER,
        "rank": 0,
        "exit_code": 0,
        "signal": None,
        "reason": "exited",
        "last_lines": ["hello", "world"],
    }
    assert stub.auth == {f"Bearer {TOKEN}"}
    times = [c[0] for c in stub.calls if c[1] == "register"]
    assert times[1] - times[0] >= 0.09 and times[2] - times[1] >= 0.09  # retry_after 0.1


def test_the_environment_reaches_the_command(
    stubs: list[Stub], run_agent: Any, tmp_path: Path
) -> None:
    stub = scenario(
        stubs,
        'echo "$NODE_RANK $NNODES $MASTER_ADDR $IP_TO_RANK_MAPPING $FROM_NODE"; '
        'echo "$OUTPUT_PATH"; echo "$LOSSY_ARTIFACT_PATH"; test -d "$OUTPUT_PATH" && pwd',
    )
    code, err = finish(run_agent(stub.url, env=dict(os.environ, FROM_NODE="node-var")))
    assert code == 0, err
    root = tmp_path / "root"
    assert stub.lines() == [
        '0 2 127.0.0.1 {"127.0.0.1":0,"127.0.0.2":1} node-var',
        f"{root}/mnt/checkpoints",
        f"{root}/mnt/lossy",
        str(root),
    ]
    for path in set(ARTIFACT_PATHS.values()):
        assert (root / path.lstrip("/")).is_dir()


def test_a_failing_command_reports_its_code_and_last_lines(
    stubs: list[Stub], run_agent: Any
) -> None:
    stub = scenario(stubs, "for i in $(seq 1 30); do echo line $i; done; echo oops >&2; exit 3")
    code, err = finish(run_agent(stub.url))
    assert code == 0, err
    report = stub.exit()
    assert (report["exit_code"], report["signal"], report["reason"]) == (3, None, "exited")
    assert report["last_lines"] == [f"line {i}" for i in range(12, 31)] + ["oops"]
    assert stub.lines() == [f"line {i}" for i in range(1, 31)] + ["oops"]


def stop_once_ready(stub: Stub) -> Hook:
    def hook(body: dict[str, Any], count: int, answer: Answer) -> Answer | None:
        if "ready" not in stub.lines():
            return None
        stub.stops.append(time.monotonic())
        return 200, {"state": "stop"}

    return hook


LOOP = "echo ready; while true; do sleep 0.1; done"


def test_stop_in_a_heartbeat_answer_terms_the_command(stubs: list[Stub], run_agent: Any) -> None:
    stub = scenario(stubs, f"trap 'echo got TERM; exit 0' TERM; {LOOP}")
    stub.hooks["heartbeat"] = stop_once_ready(stub)
    code, err = finish(run_agent(stub.url))
    assert code == 0, err
    report = stub.exit()
    assert (report["exit_code"], report["signal"], report["reason"]) == (0, None, "stopped")
    lines = stub.lines()  # bash may say "Terminated" about its sleep in between
    assert lines[0] == "ready" and lines[-1] == "got TERM"


def test_a_command_ignoring_sigterm_is_killed_after_stop_grace(
    stubs: list[Stub], run_agent: Any
) -> None:
    stub = scenario(stubs, f"trap '' TERM; {LOOP}", stop_grace=1.0)
    stub.hooks["heartbeat"] = stop_once_ready(stub)
    code, err = finish(run_agent(stub.url))
    assert code == 0, err
    report = stub.exit()
    assert (report["exit_code"], report["signal"], report["reason"]) == (None, 9, "stopped")
    ended = next(c[0] for c in stub.calls if c[1] == "exit")
    assert ended - stub.stops[0] >= 0.9
    assert "SIGKILL after 1s" in err


def test_a_refused_token_stops_the_command_and_ends_with_3(
    stubs: list[Stub], run_agent: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    stub = scenario(stubs, f"echo $$ > {pidfile}; {LOOP}")
    stub.hooks["heartbeat"] = lambda body, count, answer: (
        (401, {"error": "unauthorized"}) if "ready" in stub.lines() else None
    )
    code, err = finish(run_agent(stub.url))
    assert code == 3, err
    assert "refused the node token" in err
    assert "exit" not in stub.names()
    assert not alive(int(pidfile.read_text()))


def test_the_agent_retries_until_the_service_comes_up(stubs: list[Stub], run_agent: Any) -> None:
    with socket.socket() as sock:  # a free port, nothing listening yet
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_agent(f"http://127.0.0.1:{port}")
    time.sleep(1.6)  # refused at 0, ~0.5, ~1.5 s
    assert proc.poll() is None
    stub = Stub([run_answer("echo up")]).start(port)
    stubs.append(stub)
    code, err = finish(proc)
    assert code == 0, err
    assert "register: cannot reach" in err and "retrying" in err
    assert stub.lines() == ["up"] and stub.exit()["reason"] == "exited"


def test_a_service_restart_mid_run_loses_nothing(stubs: list[Stub], run_agent: Any) -> None:
    stub = scenario(stubs, "echo before; sleep 1.5; echo after; exit 5")
    proc = run_agent(stub.url)
    wait_until(lambda: stub.lines() == ["before"])
    port = stub.port
    stub.stop()  # down while the command runs (and prints "after")...
    time.sleep(2.0)
    stub.start(port)  # ...and back, with what it stored
    code, err = finish(proc)
    assert code == 0, err
    assert "cannot reach" in err
    assert stub.lines() == ["before", "after"] and stub.duplicates == 0
    assert [b["seq"] for b in stub.bodies("logs")] == [0, 1]
    assert (stub.exit()["exit_code"], stub.exit()["reason"]) == (5, "exited")


def test_a_503_on_logs_is_retried_with_the_same_seq_and_stored_once(
    stubs: list[Stub], run_agent: Any
) -> None:
    stub = scenario(stubs, "echo one; echo two")
    # The batch is stored, then the answer is lost (503): the agent's retry is a duplicate.
    stub.hooks["logs"] = lambda body, count, answer: (
        (503, {"error": "unavailable"}) if count == 1 else None
    )
    code, err = finish(run_agent(stub.url))
    assert code == 0, err
    first, second, *rest = stub.bodies("logs")  # "two" may follow in a batch of its own
    assert first == second and first["seq"] == 0 and len(rest) <= 1
    assert stub.duplicates == 1 and stub.lines() == ["one", "two"]
    assert "logs: HTTP 503" in err


def test_a_refused_log_batch_leaves_a_gap_in_seq(stubs: list[Stub], run_agent: Any) -> None:
    stub = scenario(stubs, "echo one; sleep 0.4; echo two")
    stub.hooks["logs"] = lambda body, count, answer: (
        (413, {"error": "too large"}) if count == 1 else None
    )
    code, err = finish(run_agent(stub.url))
    assert code == 0, err
    batches = stub.bodies("logs")
    assert [(b["seq"], b["lines"], b["dropped"]) for b in batches] == [
        (0, ["one"], 0),
        (1, ["two"], 0),  # the service counts the gap (seq 0 never stored) as lost
    ]
    assert "logs refused with HTTP 413: too large" in err


def check_batches(stub: Stub, max_lines: int) -> list[dict[str, Any]]:
    batches = [c for c in stub.calls if c[1] == "logs"]
    seq = 0
    for _, _, body, size in batches:
        assert body["seq"] == seq and 0 < len(body["lines"]) <= max_lines
        assert size <= agent.MAX_BATCH_BYTES
        seq += len(body["lines"])
    return [c[2] for c in batches]


def test_a_huge_output_arrives_whole_in_bounded_batches(stubs: list[Stub], run_agent: Any) -> None:
    stub = scenario(stubs, "seq 1 50000", log_batch_lines=1000)
    code, err = finish(run_agent(stub.url, "--spool-lines", "60000"))
    assert code == 0, err
    batches = check_batches(stub, 1000)
    assert stub.lines() == [str(i) for i in range(1, 50001)]
    assert all(b["dropped"] == 0 for b in batches) and stub.duplicates == 0


def test_a_small_spool_drops_the_oldest_lines_and_counts_them(
    stubs: list[Stub], run_agent: Any
) -> None:
    stub = scenario(stubs, "seq 1 50000", log_batch_lines=100)
    stub.hooks["logs"] = lambda body, count, answer: time.sleep(0.01)  # a slow service
    code, err = finish(run_agent(stub.url, "--spool-lines", "500"))
    assert code == 0, err
    batches = check_batches(stub, 100)
    numbers = [int(line) for line in stub.lines()]
    assert numbers == sorted(set(numbers)) and numbers[-1] == 50000
    dropped = sum(b["dropped"] for b in batches)  # each batch: lost since the previous one
    assert dropped > 0 and dropped + len(numbers) == 50000


def test_long_lines_are_cut_and_batches_stay_under_256_kib(
    stubs: list[Stub], run_agent: Any
) -> None:
    command = "yes $(printf 'y%.0s' $(seq 3000)) | head -n 300; printf 'z%.0s' $(seq 10000); echo"
    stub = scenario(stubs, command, log_batch_lines=1000)
    code, err = finish(run_agent(stub.url))
    assert code == 0, err
    batches = check_batches(stub, 1000)
    assert len(batches) >= 4  # 900 KB of lines
    assert stub.lines() == ["y" * 3000] * 300 + ["z" * agent.MAX_LINE_CHARS]


def test_stop_before_the_command_starts(stubs: list[Stub], run_agent: Any) -> None:
    stub = Stub([WAIT, {"state": "stop"}]).start()
    stubs.append(stub)
    code, err = finish(run_agent(stub.url))
    assert code == 0, err
    assert stub.names() == ["register", "register"]


def test_an_address_that_is_not_a_node_is_exit_2(stubs: list[Stub], run_agent: Any) -> None:
    stub = Stub([WAIT]).start()
    stubs.append(stub)
    stub.hooks["register"] = lambda body, count, answer: (409, {"message": "not a node"})
    code, err = finish(run_agent(stub.url))
    assert code == 2
    assert "register refused with HTTP 409: not a node" in err
    assert stub.names() == ["register"]


def test_a_redirect_is_refused_and_the_token_stays_home(stubs: list[Stub], run_agent: Any) -> None:
    elsewhere = Stub([WAIT]).start()
    stub = Stub([WAIT]).start()
    stubs += [stub, elsewhere]
    stub.hooks["register"] = lambda body, count, answer: (
        307,
        {"location": f"{elsewhere.url}/v1/agent/register"},
    )
    code, err = finish(run_agent(stub.url))
    assert code == 2 and "register refused with HTTP 307" in err
    assert elsewhere.calls == []


def test_the_address_is_the_source_address_towards_the_service() -> None:
    assert agent.detect_address("http://127.0.0.1:8080") == "127.0.0.1"
    assert agent.detect_address("https://127.0.0.1/") == "127.0.0.1"


def test_a_signalled_agent_stops_its_command(
    stubs: list[Stub], run_agent: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    stub = scenario(stubs, f"echo $$ > {pidfile}; {LOOP}")
    proc = run_agent(stub.url)
    wait_until(lambda: "ready" in stub.lines())
    # While it runs, the command's pid (its process group) is in the state directory.
    state_pid = tmp_path / "root/var/lib/burst-broker/command.pid"
    assert int(state_pid.read_text()) == stub.bodies("started")[0]["pid"]
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 128 + signal.SIGTERM, err
    assert "got signal 15" in err
    assert not alive(int(pidfile.read_text()))
    assert not state_pid.exists()


def test_bad_arguments_are_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    base = [sys.executable, "-I", AGENT, "--cluster", CLUSTER]
    for argv in (
        [*base, "--service", "ftp://x", "--token-file", str(empty)],
        [*base, "--service", "http://127.0.0.1:9", "--token-file", str(tmp_path / "none")],
        [*base, "--service", "http://127.0.0.1:9", "--token-file", str(empty)],
        [*base, "--service", "http://127.0.0.1:9"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        assert done.returncode == 2, done.stderr


# -- docker mode --------------------------------------------------------------------------


def fake_docker(tmp_path: Path, script: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\n" + script)
    docker.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


def test_docker_run_argv() -> None:
    env = {"NODE_RANK": "1", **ARTIFACT_PATHS}
    argv = agent.docker_run_argv(
        "/usr/bin/docker", "img:1", "echo $NODE_RANK", env, "/r", ["ds1"], "/s/cid"
    )
    head = ["/usr/bin/docker", "run", "--rm", "--init", "--gpus", "all", "--network", "host"]
    assert argv[:12] == [*head, "--ipc", "host", "--cidfile", "/s/cid"]
    assert argv[-4:] == ["img:1", "bash", "-c", "echo $NODE_RANK"]
    options = argv[12:-4]
    pairs = list(zip(options[::2], options[1::2], strict=True))
    assert [v for o, v in pairs if o == "-e"] == [f"{k}={v}" for k, v in env.items()]
    assert [v for o, v in pairs if o == "-v"] == [
        "/r/mnt/checkpoints:/mnt/checkpoints",
        "/r/mnt/crud:/mnt/crud",
        "/r/mnt/lossy:/mnt/lossy",
        "/r/mnt/logs:/mnt/logs",
        "/r/data/ds1:/data/ds1",
    ]
    assert "--cidfile" not in agent.docker_run_argv("docker", "i", "c", {}, "/", [])


def test_an_image_pull_failure_is_reported_with_its_lines(
    stubs: list[Stub], run_agent: Any, tmp_path: Path
) -> None:
    env = fake_docker(
        tmp_path,
        'echo "Using default tag: latest"\n'
        'echo "Error response from daemon: pull access denied for $2" >&2\nexit 1\n',
    )
    stub = scenario(stubs, "echo never", image="nope/missing")
    code, err = finish(run_agent(stub.url, env=env))
    assert code == 0, err
    assert "started" not in stub.names() and "logs" not in stub.names()
    report = stub.exit()
    assert (report["reason"], report["exit_code"]) == ("image_pull_failed", 1)
    assert report["last_lines"] == [
        "Using default tag: latest",
        "Error response from daemon: pull access denied for nope/missing",
    ]


def test_with_an_image_the_command_runs_through_docker(
    stubs: list[Stub], run_agent: Any, tmp_path: Path
) -> None:
    env = fake_docker(
        tmp_path,
        'if [ "$1" = pull ]; then echo "pulled $2"; exit 0; fi\n'
        'shift; for arg in "$@"; do echo "$arg"; done; exit 7\n',
    )
    stub = scenario(stubs, "train.py --rank $NODE_RANK", image="me/train:1", datasets=["ds1"])
    code, err = finish(run_agent(stub.url, env=env))
    assert code == 0, err
    root = tmp_path / "root"
    lines = stub.lines()
    assert lines[:4] == ["--rm", "--init", "--gpus", "all"]
    assert lines[-4:] == ["me/train:1", "bash", "-c", "train.py --rank $NODE_RANK"]
    assert "OUTPUT_PATH=/mnt/checkpoints" in lines  # the container sees the seed's paths
    assert f"{root}/mnt/checkpoints:/mnt/checkpoints" in lines
    assert f"{root}/data/ds1:/data/ds1" in lines
    assert lines[lines.index("--cidfile") + 1] == f"{root}/var/lib/burst-broker/container.id"
    assert (stub.exit()["reason"], stub.exit()["exit_code"]) == ("exited", 7)


# -- units and the module's own constraints ------------------------------------------------


def test_the_spool_drops_the_oldest_and_batches_by_bytes() -> None:
    spool = agent.Spool(3)
    for i in range(5):
        spool.put(str(i))
    assert spool.take(10, 1000) == (["2", "3", "4"], 2)
    assert spool.last_lines() == ["0", "1", "2", "3", "4"]
    for _ in range(3):
        spool.put("x" * 100)
    lines, _ = spool.take(10, 250)
    assert lines == ["x" * 100, "x" * 100] and spool.pending() == 1


def test_timings_come_from_answers_within_bounds() -> None:
    timings = agent.Timings()
    assert (timings.heartbeat_every, timings.stop_grace, timings.log_batch_lines) == (5, 20, 500)
    timings.update({"heartbeat_every": 2, "stop_grace": -5, "retry_after": "x", "other": 1})
    timings.update({"log_batch_lines": 1e9, "log_batch_seconds": True})
    assert (timings.heartbeat_every, timings.stop_grace, timings.retry_after) == (2.0, 0.0, 1.0)
    assert (timings.log_batch_lines, timings.log_batch_seconds) == (100_000, 1.0)


def test_the_artifact_variables_are_the_brokers() -> None:
    assert set(agent.ARTIFACT_VARIABLES) == set(ARTIFACT_PATHS)
    rerooted = agent.reroot({"OUTPUT_PATH": "/mnt/checkpoints", "X": "/mnt/x"}, "/n/1")
    assert rerooted == {"OUTPUT_PATH": "/n/1/mnt/checkpoints", "X": "/mnt/x"}


def test_the_agent_imports_only_the_standard_library() -> None:
    probe = (
        "import importlib.util, sys\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('node_agent', {AGENT!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "new = {n: m for n, m in sys.modules.items() if n not in before}\n"
        "new.pop('node_agent', None)\n"
        "assert 'subprocess' in new and 'urllib.request' in new, sorted(new)\n"
        "print(sorted(n for n in new if n.split('.')[0] not in sys.stdlib_module_names))\n"
        "print(sorted(n for n, m in new.items()\n"
        "             if 'site-packages' in (getattr(m, '__file__', None) or '')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == ["[]", "[]"], done.stdout


def test_the_agent_is_python_3_8_grammar() -> None:
    source = Path(AGENT).read_text()
    ast.parse(source, feature_version=(3, 8))
    assert source.count("from __future__ import annotations") == 1


def vermin(path: Path) -> subprocess.CompletedProcess[str]:
    """vermin (a test dependency) reads a module's grammar and every standard-library name it
    uses, and fails when one needs a newer Python than 3.8."""
    run = "import sys, vermin; sys.exit(vermin.main())"
    return subprocess.run(
        [sys.executable, "-c", run, "--no-tips", "-t=3.8-", "--violations", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_agent_uses_nothing_python_3_8_lacks(tmp_path: Path) -> None:
    newer = tmp_path / "newer.py"  # the check can fail: a 3.9 stdlib name and a 3.9 method
    newer.write_text("import math\nprint(math.lcm(2, 3))\n")
    caught = vermin(newer)
    assert caught.returncode != 0 and "'math.lcm' member requires !2, 3.9" in caught.stdout
    done = vermin(Path(AGENT))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Minimum required versions: 3." in done.stdout


def python38() -> str | None:
    for candidate in (
        "python3.8",
        *sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.8*/bin/python3.8")),
    ):
        try:
            done = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.strip() == "(3, 8)":
            return candidate
    return None


def test_the_agent_runs_on_python_3_8(stubs: list[Stub], run_agent: Any) -> None:
    python = python38()
    if python is None:
        pytest.skip("no Python 3.8 on this machine (the grammar test still holds)")
    stub = scenario(stubs, "echo on 3.8; exit 4")
    code, err = finish(run_agent(stub.url, python=python))
    assert code == 0, err
    assert stub.lines() == ["on 3.8"] and stub.exit()["exit_code"] == 4
    assert stub.bodies("register")[0]["python"].startswith("3.8.")
