"""The provisioner and Broker against the simulated cloud: fallback, partial gangs, cleanup,
deadlines, blocked scopes, restart, accounting, node environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from broker.api import Broker, accrue
from broker.env import export_lines
from broker.errors import CleanupFailed, ConflictError, EnvError, ProvisionFailed
from broker.lifecycle import Status
from broker.provisioner import ProvisionPolicy
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.settings import Settings
from providers.sim import SimProvider
from shapes.catalog import load_bundled_catalog
from tests.conftest import FakeClock, bundled_shape_id

CATALOG = load_bundled_catalog()


# Four shapes on three providers; A and B are on one provider in two regions.
A = bundled_shape_id("aws", "us-east-1")
B = bundled_shape_id("aws", "us-west-2")
C = bundled_shape_id("gcp", min_zones=2)
D = bundled_shape_id("azure", min_zones=1)
PRIORITY = (A, B, C, D)


def scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


# Tests marked so run on SQLite and on PostgreSQL (tests/conftest.py: store_backend_env
# exports the PostgreSQL store's URL as BROKER_STATE_URL; unset, the store is SQLite).
both_stores = pytest.mark.usefixtures("store_backend_env")


def make_broker(
    tmp_path: Path, text: str = "", clock: FakeClock | None = None, **policy: float
) -> Broker:
    clock = clock or FakeClock()
    return Broker(
        state_dir=tmp_path / "state",
        store_url=os.environ.get("BROKER_STATE_URL"),
        backend="sim",
        sim_scenario=scenario(tmp_path, text),
        catalog=CATALOG,
        policy=ProvisionPolicy(**policy),  # type: ignore[arg-type]
        clock=clock,
        sleep=clock.sleep,
    )


def request(gpus: int = 16, priority: tuple[str, ...] | None = PRIORITY) -> QuoteRequest:
    return QuoteRequest(rank=RankRequest(gpus=gpus, priority=priority))


def alive(broker: Broker) -> list[str]:
    sim = broker.provider("sim")
    assert isinstance(sim, SimProvider)
    return sorted(n.provider_id for n in sim.all_nodes())


def stocked_out(*shape_ids: str) -> str:
    return "".join(f'[shapes."{s}"]\ncapacity_nodes = 0\n' for s in shape_ids)


# -- the fallback matrix: each error kind at each position ------------------------------------

KINDS = ["capacity", "quota", "throttle", "server_error", "timeout", "auth", "invalid"]


def expected_outcome(kind: str, pos: int) -> tuple[str | None, int]:
    """(shape that ends RUNNING or None for FAILED, zone index it runs in)."""
    if kind == "capacity":
        return PRIORITY[pos], 1  # next zone of the same shape
    if kind == "quota":
        return PRIORITY[pos + 1], 0  # next region
    if kind in ("throttle", "server_error", "timeout"):
        return PRIORITY[pos], 0  # retried in place
    if kind == "auth":
        provider = PRIORITY[pos].split(":")[0]
        rest = [s for s in PRIORITY[pos + 1 :] if not s.startswith(provider + ":")]
        return rest[0], 0  # every other shape of that provider skipped
    return None, 0  # invalid: the request fails at once


@pytest.mark.parametrize("pos", [0, 1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_fallback_matrix(tmp_path: Path, kind: str, pos: int) -> None:
    text = stocked_out(*PRIORITY[:pos]) + f'[shapes."{PRIORITY[pos]}"]\nerrors = ["{kind}"]\n'
    broker = make_broker(tmp_path, text)
    want_shape, want_zone = expected_outcome(kind, pos)
    if want_shape is None:
        with pytest.raises(ProvisionFailed) as failed:
            broker.provision(request())
        assert failed.value.cluster.status is Status.FAILED
        assert failed.value.cluster.reason == "InvalidRequest"
        assert failed.value.attempts[-1].shape_id == PRIORITY[pos]
        assert alive(broker) == []
        return
    cluster = broker.provision(request())
    assert cluster.status is Status.RUNNING
    assert cluster.shape_id == want_shape
    shape = CATALOG.get(want_shape)
    assert shape is not None
    assert cluster.zone == shape.zones[want_zone]
    attempts = broker.store.attempts(cluster.id)
    assert attempts[-1].outcome == "running"
    failed = [a for a in attempts if a.outcome != "running"]
    assert all(a.error_code for a in failed)  # every failed attempt says why
    if kind in ("throttle", "server_error", "timeout"):
        assert attempts[-1].retries == 1
        assert len(broker.sleep.__self__.slept) == 1  # type: ignore[attr-defined]
    assert len(alive(broker)) == cluster.nodes_count


def test_no_sleep_on_capacity_errors(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = make_broker(tmp_path, stocked_out(A, B), clock=clock)
    cluster = broker.provision(request())
    assert cluster.shape_id == C
    assert clock.slept == []
    codes = [a.error_code for a in broker.store.attempts(cluster.id)]
    assert codes[:-1] and set(codes[:-1]) == {"InsufficientCapacity"}


@both_stores
def test_everything_stocked_out_fails_no_capacity_with_every_attempt(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, stocked_out(*PRIORITY))
    with pytest.raises(ProvisionFailed) as failed:
        broker.provision(request())
    assert failed.value.cluster.reason == "NoCapacity"
    zones = sum(len(CATALOG.get(s).zones) for s in PRIORITY)  # type: ignore[union-attr]
    assert len(failed.value.attempts) == zones
    assert alive(broker) == []


@both_stores
def test_transient_errors_exhaust_then_next_zone(tmp_path: Path) -> None:
    broker = make_broker(
        tmp_path,
        f'[shapes."{A}"]\nerrors = ["throttle", "throttle", "throttle"]\n',
        retry_attempts=3,
    )
    cluster = broker.provision(request())
    first, second = broker.store.attempts(cluster.id)[:2]
    assert (first.outcome, first.error_code, first.retries) == ("failed", "Throttling", 2)
    assert second.outcome == "running" and second.shape_id == A and second.zone != first.zone


# -- partial gangs and cleanup ----------------------------------------------------------------


@both_stores
def test_partial_gang_is_terminated_before_moving_on(tmp_path: Path) -> None:
    text = f'[shapes."{A}"]\ncapacity_nodes = 1\npartial = true\n'
    broker = make_broker(tmp_path, text)
    cluster = broker.provision(request(16))  # 2 nodes of 8
    attempts = broker.store.attempts(cluster.id)
    partial = [a for a in attempts if a.outcome != "running" and a.nodes_created]
    assert partial and all(a.outcome == "cleaned" and a.nodes_cleaned == 1 for a in partial)
    assert cluster.shape_id == B
    assert len(alive(broker)) == 2  # only the running cluster's nodes


@both_stores
def test_cleanup_failure_stops_the_fallback_loudly(tmp_path: Path) -> None:
    text = (
        f'[shapes."{A}"]\ncapacity_nodes = 1\npartial = true\n'
        'terminate_errors = ["server_error", "server_error", "server_error", "server_error"]\n'
    )
    broker = make_broker(tmp_path, text)
    with pytest.raises(CleanupFailed) as failed:
        broker.provision(request(16))
    cluster = failed.value.cluster
    assert (cluster.status, cluster.reason) == (Status.FAILED, "CleanupFailed")
    assert "broker reconcile" in (cluster.detail or "")
    assert [a.outcome for a in failed.value.attempts] == ["leaked"]  # no further attempt
    assert len(alive(broker)) == 1
    report = broker.reconcile()  # the scripted terminate errors are used up now
    assert len(report.terminated) == 1 and alive(broker) == []


# -- deadlines, blocked scopes -----------------------------------------------------------------


def test_overall_deadline(tmp_path: Path) -> None:
    clock = FakeClock(step=10.0)
    broker = make_broker(tmp_path, stocked_out(*PRIORITY), clock=clock, timeout=60.0)
    with pytest.raises(ProvisionFailed) as failed:
        broker.provision(request())
    assert failed.value.cluster.reason == "Timeout"
    total_zones = sum(len(CATALOG.get(s).zones) for s in PRIORITY)  # type: ignore[union-attr]
    assert 0 < len(failed.value.attempts) < total_zones


@both_stores
def test_blocked_zone_is_skipped_until_it_expires(tmp_path: Path) -> None:
    clock = FakeClock()
    shape = CATALOG.get(A)
    assert shape is not None
    broker = make_broker(tmp_path, f'[shapes."{A}"]\nerrors = ["capacity"]\n', clock=clock)
    first = broker.provision(request(8, (A,)))
    assert first.zone == shape.zones[1]
    broker.release(first.id)
    second = broker.provision(request(8, (A,)))
    assert [a.zone for a in broker.store.attempts(second.id)] == [shape.zones[1]]  # skipped zone 0
    broker.release(second.id)
    clock.now += ProvisionPolicy().capacity_block + 1
    third = broker.provision(request(8, (A,)))
    assert third.zone == shape.zones[0]  # the block expired


@both_stores
def test_fully_blocked_shape_is_excluded_from_quotes_with_reason(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, stocked_out(A))
    broker.provision(request(8, (A, B)))
    quote = broker.quote(request(8, (A, B)))
    assert [p.shape.id for p in quote.plans] == [B]
    assert quote.ranking.excluded[0].shape_id == A
    assert "blocked" in quote.ranking.excluded[0].reason


# -- lifecycle, restart, accounting, env ---------------------------------------------------


@both_stores
def test_release_stop_restart_delete_and_history(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    cluster = broker.provision(request(16, (A,)))
    with pytest.raises(ConflictError):
        broker.delete(cluster.id)  # not terminal
    done = broker.release(cluster.id)
    assert done.status is Status.COMPLETED and alive(broker) == []
    again = broker.restart(cluster.id)
    assert again.status is Status.RUNNING and again.cycle == 2
    stopped = broker.stop(again.id)
    assert stopped.status is Status.STOPPED and alive(broker) == []
    history = [(t.cycle, t.status.value) for t in broker.store.transitions(cluster.id)]
    assert history == [
        (1, "PENDING"), (1, "QUEUED"), (1, "STARTING"), (1, "RUNNING"), (1, "TERMINATING"),
        (1, "COMPLETED"),
        (2, "PENDING"), (2, "QUEUED"), (2, "STARTING"), (2, "RUNNING"), (2, "TERMINATING"),
        (2, "STOPPED"),
    ]  # fmt: skip
    assert [a.cycle for a in broker.store.attempts(cluster.id)] == [1, 2]
    broker.delete(cluster.id)
    assert broker.list_clusters() == []


@both_stores
def test_stop_cancels_a_queued_cluster(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    c = broker.submit(request(8, (A,)))
    assert broker.stop(c.id).status is Status.STOPPED
    assert broker.release(c.id).status is Status.STOPPED  # finished: returned as it is


@both_stores
def test_accounting_from_starting_to_leaving_terminating(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = make_broker(tmp_path, clock=clock)
    cluster = broker.provision(request(16, (A,)))
    clock.now += 2 * 3600  # two hours running
    broker.release(cluster.id)
    report = broker.describe(cluster.id)
    assert cluster.price_per_hour is not None and cluster.gpus_billed == 16
    assert report.usage.gpu_hours == pytest.approx(2 * 16, rel=1e-6)
    assert report.usage.cost == pytest.approx(2 * cluster.price_per_hour, rel=1e-6)
    clock.now += 3600  # nothing accrues after COMPLETED
    assert broker.describe(cluster.id).usage == report.usage


def test_accrue_counts_failed_attempts_while_starting() -> None:
    from broker.state import TransitionRecord

    def t(
        status: str, at: float, price: float | None = None, gpus: int | None = None
    ) -> TransitionRecord:
        return TransitionRecord(
            cycle=1, status=Status(status), at=at, reason=None, detail=None,
            price_per_hour=price, gpus_billed=gpus,
        )  # fmt: skip

    history = [
        t("PENDING", 0), t("QUEUED", 0), t("STARTING", 0, 10.0, 8), t("QUEUED", 360, 10.0, 8),
        t("STARTING", 360, 20.0, 16), t("RUNNING", 720, 20.0, 16),
    ]  # fmt: skip
    usage = accrue(history, now=720 + 3600)
    assert usage.cost == pytest.approx(10.0 * 0.1 + 20.0 * 1.1)
    assert usage.gpu_hours == pytest.approx(8 * 0.1 + 16 * 1.1)


@pytest.mark.parametrize("gpus", [8, 24])
def test_node_environment(tmp_path: Path, gpus: int) -> None:
    broker = make_broker(tmp_path)
    cluster = broker.provision(request(gpus, (A,)))
    nnodes = gpus // 8
    nodes = sorted(cluster.nodes, key=lambda n: n.rank)
    mapping = {n.private_ip: n.rank for n in nodes}
    for rank in range(nnodes):
        env = broker.env(cluster.id, rank)
        assert env["NNODES"] == str(nnodes) and env["N_PROC"] == "8"
        assert int(env["NNODES"]) * int(env["N_PROC"]) == gpus
        assert env["NODE_RANK"] == str(rank)
        assert env["MASTER_ADDR"] == nodes[0].private_ip and env["MASTER_ADDR"].startswith("10.")
        assert env["MASTER_PORT"] == "29500"
        assert json.loads(env["IP_TO_RANK_MAPPING"]) == mapping
        assert env["STRONG_EXPERIMENT_ID"] == cluster.id
        assert env["STRONG_CYCLE_COUNT"] == "1"
        assert env["OUTPUT_PATH"] == env["CHECKPOINT_ARTIFACT_PATH"] == "/mnt/checkpoints"
        artifacts = [env[f"{k}_ARTIFACT_PATH"] for k in ("CRUD", "LOSSY", "LOG")]
        assert artifacts == ["/mnt/crud", "/mnt/lossy", "/mnt/logs"]
    assert "export NODE_RANK=0\n" in export_lines(broker.env(cluster.id, 0))
    with pytest.raises(EnvError, match=r"ranks 0\.\."):
        broker.env(cluster.id, nnodes)
    broker.release(cluster.id)
    with pytest.raises(EnvError, match="not RUNNING"):
        broker.env(cluster.id, 0)


def test_env_uses_launch_file_experiment(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    exp = {"experiment_name": "foo_experiment", "compute_mode": "burst"}
    cluster = broker.provision(request(8, (A,)), experiment=exp)
    env = broker.env(cluster.id, 0)
    assert env["STRONG_EXPERIMENT_NAME"] == "foo_experiment"
    assert env["STRONG_COMPUTE_MODE"] == "burst"


@both_stores
def test_util_counts_running_gpus_and_spend(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    one = broker.provision(request(16, (A,)))
    two = broker.provision(request(8, (C,)))
    util = broker.util()
    assert util["sim:aws"]["gpus_running"] == 16 and util["sim:gcp"]["gpus_running"] == 8
    assert util["sim:aws"]["spend_per_hour"] == pytest.approx(one.price_per_hour)
    broker.release(two.id)
    assert "sim:gcp" not in broker.util()


def test_reconcile_leaves_running_clusters_alone(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    cluster = broker.provision(request(16, (A,)))
    report = broker.reconcile()
    assert report.terminated == [] and report.settled == []
    assert len(alive(broker)) == 2 and broker.get(cluster.id).status is Status.RUNNING


@both_stores
def test_reconcile_terminates_untracked_tagged_nodes(tmp_path: Path) -> None:
    from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest

    broker = make_broker(tmp_path)
    sim = broker.provider("sim")
    shape = CATALOG.get(A)
    assert shape is not None
    tags = {TAG_BROKER: "default", TAG_CLUSTER: "bb-unknown", TAG_ATTEMPT: "c1-a1"}
    sim.launch(
        LaunchRequest(shape=shape, zone=shape.zones[0], count=2, token="stray-1", tags=tags),
        timeout=10,
    )
    assert len(alive(broker)) == 2
    report = broker.reconcile()
    assert len(report.terminated) == 2 and alive(broker) == []


def test_scenario_from_settings(tmp_path: Path) -> None:
    path = scenario(tmp_path, stocked_out(A))
    settings = Settings.from_env(
        {"BROKER_SIM_SCENARIO": str(path), "BROKER_STATE_DIR": str(tmp_path)}
    )
    broker = Broker(settings, backend="sim", catalog=CATALOG, sleep=lambda _s: None)
    assert broker.provision(request(8, (A, B))).shape_id == B


@both_stores
def test_reconcile_fails_a_gang_that_lost_a_node(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    cluster = broker.provision(request(24, (A,)))  # 3 nodes
    sim = broker.provider("sim")
    preempted = [
        n for n in sim.describe(cluster.id) if n.provider_id == cluster.nodes[1].provider_id
    ]
    sim.terminate(preempted)  # the cloud takes one node away
    report = broker.reconcile()
    assert report.lost == [cluster.id]
    failed = broker.get(cluster.id)
    assert (failed.status, failed.reason) == (Status.FAILED, "NodeLost")
    assert "rank 1" in (failed.detail or "")
    assert alive(broker) == []  # the other two nodes are useless without it: terminated
    assert broker.reconcile().lost == []


def test_reconcile_leaves_other_deployments_nodes_alone(tmp_path: Path) -> None:
    from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest

    broker = make_broker(tmp_path)
    shape = CATALOG.get(A)
    assert shape is not None
    tags = {TAG_BROKER: "another-team", TAG_CLUSTER: "bb-theirs", TAG_ATTEMPT: "c1-a1"}
    broker.provider("sim").launch(
        LaunchRequest(shape=shape, zone=shape.zones[0], count=1, token="t-1", tags=tags),
        timeout=10,
    )
    assert broker.reconcile().terminated == []
    assert len(alive(broker)) == 1


@both_stores
def test_quota_error_blocks_the_whole_aws_family_in_the_region(tmp_path: Path) -> None:
    from providers.clouds import quota_bucket

    p_types = [s for s in CATALOG.shapes if s.provider == "aws" and s.instance_type[0] == "p"]
    g_types = [s for s in CATALOG.shapes if s.provider == "aws" and s.instance_type[0] == "g"]
    assert {quota_bucket(s) for s in p_types} == {"family-p"}
    assert {quota_bucket(s) for s in g_types} == {"family-g"}
    same_region = [
        s for s in p_types if s.region == "us-east-1" and s.provisioning.value == "on-demand"
    ]
    first, second = same_region[0].id, same_region[1].id
    broker = make_broker(tmp_path, f'[shapes."{first}"]\nerrors = ["quota"]\n')
    cluster = broker.provision(request(8, (first, second, B)))
    assert cluster.shape_id == B  # the second P type in the region shares the exhausted quota
    assert [a.shape_id for a in broker.store.attempts(cluster.id)] == [first, B]


def test_shapes_outside_configured_regions_are_not_tried(tmp_path: Path) -> None:
    from providers.config import load_config

    config_file = tmp_path / "c.toml"
    config_file.write_text('[broker]\nproviders = ["aws"]\n[aws]\nregions = ["us-west-2"]\n')
    config = load_config(config_file, required=True)
    broker = Broker(state_dir=tmp_path / "s", catalog=CATALOG, config=config)
    quote = broker.quote(request(8, (A, B)))
    assert [p.shape.id for p in quote.plans] == [B]
    assert quote.ranking.excluded[0].reason == "region us-east-1 is not in [aws] regions"


def test_azure_quota_buckets_follow_vm_families_and_one_spot_bucket() -> None:
    from providers.clouds import azure_family, quota_bucket

    assert azure_family("Standard_NC24ads_A100_v4") == "ncads-a100-v4"
    assert azure_family("Standard_NC96ads_A100_v4") == "ncads-a100-v4"
    assert azure_family("Standard_NC6s_v3") == azure_family("Standard_NC24s_v3") == "ncs-v3"
    assert azure_family("Standard_NC24rs_v3") == "ncrs-v3"
    azure = [s for s in CATALOG.shapes if s.provider == "azure" and s.region == "westeurope"]
    spot = {quota_bucket(s) for s in azure if s.provisioning.value == "spot"}
    assert spot == {"low-priority-cores"}  # every Spot size shares lowPriorityCores
    on_demand = {s.instance_type: quota_bucket(s) for s in azure if s.provisioning.value != "spot"}
    assert on_demand["Standard_NC24ads_A100_v4"] == on_demand["Standard_NC48ads_A100_v4"]
    assert on_demand["Standard_NC24ads_A100_v4"] != on_demand["Standard_NC4as_T4_v3"]
