"""The command in the user's container, end to end on sim: real agents, a real service, and a
stand-in ``docker`` on the nodes' PATH (no Docker engine runs on these machines) that
records each call and runs the command with the environment it was given."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import BrokerServer, server_env, wait_for
from tests.server.test_runs_e2e import agent_processes, ended, log_lines

FAKE_DOCKER = """#!{python}
import json, os, sys, time
log = os.environ["FAKE_DOCKER_LOG"]
args = sys.argv[1:]
with open(os.path.join(log, "%d-%d.json" % (time.time_ns(), os.getpid())), "w") as out:
    json.dump(args, out)
if args[0] == "pull":
    if "missing" in args[1]:
        sys.stderr.write("Error response from daemon: pull access denied for %s, "
                         "repository does not exist or may require 'docker login'\\n" % args[1])
        sys.exit(1)
    print("Status: Downloaded newer image for " + args[1])
    sys.exit(0)
if args[0] == "kill":
    sys.exit(0)
assert args[0] == "run", args
env, i = {{"PATH": os.environ["PATH"]}}, 1
while args[i].startswith("-"):
    flag = args[i]
    if flag in ("--rm", "--init"):
        i += 1
        continue
    value = args[i + 1]
    if flag == "-e":
        name, _, val = value.partition("=")
        env[name] = val
    elif flag == "--cidfile":
        with open(value, "w") as out:
            out.write("c0ffee%d" % os.getpid())
    i += 2
image, command = args[i], args[i + 1:]
env["FAKE_IMAGE"] = image
os.execvpe(command[0], command, env)
"""


@pytest.fixture
def docker_server(tmp_path: Path) -> Any:
    bin_dir, calls = tmp_path / "bin", tmp_path / "docker-calls"
    bin_dir.mkdir()
    calls.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable))
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    env = server_env(tmp_path)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_DOCKER_LOG"] = str(calls)
    # Nothing here kills a server, so nothing waits for a lease to run out: a 30 s lease
    # (not server_env's 5 s) keeps a stall of this loaded machine from settling a cluster
    # Orphaned mid-provision, which twice ran one of them as a second cycle in CI.
    env["BROKER_LEASE_SECONDS"] = "30"
    config = tmp_path / "config" / "burst-broker" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[node]\nimage = "registry.example.com/team/default:2"\n')
    srv = BrokerServer(tmp_path / "state", env, "--workers", "2", "--reconcile-every", "1")
    try:
        yield srv, calls
    finally:
        srv.stop(signal.SIGKILL if srv.proc.poll() is None else signal.SIGTERM, timeout=10)


def launch(command: str, gpus: int = 8, datasets: tuple[str, ...] = ()) -> str:
    return (
        f'isc_project_id = "p"\nexperiment_name = "c"\ngpus = {gpus}\ncompute_mode = "burst"\n'
        'burst_shape_priority_list = ["aws:us-east-1:g5.12xlarge:on-demand"]\n'
        f"dataset_id_list = {json.dumps(list(datasets))}\ncommand = {json.dumps(command)}\n"
    )


def submit(srv: BrokerServer, token: str, body: dict[str, Any]) -> str:
    reply = srv.call("/v1/clusters", "POST", token=token, body=body)
    assert reply.status == 202, reply.body
    return str(reply.json()["cluster_id"])


def calls_of(calls: Path, verb: str) -> list[list[str]]:
    found = [json.loads(p.read_text()) for p in sorted(calls.glob("*.json"))]
    return [c for c in found if c[0] == verb]


def test_the_command_runs_in_the_requested_image_with_gpus_network_and_mounts(
    docker_server: Any,
) -> None:
    srv, calls = docker_server
    token = srv.token("acme")
    command = 'echo "rank $NODE_RANK in $FAKE_IMAGE, checkpoints at $CHECKPOINT_ARTIFACT_PATH"'
    image = "registry.example.com/team/train:1.4"
    dataset = srv.state_dir / "artifacts" / "acme" / "datasets" / "imagenet-1k" / "labels.txt"
    dataset.parent.mkdir(parents=True)
    dataset.write_text("cat\n")
    body = {"launch_file": launch(command, datasets=("imagenet-1k",)), "image": image}
    cluster_id = submit(srv, token, body)
    final = ended(srv, token, cluster_id, timeout=60)
    assert final["status"] == "COMPLETED", final
    for rank in (0, 1):  # the container sees the seed's paths, not the node's sandbox
        assert [x for x in log_lines(srv, token, cluster_id, rank) if "[burst-agent]" not in x] == [
            f"rank {rank} in {image}, checkpoints at /mnt/checkpoints"
        ]
    assert [c[1] for c in calls_of(calls, "pull")] == [image, image]
    runs = calls_of(calls, "run")
    assert len(runs) == 2
    for argv in runs:
        joined = " ".join(argv)
        assert "--gpus all --network host --ipc host" in joined
        assert argv[-4:-2] == [image, "bash"] and argv[-1] == command
        volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
        targets = sorted(v.rsplit(":", 1)[1] for v in volumes)
        assert targets == [
            "/data/imagenet-1k",
            "/mnt/checkpoints",
            "/mnt/crud",
            "/mnt/logs",
            "/mnt/lossy",
        ]
        assert all(v.startswith(str(srv.state_dir / "sim-nodes")) for v in volumes)
        assert all(Path(v.rsplit(":", 1)[0]).is_dir() for v in volumes)  # made by the agent
        env = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-e")
        assert env["NNODES"] == "2" and env["N_PROC"] == "4"
    assert final["run"] == {
        "command": command,
        "image": image,
        "datasets": ["imagenet-1k"],
        "max_hours": None,
        "max_recoveries": 0,  # on-demand: not recovered unless asked
        "recoveries": 0,
    }
    wait_for(lambda: agent_processes(srv.state_dir) == [], timeout=15)


def test_the_configured_image_is_the_default_and_an_empty_image_runs_on_the_host(
    docker_server: Any,
) -> None:
    srv, calls = docker_server
    token = srv.token("acme")
    command = 'echo "in ${FAKE_IMAGE:-the host}"'
    defaulted = submit(srv, token, {"launch_file": launch(command, gpus=4)})
    on_host = submit(srv, token, {"launch_file": launch(command, gpus=4), "image": ""})
    for cluster_id, said in ((defaulted, "in registry.example.com/team/default:2"),
                             (on_host, "in the host")):  # fmt: skip
        final = ended(srv, token, cluster_id, timeout=60)
        told = [(t["cycle"], t["status"], t["reason"], t["detail"]) for t in final["transitions"]]
        assert final["status"] == "COMPLETED", told
        lines = log_lines(srv, token, cluster_id, 0)
        assert lines == [said], (lines, told, srv.output()[-3000:])
    assert [c[1] for c in calls_of(calls, "pull")] == ["registry.example.com/team/default:2"]


def test_an_image_that_cannot_be_pulled_fails_the_experiment_failed_image_pull(
    docker_server: Any,
) -> None:
    srv, calls = docker_server
    token = srv.token("acme")
    body = {"launch_file": launch("echo never"), "image": "registry.example.com/missing:1"}
    cluster_id = submit(srv, token, body)
    final = ended(srv, token, cluster_id, timeout=60)
    assert final["status"] == "FAILED" and final["reason"] == "FailedImagePull", final
    assert "image pull failed" in final["detail"] and "pull access denied" in final["detail"]
    assert calls_of(calls, "run") == []
    assert log_lines(srv, token, cluster_id, 0) == []
    wait_for(lambda: agent_processes(srv.state_dir) == [], timeout=15)
    assert live_node_tokens(srv, cluster_id) == 0  # revoked before FAILED was written


def live_node_tokens(srv: Any, cluster_id: str) -> int:
    from sqlalchemy import func, select

    from broker.state import tokens

    store = srv.broker().store
    query = select(func.count()).where(
        tokens.c.cluster_id == cluster_id, tokens.c.revoked_at.is_(None)
    )
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_a_bad_image_reference_is_refused_at_submit(docker_server: Any) -> None:
    srv, _ = docker_server
    token = srv.token("acme")
    for image, expected in (
        ("Registry.example.com/Team:1", "repository names are lower case"),
        ("ubuntu; rm -rf /", "is not a container image reference"),
    ):
        reply = srv.call(
            "/v1/clusters", "POST", token=token, body={"launch_file": launch("x"), "image": image}
        )
        assert reply.status == 422, reply.body
        assert expected in reply.body.decode()
    reply = srv.call("/v1/clusters", "POST", token=token, body={"gpus": 4, "image": "ubuntu"})
    assert reply.status == 422 and "give launch_file too" in reply.body.decode()
