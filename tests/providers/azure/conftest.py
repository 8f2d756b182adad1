"""The Azure adapter against the fake ARM server (tests/fakes/azure.py) over HTTPS.

One server (and one trustme CA) serves the whole session; every test gets it reset. The
real ``ComputeManagementClient`` is used throughout, with a fake token credential, no SDK
retries and no polling delay; the adapter's own waits run on a FakeClock.

Teardown of every test: no VM may be left without the broker's cluster tag and no NIC or
disk without its VM; everything tagged is then terminated through a fresh adapter (no
faults), and the fake must hold nothing at all: no VM, NIC, disk or placement group.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from providers.azure.adapter import AzureProvider
from providers.azure.config import AzureConfig
from providers.base import TAG_CLUSTER
from shapes.catalog import Catalog, load_bundled_catalog
from tests.conftest import FakeClock
from tests.fakes.azure import RESOURCE_GROUP, SUBSCRIPTION, TOKEN, FakeArm

REGIONS = ("eastus", "westus2")
CONFIG_TAGS = {"team": "ml"}
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKeyOnly test@example"


class FakeCredential:
    """A TokenCredential that never leaves the process; counts its token requests."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


def subnet(region: str) -> str:
    return (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
        f"Microsoft.Network/virtualNetworks/burst-{region}/subnets/default"
    )


@dataclass
class AzureWorld:
    """The fake ARM server, a config pointing at it, and the providers a test made."""

    fake: FakeArm
    config: AzureConfig
    catalog: Catalog
    clock: FakeClock
    providers: list[AzureProvider] = field(default_factory=list)

    def provider(
        self, config: AzureConfig | None = None, catalog: Catalog | None = None, **kwargs: Any
    ) -> AzureProvider:
        kwargs.setdefault("credential", FakeCredential())
        kwargs.setdefault("polling_interval", 0)
        kwargs.setdefault("poll_interval", 2.0)
        kwargs.setdefault("sleep", self.clock.sleep)
        kwargs.setdefault("clock", self.clock)
        provider = AzureProvider(config or self.config, catalog or self.catalog, **kwargs)
        self.providers.append(provider)
        return provider


def make_config(fake: FakeArm, **overrides: Any) -> AzureConfig:
    values: dict[str, Any] = {
        "subscription_id": SUBSCRIPTION,
        "resource_group": RESOURCE_GROUP,
        "regions": REGIONS,
        "subnets": {r: subnet(r) for r in REGIONS},
        "ssh_public_key": SSH_KEY,
        "tags": CONFIG_TAGS,
        "endpoint": fake.url,
        "ca_bundle": fake.ca_path,
        "prices_endpoint": f"{fake.url}/api/retail/prices",
    }
    values.update(overrides)
    return AzureConfig(**values)


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeArm]:
    fake = FakeArm(workdir=tmp_path_factory.mktemp("azure-fake")).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_server: FakeArm) -> FakeArm:
    fake_server.reset()
    return fake_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def azure(fake: FakeArm, clock: FakeClock) -> Iterator[AzureWorld]:
    world = AzureWorld(fake, make_config(fake), load_bundled_catalog(), clock)
    yield world
    fake.clear_faults()
    with fake.lock:
        untagged = [
            vm.name for vm in fake.vms.values() if TAG_CLUSTER not in vm.body.get("tags", {})
        ]
    assert untagged == [], f"VMs left without the {TAG_CLUSTER} tag: {untagged}"
    cleaner = world.provider(config=make_config(fake, proximity_placement_group=True))
    cleaner.terminate(cleaner.list_tagged())
    assert fake.leftovers() == {"vms": [], "nics": [], "disks": [], "ppgs": []}
