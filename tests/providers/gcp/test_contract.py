"""The provider contract (tests/providers/contract.py) against the GCP adapter, driving the
real compute_v1 clients over HTTP against the fake Compute server."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.base import Provider
from providers.gcp.adapter import GcpProvider
from shapes.model import Shape
from tests.providers.contract import ProviderContract
from tests.providers.gcp.conftest import GcpWorld

# A real catalog shape: a3-highgpu-8g spot in us-central1-b. Gangs of 3 also exercise the
# compact placement policy.
TARGET_ID = "gcp:us-central1:a3-highgpu-8g:spot"
TARGET_ZONE = "us-central1-b"


class TestGcpContract(ProviderContract):
    world: GcpWorld

    @pytest.fixture(autouse=True)
    def _fake(self, gcp: GcpWorld) -> None:
        self.world = gcp

    def make_provider(self, tmp_path: Path) -> Provider:
        return self.world.provider()

    def provider_with_no_capacity(self, tmp_path: Path) -> Provider:
        provider = self.world.provider()
        self.world.fake.inject("bulkInsert", "stockout", zone=TARGET_ZONE, times=5)
        return provider

    def launch_target(self, provider: Provider) -> tuple[Shape, str]:
        assert isinstance(provider, GcpProvider)
        shape = provider.catalog.get(TARGET_ID)
        assert shape is not None and TARGET_ZONE in shape.zones
        return shape, TARGET_ZONE


def test_the_target_is_listed_by_the_adapter(gcp: GcpWorld) -> None:
    listed = {s.id: s for s in gcp.provider().list_shapes()}
    assert TARGET_ZONE in listed[TARGET_ID].zones
    assert all(s.provider == "gcp" and s.region in gcp.config.regions for s in listed.values())
