"""The console shows credits and run-time limits where people look: the Experiments page opens
with the organisation's credits (left, spent, burn rate, time left at that rate; no grant
says so; never another organisation's), and the list and an experiment's page show the time
left before ``max_hours``, counted from the current cycle's RUNNING, down with the clock.
Plain HTTP against the real app over a real store; the clock only moves when a test says."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from broker.api import Broker
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.server.app import create_app
from broker.server.console import age, money
from broker.server.service import Service, ServiceOptions
from broker.state import ClusterRecord
from broker.views import when
from shapes.catalog import load_bundled_catalog

CATALOG = load_bundled_catalog()
T0 = 1_700_000_000.0
HOUR = 3600.0
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
CREDITS = re.compile(r'<section id="credits"[^>]*>.*?</section>', re.S)


class Console:
    """The app over a fresh store whose clock only moves when a test says so."""

    def __init__(self, tmp_path: Path) -> None:
        self.now = [T0]
        self.broker = Broker(
            state_dir=tmp_path / "state",
            backend="sim",
            catalog=CATALOG,
            clock=lambda: self.now[0],
            sleep=lambda _s: None,
        )
        self.app = create_app(Service(self.broker, ServiceOptions(workers=0, reconcile_every=0)))
        self.browsers: list[TestClient] = []

    def advance(self, hours: float) -> None:
        self.now[0] += hours * HOUR

    def signed_in(self, org: str) -> TestClient:
        browser = TestClient(self.app, follow_redirects=False)
        self.browsers.append(browser)
        form = browser.get("/signin")
        csrf = CSRF_FIELD.search(form.text)
        assert csrf, form.text
        token = self.broker.create_token(org, name="t")[0]
        reply = browser.post("/signin", data={"token": token, "csrf": csrf.group(1)})
        assert reply.status_code == 303, reply.text
        return browser

    def running(
        self, org: str, gpus: int = 16, max_hours: float | None = None, name: str | None = None
    ) -> ClusterRecord:
        experiment: dict[str, Any] = {"command": "python train.py"}
        if max_hours is not None:
            experiment["max_hours"] = max_hours
        request = QuoteRequest(rank=RankRequest(gpus=gpus), experiment_name=name)
        cluster = self.broker.scoped(org).provision(request, experiment=experiment)
        assert cluster.status.value == "RUNNING" and cluster.price_per_hour
        return cluster


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    made = Console(tmp_path)
    yield made
    for browser in made.browsers:
        browser.close()


def page(browser: TestClient, path: str) -> str:
    reply = browser.get(path)
    assert reply.status_code == 200, reply.text
    return str(reply.text)


def text(fragment: str) -> str:
    """What a person reads: tags dropped, entities decoded, whitespace folded."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())


def credits_box(browser: TestClient) -> str:
    found = CREDITS.search(page(browser, "/experiments"))
    assert found, "no credits summary on the Experiments page"
    return found.group(0)


def row_of(listing: str, cluster_id: str) -> str:
    rows = [r for r in re.findall(r"<tr>.*?</tr>", listing, re.S) if cluster_id in r]
    assert len(rows) == 1, cluster_id
    return text(rows[0])


def time_left_on_its_page(browser: TestClient, cluster_id: str) -> str:
    found = re.search(
        r'<dd id="time-left">(.*?)</dd>', page(browser, f"/experiments/{cluster_id}"), re.S
    )
    assert found
    return text(found.group(1))


def price(cluster: ClusterRecord) -> float:
    assert cluster.price_per_hour is not None
    return cluster.price_per_hour


# -- credits ------------------------------------------------------------------------------------


def test_the_experiments_page_shows_credits_left_burn_rate_and_time_at_that_rate(
    console: Console,
) -> None:
    browser = console.signed_in("acme")
    console.broker.set_credits("acme", 100)
    cluster = console.running("acme")
    p = price(cluster)
    console.advance(2)
    box = credits_box(browser)
    left = 100 - 2 * p
    assert text(box) == (
        f"Credits: {money(left)} left of $100.00 granted ({money(2 * p)} spent). "
        f"Burn rate {money(p)}/h: about {age(left / p * HOUR)} left at this rate."
    )
    assert 'class="panel credits-ok"' in box and "role=" not in box

    console.advance(3)  # the countdown follows the clock
    later = text(credits_box(browser))
    assert f"{money(100 - 5 * p)} left" in later
    assert f"about {age((100 - 5 * p) / p * HOUR)} left at this rate" in later


def test_another_organisations_credits_are_never_shown(console: Console) -> None:
    acme = console.signed_in("acme")
    globex = console.signed_in("globex")
    console.broker.set_credits("globex", 777.77)
    theirs = console.running("globex", gpus=8)
    console.advance(1)
    listing = page(acme, "/experiments")
    assert "777.77" not in listing and "globex" not in listing
    assert f"{money(price(theirs))}/h" not in listing
    assert text(credits_box(acme)).startswith("Credits: none granted to acme")
    theirs_box = text(credits_box(globex))
    assert f"{money(777.77 - price(theirs))} left of $777.77 granted" in theirs_box


def test_no_grant_says_so_and_shows_only_the_burn_rate(console: Console) -> None:
    browser = console.signed_in("acme")
    cluster = console.running("acme")
    console.advance(4)
    box = text(credits_box(browser))
    assert box == (
        f"Credits: none granted to acme, so no spending limit. Burn rate {money(price(cluster))}/h."
    )


def test_a_zero_burn_rate_gives_no_time_left(console: Console) -> None:
    browser = console.signed_in("acme")
    console.broker.set_credits("acme", 50)
    cluster = console.running("acme")
    console.advance(1)
    console.broker.scoped("acme").release(cluster.id)
    console.advance(6)
    box = text(credits_box(browser))
    assert box == (
        f"Credits: {money(50 - price(cluster))} left of $50.00 granted "
        f"({money(price(cluster))} spent). Burn rate $0.00/h (nothing starting or running)."
    )


def test_low_and_exhausted_credits_are_shown_loudly(console: Console) -> None:
    browser = console.signed_in("acme")
    cluster = console.running("acme")
    p = price(cluster)
    console.broker.set_credits("acme", p * 1.5)  # an hour and a half at this rate
    console.advance(1)
    low = credits_box(browser)
    assert 'class="warning credits-low"' in low and 'role="alert"' in low
    assert f"about {age(0.5 * HOUR)} left at this rate" in text(low)
    console.advance(1)  # spent past the grant before the service stops it
    gone = credits_box(browser)
    assert 'class="errors credits-exhausted"' in gone and 'role="alert"' in gone
    assert text(gone).startswith(
        f"Credits exhausted: nothing left ({money(2 * p)} spent of {money(1.5 * p)} granted, "
        f"{money(0.5 * p)} over). New experiments are refused and live ones are stopped."
    )


# -- run-time limits ----------------------------------------------------------------------------


def test_the_time_left_counts_down_with_the_clock_and_is_absent_without_max_hours(
    console: Console,
) -> None:
    browser = console.signed_in("acme")
    limited = console.running("acme", max_hours=2, name="limited")
    unlimited = console.running("acme", name="unlimited")
    listing = page(browser, "/experiments")
    assert "Time left" in listing
    assert row_of(listing, limited.id).endswith("2 h left")
    assert row_of(listing, unlimited.id).endswith("no limit")
    assert f"stopped at {when(T0 + 2 * HOUR)}" in listing

    console.advance(0.5)
    assert row_of(page(browser, "/experiments"), limited.id).endswith("1 h 30 min left")
    assert time_left_on_its_page(browser, limited.id) == "1 h 30 min left"
    assert time_left_on_its_page(browser, unlimited.id) == "no limit"
    console.advance(1.49)
    assert time_left_on_its_page(browser, limited.id) == "36 s left"
    console.advance(0.02)  # past the limit: the service's watch loop is stopping it
    assert time_left_on_its_page(browser, limited.id) == "limit reached: stopping"
    assert row_of(page(browser, "/experiments"), unlimited.id).endswith("no limit")


def test_the_time_left_is_per_cycle(console: Console) -> None:
    browser = console.signed_in("acme")
    scoped = console.broker.scoped("acme")
    request = QuoteRequest(rank=RankRequest(gpus=16))
    waiting = scoped.submit(request, experiment={"command": "x", "max_hours": 1.5})
    assert time_left_on_its_page(browser, waiting.id) == "1 h 30 min once RUNNING"
    scoped.run(waiting.id)
    console.advance(1)
    assert time_left_on_its_page(browser, waiting.id) == "30 min left"
    scoped.stop(waiting.id)
    assert time_left_on_its_page(browser, waiting.id) == "cycle over"
    console.advance(5)
    again = scoped.restart(waiting.id)  # the next cycle has the whole limit again
    assert again.cycle == 2
    console.advance(0.25)
    assert time_left_on_its_page(browser, waiting.id) == "1 h 15 min left"
    assert row_of(page(browser, "/experiments"), waiting.id).endswith("1 h 15 min left")
