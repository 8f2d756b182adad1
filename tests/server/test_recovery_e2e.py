"""Keeping experiments running (issue 16 §3), end to end on the simulated cloud with real
agents and a real `broker serve --sim`: a spot gang preempted (the sim's scripted notice,
reported by the agent's GCP watcher) is recovered on another zone and resumes from its
checkpoints; a preemption of the replacement gang while it starts is recovered too; when the
recoveries run out the experiment ends FAILED Preempted. No node is left behind after any."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.ranking import order_zones
from shapes.catalog import load_bundled_catalog
from tests.server.conftest import BrokerServer, server_env
from tests.server.test_runs_e2e import ended, log_lines, no_node_left

CATALOG = load_bundled_catalog()
SPOT = "aws:us-east-1:g5.12xlarge:spot"  # 4 GPUs a node: 8 GPUs are a gang of 2
ON_DEMAND = "aws:us-east-1:g5.12xlarge:on-demand"
Z1, Z2 = order_zones(CATALOG.get(SPOT))[:2]  # type: ignore[arg-type]
assert order_zones(CATALOG.get(ON_DEMAND))[:2] == [Z1, Z2]  # type: ignore[arg-type]

# A checkpointing job: each rank counts to 4, saving its step; a new cycle resumes from it.
COMMAND = (
    'f="$OUTPUT_PATH/step-$NODE_RANK"; s=$(cat "$f" 2>/dev/null || echo 0); '
    'echo "cycle $STRONG_CYCLE_COUNT from $s"; sleep 1; i=$s; '
    'while [ "$i" -lt 4 ]; do i=$((i+1)); echo "step $i"; echo "$i" > "$f"; sleep 0.4; done'
)


def launch_file(priority: list[str], command: str = COMMAND) -> str:
    return (
        'isc_project_id = "p"\nexperiment_name = "keep-running"\ngpus = 8\n'
        f'compute_mode = "burst"\nburst_shape_priority_list = {json.dumps(priority)}\n'
        f"command = {json.dumps(command)}\n"
    )


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start a server on a scenario; stopped (and its nodes checked gone) at the end."""
    made: list[BrokerServer] = []

    def start(scenario: str) -> BrokerServer:
        path = tmp_path / "scenario.toml"
        path.write_text(scenario)
        env = {**server_env(tmp_path), "BROKER_SIM_SCENARIO": str(path)}
        srv = BrokerServer(tmp_path / "state", env, "--workers", "2", "--reconcile-every", "1")
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.stop(signal.SIGKILL if srv.proc.poll() is None else signal.SIGTERM, timeout=10)


def submit(srv: BrokerServer, token: str, body: dict[str, Any]) -> str:
    reply = srv.call("/v1/clusters", "POST", token=token, body=body)
    assert reply.status == 202, reply.body
    return str(reply.json()["cluster_id"])


def cycles(final: dict[str, Any]) -> list[tuple[int, str, str | None]]:
    return [(t["cycle"], t["status"], t["reason"]) for t in final["transitions"]]


def test_a_preempted_spot_gang_is_recovered_on_another_zone_and_resumes(serve: Any) -> None:
    srv = serve(
        f'[shapes."{SPOT}"]\ncapacity_nodes = 0\nzones = {{ "{Z1}" = 10, "{Z2}" = 10 }}\n'
        f'preempt_on_line = "step 2"\npreempt_zones = ["{Z1}"]\npreempt_notice_s = 5\n'
    )
    token = srv.token("acme")
    cluster_id = submit(srv, token, {"launch_file": launch_file([SPOT])})
    final = ended(srv, token, cluster_id, timeout=90)
    assert final["status"] == "COMPLETED", final
    assert final["cycle"] == 2 and final["zone"] == Z2, final
    story = cycles(final)
    assert (1, "TERMINATING", "Preempted") in story and (2, "PENDING", "Preempted") in story
    assert not any(status in ("FAILED", "STOPPED") for _, status, _ in story)
    recovery = next(t for t in final["transitions"] if t["reason"] == "Preempted")
    assert recovery["detail"].startswith("recovery 1 of 3: rank 0 ("), recovery
    assert "gcp preemption notice" in recovery["detail"]
    assert final["run"]["recoveries"] == 1 and final["run"]["max_recoveries"] == 3
    lines = [x for x in log_lines(srv, token, cluster_id, 0) if "[burst-agent]" not in x]
    assert lines[0] == "cycle 1 from 0" and "step 2" in lines
    resumed = next(x for x in lines if x.startswith("cycle 2 from "))
    assert int(resumed.split()[-1]) >= 2, lines  # the checkpoint came back: no step redone
    assert lines[-1] == "step 4"
    blocks = srv.broker().blocks()
    assert any(b.scope.zone == Z1 and "Preempted" in b.reason for b in blocks)
    no_node_left(srv.state_dir)


def test_a_replacement_preempted_while_it_starts_is_recovered_again(serve: Any) -> None:
    """Cycle 1 is preempted mid-run; its replacement (the on-demand shape: the spot one
    has no other zone) gets its notice at boot, while it starts (restoring checkpoints);
    cycle 3 runs in the next zone and completes."""
    srv = serve(
        f'[shapes."{SPOT}"]\ncapacity_nodes = 0\nzones = {{ "{Z1}" = 10 }}\n'
        'preempt_on_line = "step 2"\npreempt_notice_s = 5\n'
        f'[shapes."{ON_DEMAND}"]\npreempt_after_s = 0\npreempt_zones = ["{Z1}"]\n'
    )
    token = srv.token("acme")
    body = {"launch_file": launch_file([SPOT, ON_DEMAND]), "max_recoveries": 2}
    cluster_id = submit(srv, token, body)
    final = ended(srv, token, cluster_id, timeout=120)
    assert final["status"] == "COMPLETED", json.dumps(final["transitions"], indent=0)
    # The block is the lost shape's (a spot market's stockout), so cycle 2 may use the
    # on-demand shape in Z1 (preempted as it boots: usually before its command started,
    # while it restores the checkpoints); its own loss blocks that, so cycle 3 is in Z2.
    assert final["cycle"] == 3 and final["shape_id"] == ON_DEMAND and final["zone"] == Z2, final
    story = cycles(final)
    assert [s for s in story if s[1] == "PENDING" and s[2]] == [
        (2, "PENDING", "Preempted"),
        (3, "PENDING", "Preempted"),
    ]
    assert final["run"]["recoveries"] == 2
    lines = [x for x in log_lines(srv, token, cluster_id, 0) if "[burst-agent]" not in x]
    assert lines[-1] == "step 4", lines
    no_node_left(srv.state_dir)


def test_recoveries_run_out_then_it_fails_preempted(serve: Any) -> None:
    srv = serve(f'[shapes."{SPOT}"]\npreempt_after_s = 1\npreempt_notice_s = 2\n')
    token = srv.token("acme")
    body = {"launch_file": launch_file([SPOT], "echo up; sleep 60"), "max_recoveries": 1}
    cluster_id = submit(srv, token, body)
    final = ended(srv, token, cluster_id, timeout=90)
    assert final["status"] == "FAILED" and final["reason"] == "Preempted", final
    assert "recoveries exhausted (1 of 1 used)" in final["detail"], final
    assert final["cycle"] == 2
    recovery = next(t for t in final["transitions"] if t["status"] == "PENDING" and t["reason"])
    assert f" in {Z1}): gcp preemption notice" in recovery["detail"], recovery
    assert f" in {Z2}): gcp preemption notice" in final["detail"], final  # the next zone
    no_node_left(srv.state_dir)
