"""Quota-aware failover (issue 14, section 2): the provisioner knows the quota before asking
and skips the regions where the gang cannot fit, without a launch call.

End to end on the simulated cloud (its scenario's quota_vcpus / quota_gpus, enforced at
launch as the clouds do), with the real GCP client against the fake Compute server in real
`broker` processes, and the cache, `broker quotas` and `broker quote --explain`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.api import Broker
from broker.cli import main
from broker.errors import ProvisionFailed
from broker.lifecycle import Status
from broker.provisioner import ProvisionPolicy
from broker.quotas import QUOTA_TTL, QuotaGate, read_quota_rows_sqlite, reports_of, rows_of
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.settings import STATE_DB_FILENAME
from broker.views import skips_in
from providers.quotas import QuotaReport, QuotaUnit, ReportBuilder, needs
from providers.sim import SimProvider
from shapes.catalog import load_bundled_catalog
from tests.conftest import FakeClock, make_shape, run_broker
from tests.fakes.gcp import FakeServer
from tests.providers.gcp.conftest import cli_env

CATALOG = load_bundled_catalog()
EAST = "aws:us-east-1:p5.48xlarge:spot"  # 8 x H100, 192 vCPUs: 16 GPUs = 2 nodes, 384 vCPUs
WEST = "aws:us-west-2:p5.48xlarge:spot"
ROOT = Path(__file__).resolve().parents[2]


def make_broker(tmp_path: Path, scenario: str, clock: FakeClock | None = None) -> Broker:
    path = tmp_path / "scenario.toml"
    path.write_text(scenario)
    clock = clock or FakeClock()
    return Broker(
        state_dir=tmp_path / "state",
        backend="sim",
        sim_scenario=path,
        catalog=CATALOG,
        policy=ProvisionPolicy(),
        clock=clock,
        sleep=clock.sleep,
        progress=said.append,
    )


said: list[str] = []


@pytest.fixture(autouse=True)
def fresh_progress() -> Iterator[None]:
    said.clear()
    yield
    said.clear()


def request(*priority: str) -> QuoteRequest:
    return QuoteRequest(rank=RankRequest(gpus=16, priority=priority or (EAST, WEST)))


def launches(broker: Broker) -> list[tuple[str | None, str]]:
    sim = broker.provider("sim")
    assert isinstance(sim, SimProvider)
    return [(c["shape_id"], c["outcome"]) for c in sim.calls() if c["op"] == "launch"]


def test_a_region_without_room_is_skipped_without_a_call_and_the_gang_lands_next(
    tmp_path: Path,
) -> None:
    broker = make_broker(tmp_path, '[regions."us-east-1"]\nquota_vcpus = { spot = 200 }\n')
    cluster = broker.provision(request())
    assert cluster.status is Status.RUNNING and cluster.shape_id == WEST
    assert launches(broker) == [(WEST, "ok")]  # us-east-1 was never asked
    assert [a.shape_id for a in broker.store.attempts(cluster.id)] == [WEST]
    skip = next(line for line in said if line.startswith(f"skip {EAST}: quota"))
    assert "spot-vcpus" in skip and "needs 384 vCPU, 200 free (limit 200, in use 0)" in skip
    rows = {(r["region"], r["bucket"]): r for r in broker.store.quota_rows(provider="sim")}
    assert rows[("us-east-1", "spot-vcpus")]["quota_limit"] == 200.0


def test_gpu_quota_of_the_market_counts_and_the_other_market_is_free(tmp_path: Path) -> None:
    on_demand = "aws:us-east-1:p5.48xlarge:on-demand"
    text = '[regions."us-east-1"]\nquota_gpus = { spot = 8, on-demand = 16 }\n'
    broker = make_broker(tmp_path, text)
    cluster = broker.provision(request(EAST, on_demand))
    assert cluster.shape_id == on_demand  # 16 GPUs: too many for spot's 8, fit on-demand's 16
    assert launches(broker) == [(on_demand, "ok")]


def test_every_region_short_fails_with_the_numbers_and_no_call(tmp_path: Path) -> None:
    text = (
        '[regions."us-east-1"]\nquota_vcpus = { spot = 200 }\n'
        '[regions."us-west-2"]\nquota_gpus = { spot = 8 }\n'
    )
    broker = make_broker(tmp_path, text)
    with pytest.raises(ProvisionFailed) as failed:
        broker.provision(request())
    cluster = failed.value.cluster
    assert cluster.reason == "QuotaExceeded"
    assert launches(broker) == []
    assert skips_in(cluster.detail) == {"quota": 2}
    detail = cluster.detail or ""
    assert f"skipped for quota: {EAST}: sim us-east-1 spot-vcpus" in detail
    assert "(and 1 more)" in detail


def test_an_unreadable_quota_is_tried_as_before_with_a_warning(tmp_path: Path) -> None:
    text = '[regions."us-east-1"]\nquota_vcpus = { spot = 200 }\nquota_readable = false\n'
    broker = make_broker(tmp_path, text)
    cluster = broker.provision(request())
    assert cluster.shape_id == WEST
    # asked, refused for quota by the cloud itself, then the next region
    assert launches(broker) == [(EAST, "QuotaExceeded"), (WEST, "ok")]
    warnings = [line for line in said if "quota unknown on sim us-east-1" in line]
    assert len(warnings) == 1 and "permission missing (simulated)" in warnings[0]


def test_a_refusal_for_quota_refreshes_the_stale_cache(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = make_broker(tmp_path, '[regions."us-east-1"]\nquota_vcpus = { spot = 400 }\n', clock)
    first = broker.provision(request())
    assert first.shape_id == EAST  # 384 of 400 free when read
    before = {
        r["bucket"]: r for r in broker.store.quota_rows(provider="sim", regions=["us-east-1"])
    }
    assert before["spot-vcpus"]["usage"] == 0.0  # read before the gang came up

    clock.now += 10  # well within the cache's life: the cache still says 400 free
    second = broker.provision(request())
    assert second.shape_id == WEST
    assert launches(broker)[1:] == [(EAST, "QuotaExceeded"), (WEST, "ok")]
    after = {r["bucket"]: r for r in broker.store.quota_rows(provider="sim", regions=["us-east-1"])}
    assert after["spot-vcpus"]["usage"] == 384.0  # read again after the refusal
    assert after["spot-vcpus"]["read_at"] > before["spot-vcpus"]["read_at"]

    third = broker.provision(request())  # now the cache knows: no call to us-east-1
    assert third.shape_id == WEST
    assert launches(broker)[3:] == [(WEST, "ok")]


def test_the_cache_expires_and_is_read_live_again(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = make_broker(tmp_path, '[regions."us-east-1"]\nquota_vcpus = { spot = 400 }\n', clock)
    gate = QuotaGate(broker.store, clock=clock, say=said.append)
    sim = broker.provider("sim")
    shape = CATALOG.get(EAST)
    assert shape is not None
    assert gate.shortfalls(sim, shape, 2) == []
    first = broker.store.quota_rows(provider="sim")
    clock.now += QUOTA_TTL - 1
    assert QuotaGate(broker.store, clock=clock, say=said.append).shortfalls(sim, shape, 2) == []
    assert broker.store.quota_rows(provider="sim") == first  # served from the cache
    clock.now += 2
    short = QuotaGate(broker.store, clock=clock, say=said.append).shortfalls(sim, shape, 3)
    assert [s.reading.bucket for s in short] == ["spot-vcpus"]
    assert {r["read_at"] for r in broker.store.quota_rows(provider="sim")} == {clock.now}


def test_cache_rows_round_trip_and_the_stdlib_reader_agrees(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, "")
    found = ReportBuilder("gcp", "us-central1")
    found.add("NVIDIA_H100_GPUS", "NVIDIA_H100_GPUS", QuotaUnit.GPU, "on-demand", 16, 8)
    found.add("GPUS_ALL_REGIONS", "GPUS_ALL_REGIONS", QuotaUnit.GPU, "any", 64, 8, region="global")
    found.warn("CPUS could not be read")
    broker.store.save_quotas(rows_of(found.report(), 1000.0))
    broker.store.save_quotas(rows_of(found.report(), 1100.0))  # an upsert: no duplicate
    rows = broker.store.quota_rows()
    assert len(rows) == 3
    assert sorted(rows, key=str) == sorted(
        read_quota_rows_sqlite(tmp_path / "state" / STATE_DB_FILENAME), key=str
    )
    (report,) = reports_of(rows, now=1200.0).values()
    assert isinstance(report, QuotaReport) and report.read_at == 1100.0
    assert {(r.region, r.bucket, r.free) for r in report.readings} == {
        ("us-central1", "NVIDIA_H100_GPUS", 8.0),
        ("global", "GPUS_ALL_REGIONS", 56.0),
    }
    assert report.warnings == ("CPUS could not be read",)
    assert reports_of(rows, now=1100.0 + QUOTA_TTL + 1) == {}  # too old


def test_broker_quotas_reads_sim_live_and_shows_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text('[regions."us-east-1"]\nquota_vcpus = { spot = 200, on-demand = 96 }\n')
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BROKER_SIM_SCENARIO", str(scenario))
    code = main(["quotas", "--provider", "sim", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [(q["quota"], q["limit"], q["usage"], q["free"]) for q in doc["quotas"]] == [
        ("on-demand-vcpus", 96.0, 0.0, 96.0),
        ("spot-vcpus", 200.0, 0.0, 200.0),
    ]
    assert main(["quotas", "--provider", "sim"]) == 0
    out = capsys.readouterr().out
    assert "spot-vcpus" in out and "now" in out
    assert main(["quotas", "--provider", "sim", "--cached"]) == 0
    assert "spot-vcpus" in capsys.readouterr().out
    assert main(["quotas", "--provider", "nimbus"]) == 2
    assert "unknown provider 'nimbus'" in capsys.readouterr().err


def test_broker_quotas_without_a_configured_cloud_says_what_to_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["quotas"]) == 2
    assert "no cloud is configured here" in capsys.readouterr().err
    assert main(["quotas", "--provider", "aws"]) == 2
    err = capsys.readouterr().err
    assert "aws cannot be used" in err and "not enabled" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("provider", "instance_type", "spot", "nodes", "wanted"),
    [
        ("aws", "p5.48xlarge", False, 2, [("L-417A185B", 128.0)]),
        ("aws", "p6-b200.48xlarge", False, 1, [("L-417A185B", 64.0)]),
        ("aws", "p5en.48xlarge", True, 1, [("L-C4BD4855", 64.0)]),
        ("aws", "p4d.24xlarge", True, 1, [("L-7212CCBC", 64.0)]),
        ("aws", "g6e.xlarge", True, 3, [("L-3819A6DF", 192.0)]),
        ("aws", "p6-b200.48xlarge", True, 1, []),  # no documented spot code: unknown
        ("aws", "m5.large", False, 1, []),
        ("gcp", "a3-megagpu-8g", True, 2, [("PREEMPTIBLE_NVIDIA_H100_MEGA_GPUS", 16.0)]),
        ("gcp", "n1-standard-8+t4x1", False, 2, [("NVIDIA_T4_GPUS", 16.0)]),
        ("gcp", "c3-standard-8", False, 1, []),
        ("azure", "Standard_ND96isr_H100_v5", False, 2, [("standardNDSH100v5Family", 128.0)]),
        ("azure", "Standard_ND96isr_H100_v5", True, 1, [("lowPriorityCores", 64.0)]),
        ("azure", "Standard_NV36ads_A10_v5", False, 1, []),  # not in the table: cores only
    ],
)
def test_which_quota_a_gang_draws_on(
    provider: str, instance_type: str, spot: bool, nodes: int, wanted: list[tuple[str, float]]
) -> None:
    shape = make_shape(
        instance_type,
        provider=provider,
        region="r1",
        provisioning="spot" if spot else "on-demand",
        zones=("z1",),
    )
    found = [(n.bucket, n.amount) for n in needs(provider, shape, nodes) if n.region == "r1"]
    if provider == "azure" and not spot:
        assert found[-1] == ("cores", 8.0 * 8 * nodes)  # every on-demand VM: regional vCPUs
        found = found[:-1]
    assert found == wanted
    every = [n for n in needs(provider, shape, nodes) if n.region == "global"]
    want_global = [("GPUS_ALL_REGIONS", 8.0 * nodes)] if provider == "gcp" and wanted else []
    assert [(n.bucket, n.amount) for n in every] == want_global
    other = "gcp" if provider != "gcp" else "aws"
    assert needs(other, shape, nodes) == []  # another cloud's quotas never apply


@pytest.fixture
def gcp_fake() -> Iterator[FakeServer]:
    with FakeServer(require_auth=True, boot_polls=1, delete_polls=0) as server:
        yield server


def test_gcp_end_to_end_quotas_explain_and_skip(gcp_fake: FakeServer, tmp_path: Path) -> None:
    """Real `broker` processes, the real compute_v1 clients, the fake Compute server: the
    spot H100 quota of us-central1 holds 8 GPUs, the gang needs 16."""
    gcp_fake.state.quota_limits["us-central1"] = {"PREEMPTIBLE_NVIDIA_H100_GPUS": 8}
    env = cli_env(gcp_fake.url, tmp_path)
    config = Path(env["BROKER_CONFIG"])  # both regions: the gang has somewhere to go
    text = config.read_text().replace(
        'regions = ["us-central1"]', 'regions = ["us-central1", "us-east4"]'
    )
    assert "us-east4" in text
    config.write_text(text)
    central = "gcp:us-central1:a3-highgpu-8g:spot"
    east = "gcp:us-east4:a3-highgpu-8g:spot"
    priority = ["--priority", central, "--priority", east]

    read = run_broker(env, "quotas", "--json")
    assert read.returncode == 0, read.stderr[-2000:]
    doc = json.loads(read.stdout)
    central_h100 = next(
        q
        for q in doc["quotas"]
        if q["region"] == "us-central1" and q["quota"] == "PREEMPTIBLE_NVIDIA_H100_GPUS"
    )
    assert (central_h100["limit"], central_h100["free"]) == (8.0, 8.0)
    assert {q["region"] for q in doc["quotas"]} == {"us-central1", "us-east4", "global"}

    quoted = run_broker(env, "quote", "--gpus", "16", *priority, "--explain", "--json")
    assert quoted.returncode == 0, quoted.stderr[-2000:]
    (skip,) = json.loads(quoted.stdout)["quota_skips"]
    assert skip["plan"] == 1 and skip["shape_id"] == central
    assert skip["shortfalls"][0]["needed"] == 16.0 and skip["shortfalls"][0]["free"] == 8.0
    text = run_broker(env, "quote", "--gpus", "16", *priority, "--explain")
    assert f"#1 {central}" in text.stdout and "needs 16 GPU, 8 free" in text.stdout

    done = run_broker(env, "provision", "--provider", "gcp", "--gpus", "16", *priority, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    cluster = json.loads(done.stdout)
    assert cluster["shape_id"] == east
    bulk = [c for c in gcp_fake.state.calls if c[0] == "bulkInsert"]
    assert bulk and all(zone.startswith("us-east4-") for _, zone, _ in bulk)
    assert f"skip {central}: quota" in done.stderr
    released = run_broker(env, "release", cluster["cluster_id"])
    assert released.returncode == 0, released.stderr[-2000:]
    assert "Traceback" not in read.stderr + quoted.stderr + done.stderr


PROBE = """
import json, sys
from broker.cli import main
code = main(["quote", "--gpus", "16", "--explain", "--json"])
heavy = ("sqlalchemy", "boto3", "botocore", "azure", "google")
print(json.dumps([code, sorted(m for m in sys.modules if m.startswith(heavy))]))
"""


def test_quote_explain_reads_the_cache_without_sdk_or_sqlalchemy(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, "")
    found = ReportBuilder("aws", "us-east-1")
    found.add("L-C4BD4855", "All P5 Spot Instance Requests", QuotaUnit.VCPU, "spot", 192, 0)
    broker.store.save_quotas(rows_of(found.report(), __import__("time").time()))
    env = {
        "BROKER_STATE_DIR": str(tmp_path / "state"),
        "BROKER_CONFIG": "",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    code, heavy = json.loads(lines[-1])
    assert code == 0 and heavy == []
    doc = json.loads("\n".join(lines[:-1]))
    skipped = {s["shape_id"] for s in doc["quota_skips"]}
    assert EAST in skipped  # 2 x 192 vCPUs do not fit in 192
    assert all(s.startswith("aws:us-east-1:") for s in skipped)
