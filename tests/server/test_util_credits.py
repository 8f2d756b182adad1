"""``GET /v1/util``, ``broker util`` and the client show the organisation's credits: granted,
spent, left, the burn rate of its live clusters and the hours left at that rate; no grant
says so with no figures; another organisation's credits are never shown; an unscoped (local)
broker lists every organisation, bounded. In-process over a real store with a fake clock;
one real ``broker serve`` for the client and the remote CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from broker.api import Broker
from broker.cli import main
from broker.cli.clusters import credits_line
from broker.client import Client
from broker.credits import CreditsSummary, OrgCredits, util_credits
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.server.app import create_app
from broker.server.service import Service, ServiceOptions
from broker.state import ClusterRecord
from shapes.catalog import load_bundled_catalog
from tests.server.conftest import BrokerServer

CATALOG = load_bundled_catalog()
T0 = 1_700_000_000.0
HOUR = 3600.0


class Util:
    """The API over a fresh store whose clock only moves when a test says so."""

    def __init__(self, state_dir: Path, start: float = T0) -> None:
        self.now = [start]
        self.broker = Broker(
            state_dir=state_dir,
            backend="sim",
            catalog=CATALOG,
            clock=lambda: self.now[0],
            sleep=lambda _s: None,
        )
        self.service = Service(self.broker, ServiceOptions(workers=0, reconcile_every=0))
        self.client = TestClient(create_app(self.service, console=False))

    def advance(self, hours: float) -> None:
        self.now[0] += hours * HOUR

    def token(self, org: str) -> str:
        return self.broker.create_token(org, name="t")[0]

    def running(self, org: str, gpus: int = 16) -> ClusterRecord:
        cluster = self.broker.scoped(org).provision(QuoteRequest(rank=RankRequest(gpus=gpus)))
        assert cluster.status.value == "RUNNING" and cluster.price_per_hour
        return cluster

    def get(self, path: str, token: str) -> Any:
        reply = self.client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 200, reply.text
        return reply.json()

    def credits(self, token: str) -> list[dict[str, Any]]:
        doc = self.get("/v1/util", token)
        assert doc["credits_more"] == 0
        return list(doc["credits"])


@pytest.fixture
def util(tmp_path: Path) -> Iterator[Util]:
    made = Util(tmp_path / "state")
    yield made
    made.client.close()


def price(cluster: ClusterRecord) -> float:
    assert cluster.price_per_hour is not None
    return cluster.price_per_hour


def test_the_grant_spend_burn_rate_and_hours_left_follow_the_clock(util: Util) -> None:
    token = util.token("acme")
    util.broker.set_credits("acme", 100)
    big, small = util.running("acme", gpus=16), util.running("acme", gpus=8)
    burn = price(big) + price(small)
    assert price(big) != price(small)
    util.advance(2)
    doc = util.get("/v1/util", token)
    (acme,) = doc["credits"]
    assert acme == {
        "org": "acme",
        "has_grant": True,
        "granted_usd": 100.0,
        "spent_usd": pytest.approx(2 * burn),
        "remaining_usd": pytest.approx(100 - 2 * burn),
        "burn_per_hour": pytest.approx(burn),
        "hours_left": pytest.approx((100 - 2 * burn) / burn),
    }
    # The same burn as the providers' spend per hour, the same figures as /v1/credits.
    assert sum(r["spend_per_hour"] for r in doc["providers"].values()) == pytest.approx(burn)
    same = util.get("/v1/credits", token)["credits"]
    assert same["spent_usd"] == pytest.approx(acme["spent_usd"])
    assert same["hours_left"] == pytest.approx(acme["hours_left"])

    util.broker.scoped("acme").stop(small.id)  # it stops burning; what it spent stays
    util.advance(1)
    (acme,) = util.credits(token)
    assert acme["burn_per_hour"] == pytest.approx(price(big))
    assert acme["spent_usd"] == pytest.approx(2 * burn + price(big))
    assert acme["hours_left"] == pytest.approx((100 - 2 * burn - price(big)) / price(big))


def test_another_organisations_credits_are_never_shown(util: Util) -> None:
    acme, globex = util.token("acme"), util.token("globex")
    util.broker.set_credits("acme", 100)
    util.broker.set_credits("globex", 777.77)
    ours, theirs = util.running("acme", gpus=16), util.running("globex", gpus=8)
    util.advance(1)
    reply = util.client.get("/v1/util", headers={"Authorization": f"Bearer {acme}"})
    assert "globex" not in reply.text and "777" not in reply.text
    (mine,) = reply.json()["credits"]
    assert mine["org"] == "acme" and mine["burn_per_hour"] == pytest.approx(price(ours))
    (other,) = util.credits(globex)
    assert other["org"] == "globex" and other["granted_usd"] == 777.77
    assert other["spent_usd"] == pytest.approx(price(theirs))
    assert other["burn_per_hour"] == pytest.approx(price(theirs))


def test_no_grant_says_so_and_makes_up_no_figure(util: Util) -> None:
    token = util.token("acme")
    (idle,) = util.credits(token)
    assert idle == {
        "org": "acme",
        "has_grant": False,
        "granted_usd": None,
        "spent_usd": None,
        "remaining_usd": None,
        "burn_per_hour": 0.0,
        "hours_left": None,
    }
    cluster = util.running("acme")
    util.advance(3)
    (busy,) = util.credits(token)
    assert busy["has_grant"] is False and busy["burn_per_hour"] == pytest.approx(price(cluster))
    assert [busy[k] for k in ("granted_usd", "spent_usd", "remaining_usd", "hours_left")] == [
        None
    ] * 4
    line = credits_line(busy)
    assert line == f"credits: acme has no grant (no limit); burning ${price(cluster):,.2f}/h"


def test_nothing_burning_leaves_hours_left_null(util: Util) -> None:
    token = util.token("acme")
    util.broker.set_credits("acme", 50)
    cluster = util.running("acme")
    util.advance(1.5)
    util.broker.scoped("acme").release(cluster.id)
    util.advance(5)  # a finished cluster costs nothing more
    (acme,) = util.credits(token)
    assert acme["burn_per_hour"] == 0.0 and acme["hours_left"] is None
    assert acme["spent_usd"] == pytest.approx(1.5 * price(cluster))
    assert acme["remaining_usd"] == pytest.approx(50 - 1.5 * price(cluster))
    assert credits_line(acme).endswith("spent); nothing burning now")


def test_credits_spent_past_the_grant_leave_zero_hours(util: Util) -> None:
    token = util.token("acme")
    cluster = util.running("acme")
    util.broker.set_credits("acme", 1)  # granted while it runs
    util.advance(10)
    (acme,) = util.credits(token)
    assert acme["spent_usd"] == pytest.approx(10 * price(cluster))
    assert acme["remaining_usd"] == pytest.approx(1 - 10 * price(cluster))
    assert acme["remaining_usd"] < 0  # spent past zero before the service stopped it
    assert acme["hours_left"] == 0.0
    assert credits_line(acme).startswith(
        f"credits: acme has none left (${10 * price(cluster):,.2f} spent of $1.00)"
    )


def test_an_unscoped_broker_lists_every_organisation_burning_first_and_bounded(
    util: Util,
) -> None:
    for org in ("umbrella", "globex", "acme"):
        util.broker.set_credits(org, 100)
    acme, initech = util.running("acme"), util.running("initech", gpus=8)  # initech: no grant
    util.advance(1)
    store, now = util.broker.store, util.now[0]
    everyone = util.broker.util_credits()
    assert [c.org for c in everyone.orgs] == ["acme", "initech", "globex", "umbrella"]
    assert everyone.more == 0
    by_org = {c.org: c for c in everyone.orgs}
    assert by_org["acme"].burn_per_hour == pytest.approx(price(acme))
    assert by_org["initech"].burn_per_hour == pytest.approx(price(initech))
    assert not by_org["initech"].has_grant and by_org["initech"].remaining is None
    assert by_org["globex"] == OrgCredits("globex", 0.0, 100.0, 0.0)
    bounded = util_credits(store, None, now, limit=2)
    assert [c.org for c in bounded.orgs] == ["acme", "initech"] and bounded.more == 2
    assert util_credits(store, None, now, limit=0) == CreditsSummary((), 4)


def test_a_credits_line_survives_json_both_ways() -> None:
    for line in (OrgCredits("acme", 2.5, 100.0, 12.25), OrgCredits("acme", 0.0)):
        assert OrgCredits.from_json_dict(line.to_json_dict()) == line


def test_broker_util_prints_every_organisations_credits_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("BROKER_STATE_DIR", str(state))
    monkeypatch.delenv("BROKER_URL", raising=False)
    monkeypatch.delenv("BROKER_TOKEN", raising=False)
    past = Util(state, start=time.time() - 3 * HOUR)  # what ran did so in the past: exact
    past.broker.set_credits("acme", 100)
    finished = past.running("acme")
    past.advance(2)
    past.broker.scoped("acme").release(finished.id)
    live = past.running("initech", gpus=8)
    past.client.close()

    assert main(["util", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    initech, acme = doc["credits"]  # burning first
    assert acme["org"] == "acme" and acme["spent_usd"] == pytest.approx(2 * price(finished))
    assert acme["burn_per_hour"] == 0.0 and acme["hours_left"] is None
    assert initech["org"] == "initech" and initech["has_grant"] is False
    assert initech["burn_per_hour"] == pytest.approx(price(live))
    assert doc["credits_more"] == 0
    assert sum(r["spend_per_hour"] for r in doc["providers"].values()) == pytest.approx(price(live))

    assert main(["util"]) == 0
    out = capsys.readouterr().out
    spent = 2 * price(finished)
    assert (
        f"credits: acme has ${100 - spent:,.2f} left of $100.00 (${spent:,.2f} spent); "
        "nothing burning now\n" in out
    )
    assert f"credits: initech has no grant (no limit); burning ${price(live):,.2f}/h\n" in out
    assert out.index("GPUS RUNNING") < out.index("credits: initech") < out.index("credits: acme")


def test_the_client_and_the_remote_cli_read_the_organisations_credits(
    server: BrokerServer,
) -> None:
    token = server.token("acme")
    server.token("globex")
    broker = server.broker()
    broker.set_credits("acme", 50)
    broker.set_credits("globex", 9)
    client = Client(server.url, token)
    assert client.util_credits() == CreditsSummary((OrgCredits("acme", 0.0, 50.0, 0.0),), 0)
    assert client.util() == {}
    env = dict(server.env, BROKER_URL=server.url, BROKER_TOKEN=token)
    proc = subprocess.run(
        [sys.executable, "-m", "broker.cli", "util"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=os.getcwd(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "no cluster is starting or running\n"
        "credits: acme has $50.00 left of $50.00 ($0.00 spent); nothing burning now\n"
    )
    assert token not in proc.stdout + proc.stderr
