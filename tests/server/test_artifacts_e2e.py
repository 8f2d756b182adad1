"""Artifacts end to end on sim: a real `broker serve --sim`, real agent processes, the default
``file://`` store (its signed URLs served by the service). What a run writes outlives its
nodes; a stopped run keeps what it wrote; a restart finds its checkpoint; datasets and input
artifacts arrive before the command."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import BrokerServer, call, server_env, wait_for
from tests.server.test_runs_e2e import agent_processes, doc, ended, log_lines

# On sim a node's root is its sandbox: the seed's /data/<id> is <root>/data/<id>, and the
# artifact variables already point inside it; ROOT finds the sandbox from them.
ROOT = '"$OUTPUT_PATH/../.."'


def launch(command: str, gpus: int = 8, **lists: list[str]) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in lists.items())
    return (
        f'isc_project_id = "p"\nexperiment_name = "a"\ngpus = {gpus}\ncompute_mode = "burst"\n'
        'burst_shape_priority_list = ["aws:us-east-1:g5.12xlarge:on-demand"]\n'
        f"command = {json.dumps(command)}\n{extra}"
    )


def submit(srv: BrokerServer, token: str, text: str) -> str:
    reply = srv.call("/v1/clusters", "POST", token=token, body={"launch_file": text})
    assert reply.status == 202, reply.body
    return str(reply.json()["cluster_id"])


def artifacts(srv: BrokerServer, token: str, cluster_id: str) -> dict[str, int]:
    got = srv.call(f"/v1/clusters/{cluster_id}/artifacts", token=token).json()
    return {a["path"]: a["size"] for a in got["artifacts"]}


def command_lines(srv: BrokerServer, token: str, cluster_id: str) -> list[str]:
    """Rank 0's output without the agent's own lines ([burst-agent] ...)."""
    return [x for x in log_lines(srv, token, cluster_id, 0) if not x.startswith("[burst-agent]")]


def download(srv: BrokerServer, token: str, cluster_id: str, path: str) -> bytes:
    link = srv.call(f"/v1/clusters/{cluster_id}/artifacts/link?path={path}", token=token).json()
    reply = call(link["url"])
    assert reply.status == 200
    return reply.body


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("artifacts")
    server = BrokerServer(home / "state", server_env(home), "--workers", "2")
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL if server.proc.poll() is None else signal.SIGTERM, timeout=10)


def test_what_a_run_writes_is_in_the_store_after_its_nodes_are_gone(srv: BrokerServer) -> None:
    token = srv.token("acme")
    command = (
        'echo "rank $NODE_RANK" > "$OUTPUT_PATH/model-$NODE_RANK.txt"; '
        'mkdir -p "$LOSSY_ARTIFACT_PATH/tb" && echo scalars > "$LOSSY_ARTIFACT_PATH/tb/ev"; '
        'echo db > "$CRUD_ARTIFACT_PATH/db.img"; echo log > "$LOG_ARTIFACT_PATH/run.log"; '
        # a 200 MB checkpoint on rank 0: it goes in parts
        'if [ "$NODE_RANK" = 0 ]; then head -c 200000000 /dev/zero > "$OUTPUT_PATH/big.bin"; fi'
    )
    cluster_id = submit(srv, token, launch(command))
    final = ended(srv, token, cluster_id, timeout=120)
    assert final["status"] == "COMPLETED", final
    wait_for(lambda: agent_processes(srv.state_dir) == [], timeout=15)
    found = artifacts(srv, token, cluster_id)
    for rank in (0, 1):
        assert found[f"checkpoints/rank-{rank}/model-{rank}.txt"] == len(f"rank {rank}\n")
        assert found[f"lossy/rank-{rank}/tb/ev"] == len("scalars\n")
        assert found[f"crud/rank-{rank}/db.img"] == 3
        assert found[f"logs/rank-{rank}/run.log"] == 4
    assert found["checkpoints/rank-0/big.bin"] == 200_000_000
    assert "checkpoints/rank-1/big.bin" not in found
    assert download(srv, token, cluster_id, "checkpoints/rank-1/model-1.txt") == b"rank 1\n"
    syncs = {(s["rank"], s["kind"]): s for s in doc(srv, token, cluster_id)["artifact_syncs"]}
    assert all(s["final"] and s["failed"] == 0 for s in syncs.values()), syncs
    assert syncs[(0, "checkpoints")]["bytes"] >= 200_000_000


def test_a_stopped_run_keeps_what_it_wrote(srv: BrokerServer) -> None:
    token = srv.token("acme")
    command = 'echo "step 3" > "$LOSSY_ARTIFACT_PATH/progress.txt"; echo ready; sleep 600'
    cluster_id = submit(srv, token, launch(command, gpus=4))
    wait_for(lambda: command_lines(srv, token, cluster_id) == ["ready"], timeout=60)
    stopped = srv.call(f"/v1/clusters/{cluster_id}/stop", "POST", token=token, timeout=90)
    # the answer waits 5 s; the agents hear "stop" at their next heartbeat
    assert stopped.status == 200 and stopped.json()["status"] in ("STOPPED", "TERMINATING")
    assert ended(srv, token, cluster_id, timeout=90)["status"] == "STOPPED"
    assert artifacts(srv, token, cluster_id) == {"lossy/rank-0/progress.txt": 7}


def test_a_restart_finds_its_checkpoint_and_inputs_arrive_before_the_command(
    srv: BrokerServer,
) -> None:
    token = srv.token("acme")
    command = (
        'ckpt="$OUTPUT_PATH/ckpt.txt"; '
        'if [ -f "$ckpt" ]; then echo "resumed from $(cat "$ckpt")"; '
        'else echo fresh; echo "step 7" > "$ckpt"; fi'
    )
    cluster_id = submit(srv, token, launch(command, gpus=4))
    assert ended(srv, token, cluster_id, timeout=60)["status"] == "COMPLETED"
    assert command_lines(srv, token, cluster_id) == ["fresh"]
    restarted = srv.call(f"/v1/clusters/{cluster_id}/restart", "POST", token=token)
    assert restarted.status == 202, restarted.body
    wait_for(lambda: doc(srv, token, cluster_id)["cycle"] == 2, timeout=30)
    final = ended(srv, token, cluster_id, timeout=60)
    assert final["status"] == "COMPLETED" and final["cycle"] == 2, final
    assert command_lines(srv, token, cluster_id)[-1] == "resumed from step 7"

    # A dataset (put in the store by hand here) and that run's checkpoints as an input
    # artifact, both read by the command before anything else.
    dataset = srv.state_dir / "artifacts" / "acme" / "datasets" / "mnist" / "train.csv"
    dataset.parent.mkdir(parents=True)
    dataset.write_text("1,2,3\n")
    reader = (
        f"cat {ROOT}/data/mnist/train.csv; cat {ROOT}/data/{cluster_id}.checkpoints/rank-0/ckpt.txt"
    )
    text = launch(
        reader,
        gpus=4,
        dataset_id_list=["mnist"],
        input_artifact_id_list=[f"{cluster_id}.checkpoints"],
    )
    second = submit(srv, token, text)
    assert ended(srv, token, second, timeout=60)["status"] == "COMPLETED"
    assert command_lines(srv, token, second) == ["1,2,3", "step 7"]


def test_a_missing_dataset_is_refused_before_anything_runs(srv: BrokerServer) -> None:
    token = srv.token("acme")
    text = launch("true", gpus=4, dataset_id_list=["nope"])
    reply = srv.call("/v1/clusters", "POST", token=token, body={"launch_file": text})
    assert reply.status == 422
    assert "no dataset 'nope' in the artifact store" in reply.body.decode()


def test_another_organisation_cannot_see_or_fetch_them(srv: BrokerServer) -> None:
    mine, theirs = srv.token("acme"), srv.token("globex")
    cluster_id = submit(srv, mine, launch('echo x > "$OUTPUT_PATH/x"', gpus=4))
    assert ended(srv, mine, cluster_id, timeout=60)["status"] == "COMPLETED"
    assert srv.call(f"/v1/clusters/{cluster_id}/artifacts", token=theirs).status == 404
    path = "checkpoints/rank-0/x"
    reply = srv.call(f"/v1/clusters/{cluster_id}/artifacts/link?path={path}", token=theirs)
    assert reply.status == 404
    assert Path(srv.state_dir / "artifacts" / "acme").is_dir()
