"""AzureProvider.quotas through azure-mgmt-compute against the fake ARM: ``usage.list``
(per VM family, ``cores``, ``lowPriorityCores`` for Spot), the current values counted by the
fake from the VMs the adapter itself launched, family names compared without case."""

from __future__ import annotations

import uuid

from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest, QuotaSource
from providers.quotas import QuotaReading, QuotaReport, needs, shortfalls
from shapes.model import Shape
from tests.fakes.azure import FakeArm
from tests.providers.azure.conftest import AzureWorld

REGION = "eastus"
A100 = "azure:eastus:Standard_NC24ads_A100_v4:on-demand"
T4_SPOT = "azure:eastus:Standard_NC4as_T4_v3:spot"


def shape(azure: AzureWorld, shape_id: str) -> Shape:
    found = azure.catalog.get(shape_id)
    assert found is not None, shape_id
    return found


def launch(azure: AzureWorld, target: Shape, count: int) -> None:
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    request = LaunchRequest(
        shape=target,
        zone=target.zones[0],
        count=count,
        token=f"{cluster}-c1-a1",
        tags={TAG_BROKER: "test", TAG_CLUSTER: cluster, TAG_ATTEMPT: "c1-a1"},
    )
    azure.provider().launch(request, timeout=600)


def by_name(report: QuotaReport) -> dict[str, QuotaReading]:
    return {r.bucket.lower(): r for r in report.readings}


def test_family_cores_and_spot_cores_with_the_launched_vms_as_usage(azure: AzureWorld) -> None:
    azure.fake.quota_limits[REGION] = {
        "StandardNCADSA100v4Family": 96,
        "cores": 100,
        "lowPriorityCores": 4,
    }
    launch(azure, shape(azure, A100), 2)
    launch(azure, shape(azure, T4_SPOT), 1)
    provider = azure.provider()
    assert isinstance(provider, QuotaSource)
    report = provider.quotas(REGION)
    assert report.warnings == ()
    found = by_name(report)
    family = found["standardncadsa100v4family"]
    assert (family.limit, family.usage, family.market) == (96.0, 48.0, "on-demand")
    assert family.name == "StandardNCADSA100v4 Family vCPUs"  # Azure's words, kept
    assert (found["cores"].limit, found["cores"].usage) == (100.0, 48.0)
    spot = found["lowprioritycores"]
    assert (spot.limit, spot.usage, spot.market) == (4.0, 4.0, "spot")
    assert found["standardncasv3_t4family"].usage == 0.0  # Spot VMs count only as Spot

    a100 = shape(azure, A100)
    assert shortfalls(needs("azure", a100, 2), report.readings) == []  # 48 of 48 free
    short = shortfalls(needs("azure", a100, 3), report.readings)
    assert [s.reading.bucket for s in short] == ["StandardNCADSA100v4Family", "cores"]
    spot_short = shortfalls(needs("azure", shape(azure, T4_SPOT), 1), report.readings)
    assert [s.reading.bucket for s in spot_short] == ["lowPriorityCores"]
    assert "needs 4 vCPU, 0 free (limit 4, in use 4)" in spot_short[0].describe()


def test_every_catalog_family_is_in_the_usage_the_fake_reports(azure: AzureWorld) -> None:
    """Each Azure size the catalog sells maps to a family usage.list answers for (the table
    in providers.quotas agrees with the names Azure reports, whatever their case)."""
    report = azure.provider().quotas(REGION)
    names = {r.bucket.lower() for r in report.readings}
    for s in azure.catalog.shapes:
        if s.provider == "azure" and s.provisioning.value == "on-demand":
            (family, cores) = needs("azure", s, 1)
            assert family.bucket.lower() in names, s.instance_type
            assert cores.bucket == "cores"


def test_a_refused_usage_read_is_a_warning(azure: AzureWorld, fake: FakeArm) -> None:
    fake.inject(
        "usages",
        "AuthorizationFailed",
        status=403,
        message="The client does not have authorization to perform action "
        "'Microsoft.Compute/locations/usages/read'",
    )
    report = azure.provider().quotas(REGION)
    assert report.readings == ()
    (warning,) = report.warnings
    assert warning.startswith(f"the usage of {REGION} could not be read: permission missing")
