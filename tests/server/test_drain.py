"""The drain before a gang's nodes go waits for the agents to stop their commands and sync,
but not for an agent whose node the cloud already took (a preempted node after its notice):
it asks the cloud after a couple of seconds instead of waiting out three heartbeats of
silence. In-process, the test playing the agents (as test_agent_api.py)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.api import Broker
from broker.lifecycle import Status
from broker.state import NodeRecord
from providers.base import Node, NodeState
from providers.errors import TransientError
from tests.server.test_agent_api import CATALOG, PATIENT, Run
from tests.server.test_takeover import started


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    made = Run(tmp_path, run_policy=PATIENT)  # silent after 16 s; a drain may last 30 s
    with made.client:
        yield made


def test_a_node_the_cloud_took_is_not_waited_for(run: Run) -> None:
    started(run)
    sim = run.broker.provider("sim")
    (taken,) = [
        n for n in sim.describe(run.cluster_id) if n.provider_id == run.cluster.nodes[1].provider_id
    ]
    sim.terminate([taken])  # rank 1's node is gone with its agent: it will never answer
    began = time.monotonic()
    stopper = threading.Thread(target=run.broker.scoped("acme").stop, args=(run.cluster_id,))
    stopper.start()
    while run.call("heartbeat", rank=0)[1]["state"] != "stop":
        assert time.monotonic() - began < 10
        time.sleep(0.02)
    for n in run.cluster.nodes:
        if n.rank != 1:
            run.call(
                "exit", rank=n.rank, exit_code=None, signal=15, reason="stopped", last_lines=[]
            )
    stopper.join(timeout=30)
    took = time.monotonic() - began
    assert run.broker.get(run.cluster_id).status is Status.STOPPED
    assert took < 10, took  # not the 16 s of silence rank 1 would need


def test_a_node_still_running_is_waited_for(run: Run) -> None:
    started(run)
    stopper = threading.Thread(target=run.broker.scoped("acme").stop, args=(run.cluster_id,))
    stopper.start()
    time.sleep(3)  # past the drain's first look at the cloud: every node still runs
    assert stopper.is_alive()
    for n in run.cluster.nodes:
        run.call("exit", rank=n.rank, exit_code=None, signal=15, reason="stopped", last_lines=[])
    stopper.join(timeout=10)
    assert run.broker.get(run.cluster_id).status is Status.STOPPED


class Cloud:
    """A provider's describe, as the drain asks it: these nodes in these states."""

    def __init__(self, states: dict[str, str] | None) -> None:
        self.states = states

    def describe(self, cluster_id: str) -> list[Node]:
        if self.states is None:
            raise TransientError("throttled", code="Throttling", provider="gcp")
        return [
            Node(provider="gcp", provider_id=i, shape_id="s", region="r", zone="z",
                 state=NodeState(state))
            for i, state in self.states.items()
        ]  # fmt: skip


def test_only_a_terminated_or_unlisted_node_is_gone(tmp_path: Path) -> None:
    broker = Broker(state_dir=tmp_path / "state", backend="sim", catalog=CATALOG)
    made = broker.store.create_cluster("bb-1", request={}, experiment=None, backend="x", now=0)
    nodes = tuple(NodeRecord(r, f"n{r}", f"10.0.0.{r}", "z", "r") for r in range(4))
    cluster = dataclasses.replace(made, nodes=nodes)
    # running; stopping (a GCP VM through its preemption notice: its agent still syncs);
    # terminated; not listed at all
    broker._providers["x"] = Cloud(  # type: ignore[assignment]
        {"n0": "running", "n1": "terminating", "n2": "terminated"}
    )
    assert broker._gone_ranks(cluster) == {2, 3}
    broker._providers["x"] = Cloud(None)  # type: ignore[assignment]
    assert broker._gone_ranks(cluster) == set()  # cannot ask now: wait as before


def test_an_agent_told_stop_while_waiting_for_its_gang_is_not_waited_for(run: Run) -> None:
    """Rank 0 registered and waits for the others; the stop comes first. Its next register
    hears "stop" and the agent exits without a report: that answer counts as its exit."""
    nodes = run.cluster.nodes
    assert run.call("register", address=nodes[0].private_ip)[1]["state"] == "wait"
    began = time.monotonic()
    stopper = threading.Thread(target=run.broker.scoped("acme").stop, args=(run.cluster_id,))
    stopper.start()
    while run.call("register", address=nodes[0].private_ip)[1]["state"] != "stop":
        assert time.monotonic() - began < 10
        time.sleep(0.05)
    stopper.join(timeout=30)
    assert time.monotonic() - began < 10  # not the 16 s of silence it would need
    assert run.broker.get(run.cluster_id).status is Status.STOPPED
    (agent,) = run.broker.store.agents(run.cluster_id, 1)
    assert (agent.rank, agent.exit_reason, agent.started_at) == (0, "stopped", None)
