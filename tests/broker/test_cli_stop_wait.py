"""`broker stop` / `release` wait for a cluster being wound down to end (the service answers
TERMINATING when a final sync takes a while), asking the stop again now and then so that a
wind-down whose owner died is taken over; a fake clock, no sleeping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from broker.cli import clusters
from broker.lifecycle import Status
from broker.state import Store


def test_the_wait_polls_until_the_end_and_nudges_every_30_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store.open(tmp_path / "state")
    terminating = store.create_cluster("bb-1", request={}, experiment=None, backend="sim", now=0)
    terminating = dataclasses.replace(terminating, status=Status.TERMINATING)
    now = [0.0]
    gets: list[str] = []
    ends: list[str] = []

    def get(cid: str) -> object:
        gets.append(cid)
        done = now[0] >= 75
        return dataclasses.replace(
            terminating, status=Status.STOPPED if done else Status.TERMINATING
        )

    def end(cid: str) -> object:
        ends.append(cid)
        return dataclasses.replace(terminating, status=Status.TERMINATING)

    def sleep(seconds: float) -> None:
        now[0] += seconds

    final = clusters.wait_ended(
        terminating,
        get,
        end,
        clock=lambda: now[0],
        sleep=sleep,  # type: ignore[arg-type]
    )
    assert final.status is Status.STOPPED and now[0] == 75
    assert ends == ["bb-1", "bb-1"]  # at 30 s and 60 s: asked again, the rest were looks
    assert len(gets) == 75 - 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("bb-1 TERMINATING: its commands stop")
    assert err[1:] == ["  still TERMINATING after 30 s", "  still TERMINATING after 60 s"]


def test_an_ended_cluster_is_not_waited_for(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state")
    cluster = store.create_cluster("bb-2", request={}, experiment=None, backend="sim", now=0)
    stopped = dataclasses.replace(cluster, status=Status.STOPPED)

    def never(_cid: str) -> object:
        raise AssertionError("called")

    assert clusters.wait_ended(stopped, never, never, sleep=never) is stopped  # type: ignore[arg-type]
