"""The agents' side of the API in-process: node tokens, register/started/logs/heartbeat/exit,
and the cluster's end that the exits decide (docs/agent-protocol.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.api import Broker
from broker.lifecycle import Status
from broker.runs import RunPolicy
from broker.server.app import create_app
from broker.server.service import Service, ServiceOptions
from broker.tokens import create_node_token
from shapes.catalog import load_bundled_catalog

CATALOG = load_bundled_catalog()


def launch_file(command: str = "echo hello", gpus: int = 16) -> str:
    return (
        f'isc_project_id = "p"\nexperiment_name = "e"\ngpus = {gpus}\n'
        f'compute_mode = "burst"\ncommand = {json.dumps(command)}\n'
    )


# The test plays the agents: ranks it leaves running never report an exit, so a drain
# gives up on them quickly (silent after 1.3 s)...
QUICK = RunPolicy(stop_grace=0.3, heartbeat_every=0.1, final_sync_timeout=0.3)
# ...unless the test has its agents answer a stop, and the drain must wait for them however
# loaded the machine: heartbeats every 5 s (silent after 16 s), 30 s to stop.
PATIENT = RunPolicy(stop_grace=30.0, heartbeat_every=5.0, final_sync_timeout=5.0)


class Run:
    def __init__(
        self,
        tmp_path: Path,
        gpus: int = 16,
        provisioning: str = "on-demand",
        run_policy: RunPolicy = QUICK,
        **fields: object,
    ) -> None:
        self.broker = Broker(
            state_dir=tmp_path / "state",
            backend="sim",
            catalog=CATALOG,
            run_policy=run_policy,
        )
        self.service = Service(self.broker, ServiceOptions(workers=0, reconcile_every=0))
        self.client = TestClient(create_app(self.service, console=False))
        self.user = self.broker.create_token("acme", name="u")[0]
        reply = self.client.post(
            "/v1/clusters",
            json={"launch_file": launch_file(gpus=gpus), "provisioning": provisioning, **fields},
            headers={"Authorization": f"Bearer {self.user}"},
        )
        assert reply.status_code == 202, reply.text
        self.cluster_id = reply.json()["cluster_id"]
        self.service.run_one(self.cluster_id)
        self.cluster = self.broker.get(self.cluster_id)
        assert self.cluster.status is Status.RUNNING
        self.token = self.new_token()

    def new_token(self) -> str:
        """A node token of the cluster's current cycle (a new cycle's nodes get their own)."""
        return create_node_token(self.broker.store, self.cluster_id, "acme", now=time.time())[0]

    def next_cycle(self) -> None:
        """A worker provisions the recovered cluster again; the test plays its new agents."""
        self.service.run_one(self.cluster_id)
        self.cluster = self.broker.get(self.cluster_id)
        assert self.cluster.status is Status.RUNNING, self.cluster
        self.token = self.new_token()

    def call(
        self, name: str, token: str | None = None, **body: object
    ) -> tuple[int, dict[str, object]]:
        reply = self.client.post(
            f"/v1/agent/{name}",
            json={"cluster_id": self.cluster_id, **body},
            headers={"Authorization": f"Bearer {token or self.token}"},
        )
        return reply.status_code, reply.json()

    def register_all(self) -> list[dict[str, object]]:
        answers = [self.call("register", address=n.private_ip)[1] for n in self.cluster.nodes]
        return (
            [self.call("register", address=n.private_ip)[1] for n in self.cluster.nodes]
            if (answers[0]["state"] == "wait")
            else answers
        )

    def wait_status(self, wanted: Status, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.broker.get(self.cluster_id).status is not wanted:
            assert time.monotonic() < deadline, self.broker.get(self.cluster_id)
            time.sleep(0.05)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    made = Run(tmp_path)
    with made.client:
        yield made


def test_agents_wait_for_the_gang_then_get_their_rank_env_and_command(run: Run) -> None:
    nodes = run.cluster.nodes
    assert len(nodes) >= 2
    first = run.call("register", address=nodes[1].private_ip)[1]
    assert first["state"] == "wait" and first["rank"] == 1
    answers = run.register_all()
    assert [a["state"] for a in answers] == ["run"] * len(nodes)
    assert [a["rank"] for a in answers] == list(range(len(nodes)))
    env = answers[1]["env"]
    assert isinstance(env, dict) and env == run.broker.env(run.cluster_id, 1)
    assert env["MASTER_ADDR"] == nodes[0].private_ip and env["NODE_RANK"] == "1"
    assert answers[0]["command"] == "echo hello" and answers[0]["image"] is None
    again = run.call("register", address=nodes[1].private_ip)[1]
    assert again["rank"] == 1  # the same rank for a re-registering agent
    code, doc = run.call("register", address="10.255.0.1")
    assert code == 409 and "not the address" in json.dumps(doc)


def test_every_rank_exiting_0_completes_the_cluster(run: Run) -> None:
    run.register_all()
    for n in run.cluster.nodes:
        assert run.call("started", rank=n.rank, pid=100 + n.rank)[1]["state"] == "run"
        run.call("logs", rank=n.rank, seq=0, lines=[f"hello from {n.rank}"], dropped=0)
        assert run.call("heartbeat", rank=n.rank)[1]["state"] == "run"
        run.call("exit", rank=n.rank, exit_code=0, signal=None, reason="exited", last_lines=[])
    run.wait_status(Status.COMPLETED)
    assert [line.line for line in run.broker.logs(run.cluster_id, 1).lines] == ["hello from 1"]
    # The cluster ended: its node token is refused from now on.
    assert run.call("heartbeat", rank=0)[0] == 401


def test_a_rank_exiting_non_zero_fails_the_cluster_with_its_rank_code_and_lines(run: Run) -> None:
    run.register_all()
    for n in run.cluster.nodes:
        run.call("started", rank=n.rank, pid=1)
    run.call(
        "exit", rank=1, exit_code=3, signal=None, reason="exited", last_lines=["boom", "Traceback"]
    )
    run.wait_status(Status.FAILED)
    cluster = run.broker.get(run.cluster_id)
    assert cluster.reason == "Error"
    assert "rank 1 ended with exit code 3" in (cluster.detail or "") and "boom" in (
        cluster.detail or ""
    )


def test_exits_nobody_decided_are_decided_by_the_watch_loop(run: Run) -> None:
    """The exit call decides the end at once; should a race leave a RUNNING cluster whose
    every rank exited 0 undecided (an exit read STARTING just before RUNNING was recorded),
    the service's watch loop ends it."""
    run.register_all()
    store = run.broker.store
    for n in run.cluster.nodes:
        run.call("started", rank=n.rank, pid=1)
        store.update_agent(  # as the exit call writes it, without its decision
            run.cluster_id, 1, n.rank, exited_at=time.time(), exit_code=0, exit_reason="exited"
        )
    assert run.broker.get(run.cluster_id).status is Status.RUNNING
    run.service.watch_runs()
    run.wait_status(Status.COMPLETED)


def test_a_preemption_notice_ends_the_gang_preempted(run: Run) -> None:
    run.register_all()
    for n in run.cluster.nodes:
        run.call("started", rank=n.rank, pid=1)
    code, answer = run.call(
        "preempted", rank=1, cloud="aws", action="terminate", not_before=1_800_000_000
    )
    assert code == 200 and answer["state"] == "stop"
    run.wait_status(Status.FAILED)
    cluster = run.broker.get(run.cluster_id)
    assert cluster.reason == "Preempted"
    assert cluster.detail is not None and cluster.detail.startswith("rank 1 (")
    assert "aws preemption notice: terminate, not before 08:00:00 UTC" in cluster.detail
    code, answer = run.call("preempted", rank=1, cloud="aws", action="terminate")
    assert code == 401  # ended: its node token is revoked


def test_an_image_pull_failure_is_its_own_reason(run: Run) -> None:
    run.register_all()
    run.call(
        "exit",
        rank=0,
        exit_code=None,
        signal=None,
        reason="image_pull_failed",
        last_lines=["denied"],
    )
    run.wait_status(Status.FAILED)
    assert run.broker.get(run.cluster_id).reason == "FailedImagePull"


def test_tokens_stay_in_their_lane(run: Run, tmp_path: Path) -> None:
    # A user token cannot call the agent endpoints, a node token nothing else.
    assert run.call("register", token=run.user, address="x")[0] == 401
    reply = run.client.get("/v1/clusters", headers={"Authorization": f"Bearer {run.token}"})
    assert reply.status_code == 401
    # A node token of another cluster does not reach this one.
    other = create_node_token(run.broker.store, "bb-000000000000", "acme", now=time.time())[0]
    code, _ = run.call("register", token=other, address=run.cluster.nodes[0].private_ip)
    assert code == 404
    # Node tokens are not listed with the organisation's API tokens.
    assert all(t.role != "node" for t in run.broker.list_tokens())


def test_retried_log_batches_are_stored_once_and_the_cap_drops_the_oldest(run: Run) -> None:
    run.register_all()
    batch = [f"line {i}" for i in range(10)]
    run.call("logs", rank=0, seq=0, lines=batch, dropped=0)
    run.call("logs", rank=0, seq=0, lines=batch, dropped=0)  # a retry: nothing new
    run.call("logs", rank=0, seq=5, lines=[*batch[5:], "line 10"], dropped=0)  # overlaps
    page = run.broker.logs(run.cluster_id, 0, tail=None)
    assert [x.line for x in page.lines] == [f"line {i}" for i in range(11)] and page.dropped == 0
    assert [x.seq for x in page.lines] == list(range(11))
    run.broker.store.append_logs(
        run.cluster_id, run.cluster.cycle, 0, seq=11, lines=["a", "b", "c"], dropped=2, cap=5
    )
    page = run.broker.logs(run.cluster_id, 0, tail=None)
    assert [x.line for x in page.lines] == ["line 9", "line 10", "a", "b", "c"]
    assert page.dropped == 2 + 9  # the agent's two, and the nine the cap dropped
    code, _ = run.call("logs", rank=0, seq=-1, lines=["x"], dropped=0)
    assert code == 422


def test_silent_agents_fail_the_cluster_node_lost(run: Run) -> None:
    run.register_all()
    for n in run.cluster.nodes:
        run.call("started", rank=n.rank, pid=1)
    stale = time.time() - run.broker.run_policy.heartbeat_timeout - 5
    run.broker.store.update_agent(run.cluster_id, run.cluster.cycle, 1, heartbeat_at=stale)
    run.service.watch_runs()
    run.wait_status(Status.FAILED)
    cluster = run.broker.get(run.cluster_id)
    assert cluster.reason == "NodeLost" and "rank 1" in (cluster.detail or "")


def test_a_stop_tells_the_agents_and_waits_for_their_commands(run: Run) -> None:
    import threading

    run.register_all()
    for n in run.cluster.nodes:
        run.call("started", rank=n.rank, pid=1)
    stopper = threading.Thread(target=run.broker.scoped("acme").stop, args=(run.cluster_id,))
    stopper.start()
    deadline = time.monotonic() + 5
    while run.call("heartbeat", rank=0)[1]["state"] != "stop":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for n in run.cluster.nodes:  # each agent stops its command and says so
        run.call("exit", rank=n.rank, exit_code=None, signal=15, reason="stopped", last_lines=[])
    stopper.join(timeout=10)
    cluster = run.broker.get(run.cluster_id)
    assert cluster.status is Status.STOPPED and cluster.reason is None


def test_a_stop_answers_terminating_while_the_commands_still_stop(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP stop waits END_ANSWER_WITHIN for the wind-down, not for the commands' final
    sync: it answers TERMINATING and a thread of the service finishes the job."""
    from broker.server import api

    monkeypatch.setattr(api, "END_ANSWER_WITHIN", 0.1)
    run.broker._run_policy = PATIENT  # the drain waits for this test's agents
    run.register_all()
    for n in run.cluster.nodes:
        run.call("started", rank=n.rank, pid=1)
    user = {"Authorization": f"Bearer {run.user}"}
    began = time.monotonic()
    reply = run.client.post(f"/v1/clusters/{run.cluster_id}/stop", headers=user)
    assert reply.status_code == 200 and reply.json()["status"] == "TERMINATING", reply.text
    assert time.monotonic() - began < 2
    again = run.client.post(f"/v1/clusters/{run.cluster_id}/stop", headers=user)
    assert again.json()["status"] == "TERMINATING"  # the same wind-down, not a second one
    assert run.call("heartbeat", rank=0)[1]["state"] == "stop"  # the token works until the end
    for n in run.cluster.nodes:
        run.call("exit", rank=n.rank, exit_code=None, signal=15, reason="stopped", last_lines=[])
    run.wait_status(Status.STOPPED)
    cluster = run.broker.get(run.cluster_id)
    assert cluster.reason is None and cluster.owner is None
    assert run.call("heartbeat", rank=0)[0] == 401  # revoked before STOPPED was written
    doc = run.client.get(f"/v1/clusters/{run.cluster_id}", headers=user).json()
    assert doc["status"] == "STOPPED"


def test_logs_through_the_api_tail_after_and_other_organisations(run: Run) -> None:
    run.register_all()
    run.call("logs", rank=0, seq=0, lines=[f"l{i}" for i in range(5)], dropped=0)
    user = {"Authorization": f"Bearer {run.user}"}
    path = f"/v1/clusters/{run.cluster_id}/logs"
    doc = run.client.get(path + "?tail=2", headers=user).json()
    assert [x["line"] for x in doc["lines"]] == ["l3", "l4"] and doc["rank"] == 0
    after = doc["lines"][0]["id"]
    doc = run.client.get(f"{path}?after={after}", headers=user).json()
    assert [x["line"] for x in doc["lines"]] == ["l4"] and doc["next_after"] == doc["lines"][0][
        "id"
    ]
    started = time.monotonic()
    empty = run.client.get(f"{path}?after={doc['next_after']}&wait=0.5", headers=user).json()
    assert empty["lines"] == [] and time.monotonic() - started >= 0.4  # held for new lines
    assert run.client.get(f"{path}?rank=1", headers=user).json()["lines"] == []
    stranger = {"Authorization": f"Bearer {run.broker.create_token('globex')[0]}"}
    assert run.client.get(path, headers=stranger).status_code == 404
    assert run.client.get(f"{path}?tail=0", headers=user).status_code == 422


def test_broker_logs_prints_the_lines_locally(
    run: Run, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.cli import main

    run.register_all()
    run.call("logs", rank=1, seq=0, lines=["first", "second"], dropped=0)
    monkeypatch.setenv("BROKER_STATE_DIR", str(run.broker.state_dir))
    assert main(["logs", run.cluster_id, "--rank", "1"]) == 0
    assert capsys.readouterr().out == "first\nsecond\n"
    assert main(["logs", run.cluster_id, "--rank", "1", "--tail", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [x["line"] for x in doc["lines"]] == ["second"] and doc["status"] == "RUNNING"
