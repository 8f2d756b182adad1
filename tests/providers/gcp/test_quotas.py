"""GcpProvider.quotas through google-cloud-compute against the fake: regions.get quotas
(regional GPU metrics, their PREEMPTIBLE_ twins, CPUS) and the project's *_ALL_REGIONS ones
(projects.get), usage counted by the fake from the VMs the adapter itself launched."""

from __future__ import annotations

import pytest

from providers.base import QuotaSource
from providers.quotas import GLOBAL, QuotaReading, QuotaReport, QuotaUnit, needs, shortfalls
from tests.providers.gcp.conftest import GcpWorld

REGION = "us-central1"


def by_metric(report: QuotaReport) -> dict[tuple[str, str], QuotaReading]:
    return {(r.region, r.bucket): r for r in report.readings}


def test_regional_and_project_quotas_with_the_launched_gang_as_usage(gcp: GcpWorld) -> None:
    gcp.fake.quota_limits[REGION] = {"NVIDIA_H100_GPUS": 16, "PREEMPTIBLE_NVIDIA_H100_GPUS": 32}
    gcp.fake.quota_limits["global"] = {"GPUS_ALL_REGIONS": 24}
    provider = gcp.provider()
    assert isinstance(provider, QuotaSource)
    provider.launch(gcp.request("gcp:us-central1:a3-highgpu-8g:spot", count=2), timeout=60)
    report = provider.quotas(REGION)
    assert report.warnings == ()
    found = by_metric(report)
    spot = found[(REGION, "PREEMPTIBLE_NVIDIA_H100_GPUS")]
    assert (spot.limit, spot.usage, spot.unit, spot.market) == (32.0, 16.0, QuotaUnit.GPU, "spot")
    on_demand = found[(REGION, "NVIDIA_H100_GPUS")]
    assert (on_demand.limit, on_demand.usage, on_demand.market) == (16.0, 0.0, "on-demand")
    every = found[(GLOBAL, "GPUS_ALL_REGIONS")]
    assert (every.limit, every.usage, every.market) == (24.0, 16.0, "any")
    cpus = found[(REGION, "PREEMPTIBLE_CPUS")]
    assert cpus.unit is QuotaUnit.VCPU and cpus.usage == 2 * 208
    assert (REGION, "SSD_TOTAL_GB") not in found  # not a quota a GPU gang is refused for
    assert [c for c in gcp.fake.calls if c[0] in ("regionsGet", "projectsGet")] == [
        ("regionsGet", REGION, {}),
        ("projectsGet", "", {}),
    ]

    # 16 spot H100 fit regionally (16 free) but not in all regions (8 free): short globally
    shape = gcp.shape("gcp:us-central1:a3-highgpu-8g:spot")
    short = shortfalls(needs("gcp", shape, 2), report.readings)
    assert [(s.reading.region, s.reading.bucket) for s in short] == [(GLOBAL, "GPUS_ALL_REGIONS")]
    assert "all regions GPUS_ALL_REGIONS" in short[0].describe()
    assert shortfalls(needs("gcp", shape, 1), report.readings) == []
    on_demand_shape = gcp.shape("gcp:us-central1:a3-highgpu-8g:on-demand")
    short = shortfalls(needs("gcp", on_demand_shape, 3), report.readings)
    assert {s.reading.bucket for s in short} == {"NVIDIA_H100_GPUS", "GPUS_ALL_REGIONS"}
    provider.terminate(provider.list_tagged())


@pytest.mark.parametrize(
    ("method", "error", "what"),
    [("regionsGet", "403", "region us-central1"), ("projectsGet", "403", "project-wide")],
)
def test_a_refused_read_is_a_warning_and_the_other_read_still_counts(
    gcp: GcpWorld, method: str, error: str, what: str
) -> None:
    gcp.fake.inject(method, error)
    report = gcp.provider().quotas(REGION)
    (warning,) = report.warnings
    assert warning.startswith(f"{what} quotas could not be read: permission missing")
    regions = {r.region for r in report.readings}
    assert regions == ({GLOBAL} if method == "regionsGet" else {REGION})


def test_a_server_error_is_a_warning_too(gcp: GcpWorld) -> None:
    gcp.fake.inject("regionsGet", "500")
    report = gcp.provider().quotas(REGION)
    assert len(report.warnings) == 1 and "permission" not in report.warnings[0]
