"""A cycle's node token lives exactly as long as its gang can use it: one whose gang never
came up (no capacity anywhere) is revoked with the failure, not left live."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from broker.api import Broker
from broker.errors import ProvisionFailed
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.state import Store, tokens
from shapes.catalog import load_bundled_catalog


def live_node_tokens(store: Store, cluster_id: str) -> int:
    query = select(func.count()).where(
        tokens.c.cluster_id == cluster_id, tokens.c.revoked_at.is_(None)
    )
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_a_gang_that_never_came_up_leaves_no_live_token(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text("[default]\ncapacity_nodes = 0\n")  # no capacity anywhere
    broker = Broker(
        state_dir=tmp_path / "state",
        backend="sim",
        catalog=load_bundled_catalog(),
        sim_scenario=scenario,
        service_url="http://127.0.0.1:9",  # nodes would run the command: a token is made
    )
    shape = "aws:us-east-1:g5.12xlarge:on-demand"  # one shape: a few zones to try
    request = QuoteRequest(rank=RankRequest(gpus=8, priority=(shape,)))
    cluster = broker.submit(request, experiment={"command": "echo hi"})
    with pytest.raises(ProvisionFailed):
        broker.run(cluster.id)
    assert broker.get(cluster.id).reason == "NoCapacity"
    with broker.store.engine.connect() as conn:  # a token was made for the cycle...
        made = conn.execute(select(func.count()).where(tokens.c.cluster_id == cluster.id))
        assert made.scalar_one() == 1
    assert live_node_tokens(broker.store, cluster.id) == 0  # ...and went with the failure
