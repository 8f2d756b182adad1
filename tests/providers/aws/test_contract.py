"""The provider contract (tests/providers/contract.py) against the AWS adapter on moto."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.aws.adapter import AwsProvider
from providers.base import Provider
from shapes.model import Shape
from tests.providers.aws.conftest import AwsWorld, inject
from tests.providers.contract import ProviderContract

# A real catalog shape: p5.48xlarge spot in us-east-1, launched in use1-az4 (us-east-1d in
# moto's account). Gangs of 3 also exercise the cluster placement group.
TARGET_ID = "aws:us-east-1:p5.48xlarge:spot"
TARGET_ZONE = "use1-az4"


class TestAwsContract(ProviderContract):
    world: AwsWorld

    @pytest.fixture(autouse=True)
    def _moto(self, aws: AwsWorld) -> None:
        self.world = aws

    def make_provider(self, tmp_path: Path) -> Provider:
        return self.world.provider()

    def provider_with_no_capacity(self, tmp_path: Path) -> Provider:
        provider = self.world.provider()
        inject(provider, "RunInstances", ["InsufficientInstanceCapacity"] * 5)
        return provider

    def launch_target(self, provider: Provider) -> tuple[Shape, str]:
        assert isinstance(provider, AwsProvider)
        shape = provider.catalog.get(TARGET_ID)
        assert shape is not None and TARGET_ZONE in shape.zones
        return shape, TARGET_ZONE


def test_the_target_is_in_the_bundled_catalog(aws: AwsWorld) -> None:
    shape = aws.catalog.get(TARGET_ID)
    assert shape is not None and TARGET_ZONE in shape.zones
