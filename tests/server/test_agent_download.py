"""``GET /v1/agent/agent.py``: the service serves the node agent to node tokens only, the exact
bytes whose SHA-256 its boot scripts pin; and a boot script downloads it from a real
``broker serve`` and starts it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.agent.bootstrap import AGENT_ROUTE, bootstrap_script, packaged_agent, pinned_agent
from broker.api import Broker
from broker.server.app import create_app
from broker.server.service import Service, ServiceOptions
from broker.tokens import create_node_token
from shapes.catalog import load_bundled_catalog
from tests.agent.bootrun import CLUSTER, agent_argv, run, script_for
from tests.server.conftest import BrokerServer

PACKAGED = Path(__file__).resolve().parents[2] / "broker" / "agent" / "agent.py"
LAUNCH_FILE = (
    'isc_project_id = "p"\nexperiment_name = "e"\ngpus = 8\n'
    'compute_mode = "burst"\ncommand = "echo hello"\n'
)


class World:
    """A service in-process (no workers: the cluster stays PENDING), a user token and the
    node token of one submitted cluster."""

    def __init__(self, tmp_path: Path) -> None:
        self.broker = Broker(
            state_dir=tmp_path / "state", backend="sim", catalog=load_bundled_catalog()
        )
        self.service = Service(self.broker, ServiceOptions(workers=0, reconcile_every=0))
        self.client = TestClient(create_app(self.service, console=False))
        self.user = self.broker.create_token("acme", name="u")[0]
        reply = self.client.post(
            "/v1/clusters",
            json={"launch_file": LAUNCH_FILE, "provisioning": "on-demand"},
            headers={"Authorization": f"Bearer {self.user}"},
        )
        assert reply.status_code == 202, reply.text
        self.cluster_id: str = reply.json()["cluster_id"]
        self.node = self.new_node_token()

    def new_node_token(self) -> str:
        return create_node_token(self.broker.store, self.cluster_id, "acme", now=time.time())[0]

    def get(self, token: str | None) -> tuple[int, bytes, dict[str, str]]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        reply = self.client.get(AGENT_ROUTE, headers=headers)
        return reply.status_code, reply.content, dict(reply.headers)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    with made.client:
        yield made


def test_a_node_token_gets_the_exact_packaged_agent(world: World) -> None:
    status, body, headers = world.get(world.node)

    assert status == 200
    assert body == packaged_agent() == PACKAGED.read_bytes()
    assert headers["content-type"].split(";")[0] == "text/x-python"
    digest = hashlib.sha256(body).hexdigest()
    assert headers["x-agent-sha256"] == digest
    assert headers["etag"] == f'"{digest}"'
    assert int(headers["content-length"]) == len(body)


def test_the_served_agent_is_the_one_every_boot_script_pins(world: World) -> None:
    script = bootstrap_script(
        service_url="http://10.0.0.5:8080", cluster_id=world.cluster_id, node_token=world.node
    )
    _, body, headers = world.get(world.node)
    assert pinned_agent(script) == headers["x-agent-sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("who", ["user", "none", "malformed", "earlier node token"])
def test_anything_but_a_live_node_token_gets_401(world: World, who: str) -> None:
    token = {
        "user": world.user,
        "none": None,
        "malformed": "bbn_not a token",
        "earlier node token": world.node,
    }[who]
    if who == "earlier node token":
        world.new_node_token()  # a new cycle's token: the earlier one is revoked

    status, body, headers = world.get(token)

    assert status == 401
    assert b"node token" in body and b"print(" not in body  # an error, not the code
    assert "x-agent-sha256" not in headers


def test_a_node_token_still_cannot_call_user_endpoints(world: World) -> None:
    reply = world.client.get("/v1/clusters", headers={"Authorization": f"Bearer {world.node}"})
    assert reply.status_code == 401


def test_only_get_is_served(world: World) -> None:
    reply = world.client.post(
        AGENT_ROUTE, content=b"x", headers={"Authorization": f"Bearer {world.node}"}
    )
    assert reply.status_code == 405


def test_a_boot_script_downloads_the_agent_from_a_real_service(
    server: BrokerServer, tmp_path: Path
) -> None:
    """`broker serve` on loopback, a node token on its store: the script (with a stand-in
    python that records how the agent is started) gets the packaged agent with the token,
    checks it against its pin and starts it; with another token it is refused."""
    token = create_node_token(server.broker().store, CLUSTER, "acme", now=time.time())[0]
    node = tmp_path / "node"
    text = script_for(node, service_url=server.url, agent_source=None, node_token=token)

    booted = run(text, node)

    assert booted.result.returncode == 0, booted.result.stderr + booted.log
    assert (booted.install_dir / "agent.py").read_bytes() == PACKAGED.read_bytes()
    (call,) = booted.calls
    assert call.argv[1:] == agent_argv(booted.install_dir, service=server.url)
    assert "downloaded the agent" in booted.log and token not in booted.log

    stranger = tmp_path / "stranger"
    refused = run(
        script_for(
            stranger, service_url=server.url, agent_source=None, node_token="bbn_" + "x" * 43
        ),
        stranger,
        expect_calls=0,
    )
    assert refused.result.returncode == 1 and refused.calls == []
    assert f"{server.url}{AGENT_ROUTE} answered HTTP 401 Unauthorized" in refused.log
    assert "x" * 43 not in refused.log  # the token never
