"""The provider contract (tests/providers/contract.py) against the Azure adapter and the
fake ARM server."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.azure.adapter import AzureProvider
from providers.base import Provider
from shapes.model import Shape
from tests.providers.azure.conftest import AzureWorld
from tests.providers.contract import ProviderContract

# A bundled catalog shape: NC24ads A100 v4 spot in eastus, whose only zone is the region's
# pseudo-zone (a regional VM). Gangs of 3 also exercise the proximity placement group.
TARGET_ID = "azure:eastus:Standard_NC24ads_A100_v4:spot"
TARGET_ZONE = "eastus"


class TestAzureContract(ProviderContract):
    world: AzureWorld

    @pytest.fixture(autouse=True)
    def _fake_arm(self, azure: AzureWorld) -> None:
        self.world = azure

    def make_provider(self, tmp_path: Path) -> Provider:
        return self.world.provider()

    def provider_with_no_capacity(self, tmp_path: Path) -> Provider:
        provider = self.world.provider()
        self.world.fake.inject("create", "AllocationFailed", kind="lro", times=5)
        return provider

    def launch_target(self, provider: Provider) -> tuple[Shape, str]:
        assert isinstance(provider, AzureProvider)
        shape = provider.catalog.get(TARGET_ID)
        assert shape is not None and TARGET_ZONE in shape.zones
        return shape, TARGET_ZONE


def test_the_target_is_in_the_bundled_catalog(azure: AzureWorld) -> None:
    shape = azure.catalog.get(TARGET_ID)
    assert shape is not None and shape.zones == (TARGET_ZONE,)
