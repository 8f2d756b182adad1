"""Organisation credits: spend since the grant is describe's accounting, clipped at the grant;
grants are checked; the local broker (no organisation) is never limited."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from broker.api import Broker, accrue
from broker.errors import CreditsExhausted, InvalidRequest
from broker.lifecycle import Status
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.state import TransitionRecord
from tests.conftest import run_broker


def t(status: Status, at: float, price: float | None = None) -> TransitionRecord:
    return TransitionRecord(1, status, at, None, None, price, 8 if price else None)


def test_spend_since_a_grant_counts_only_what_ran_after_it() -> None:
    history = [
        t(Status.PENDING, 0),
        t(Status.STARTING, 0, 10.0),
        t(Status.RUNNING, 1800, 10.0),  # $10/h from 0 s
        t(Status.TERMINATING, 7200, 10.0),
        t(Status.COMPLETED, 9000),
    ]
    assert accrue(history, 10_000).cost == pytest.approx(25.0)  # 2.5 h
    assert accrue(history, 10_000, since=5400).cost == pytest.approx(10.0)  # the last hour
    assert accrue(history, 10_000, since=9500).cost == 0.0


def test_grants_are_checked_and_a_scoped_broker_is_refused_with_the_numbers(
    tmp_path: Path,
) -> None:
    local = Broker(state_dir=tmp_path, backend="sim")
    with pytest.raises(InvalidRequest, match="must be >= 0"):
        local.set_credits("acme", -1)
    with pytest.raises(InvalidRequest, match="must be a number"):
        local.set_credits("acme", float("nan"))
    local.set_credits("acme", 0.01)
    request = QuoteRequest(rank=RankRequest(gpus=8))
    assert local.submit(request).org is None  # no organisation: no credits to check
    acme = local.scoped("acme")
    with pytest.raises(CreditsExhausted) as caught:
        acme.submit(request)
    assert "organisation 'acme' has $0.01 of credits left ($0.01 granted, $0.00 spent)" in str(
        caught.value
    )
    assert caught.value.exit_code == 8 and caught.value.http_status == 402
    local.set_credits("acme", 1000)
    assert acme.submit(request).org == "acme"
    (status,) = acme.credit_status()
    assert status.granted == 1000 and status.remaining == 1000 and status.hours_left is None


def test_credits_show_says_what_is_left_and_never_a_negative_amount(tmp_path: Path) -> None:
    """`broker credits show`: the table, --json with the true (negative) figure, and an
    overspent grant (the service stops it within a pass) as 0 and how much over."""
    env = {"BROKER_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    acme = Broker(state_dir=tmp_path, backend="sim", org="acme")
    acme.provision(QuoteRequest(rank=RankRequest(gpus=8)))  # RUNNING: spending from now on
    done = run_broker(env, "credits", "set", "--org", "acme", "--usd", "1000")
    assert done.returncode == 0, done.stderr
    shown = run_broker(env, "credits", "show", "--org", "acme")
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()[:2]
    assert header.split()[:4] == ["ORG", "GRANTED", "SPENT", "LEFT"]
    assert row.split()[:2] == ["acme", "$1,000.00"] and "over" not in row
    assert run_broker(env, "credits", "set", "--org", "acme", "--usd", "0.000001").returncode == 0
    time.sleep(0.5)  # a running gang of GPUs spends more than that in half a second
    over = run_broker(env, "credits", "show", "--org", "acme")
    row = over.stdout.splitlines()[1]
    assert " 0 ($" in row and " over)" in row and "$-" not in row, over.stdout
    doc = json.loads(run_broker(env, "credits", "show", "--org", "acme", "--json").stdout)
    assert doc["credits"][0]["remaining_usd"] < 0  # machines get the true figure
