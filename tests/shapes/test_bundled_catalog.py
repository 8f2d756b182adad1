"""The bundled catalog itself: real shapes, coverage the product promises, honest stamps."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from shapes.catalog import BUNDLED_DIR, load_bundled_catalog
from shapes.gpus import CANONICAL_GPUS, GPU_MEMORY_GIB
from shapes.model import Provisioning

CATALOG = load_bundled_catalog()
PROVIDERS = ("aws", "azure", "gcp")  # the clouds the package ships prices for


def test_the_clouds_are_the_bundled_files() -> None:
    assert CATALOG.providers == PROVIDERS
    assert sorted(p.stem for p in BUNDLED_DIR.glob("*.json")) == list(PROVIDERS)


def test_at_least_200_shapes_on_every_cloud_both_markets() -> None:
    assert len(CATALOG) >= 200
    markets = {(s.provider, s.provisioning) for s in CATALOG.shapes}
    assert markets == {(p, m) for p in PROVIDERS for m in Provisioning}


@pytest.mark.parametrize(
    "gpu", ["H100", "H200", "A100-40GB", "A100-80GB", "L40S", "L4", "A10G", "T4", "V100-16GB"]
)
def test_every_promised_gpu_is_sold_somewhere(gpu: str) -> None:
    assert any(s.gpu == gpu for s in CATALOG.shapes)


def test_at_least_four_regions_per_cloud_and_node_sizes_1_2_4_8() -> None:
    regions = defaultdict(set)
    for s in CATALOG.shapes:
        regions[s.provider].add(s.region)
    assert all(len(regions[p]) >= 4 for p in PROVIDERS)
    assert {1, 2, 4, 8} <= {s.gpus_per_node for s in CATALOG.shapes}


def test_gpu_names_and_memory_are_normalised() -> None:
    for s in CATALOG.shapes:
        assert s.gpu in CANONICAL_GPUS
        assert s.gpu_memory_gib == GPU_MEMORY_GIB[s.gpu], s.id


def test_every_source_is_stamped() -> None:
    for src in CATALOG.sources:
        assert src.price_source and "commit" in src.price_source
        assert src.retrieved is not None
        assert src.prices_as_of is not None or "unknown" in src.notes.lower()


def test_built_files_carry_their_dates() -> None:
    # every file is built from dated sources (shapes/build)
    assert all(s.prices_as_of is not None for s in CATALOG.sources)


def test_aws_spot_is_priced_per_zone() -> None:
    spot = [
        s for s in CATALOG.shapes if s.provider == "aws" and s.provisioning is Provisioning.SPOT
    ]
    assert spot and all(s.zone_prices for s in spot)
    for s in spot:
        assert s.price_per_node_hour == min(s.zone_prices.values())  # type: ignore[union-attr]
        assert s.price_per_node_hour_max == max(s.zone_prices.values())  # type: ignore[union-attr]


def test_spot_is_cheaper_than_on_demand_for_most_shapes() -> None:
    # A sanity check on the transcription: spot discounts are the norm, not the rule.
    od = {
        (s.provider, s.region, s.instance_type): s.price_per_node_hour
        for s in CATALOG.shapes
        if s.provisioning is Provisioning.ON_DEMAND
    }
    verdicts = Counter(
        s.price_per_node_hour < od[(s.provider, s.region, s.instance_type)]
        for s in CATALOG.shapes
        if s.provisioning is Provisioning.SPOT and (s.provider, s.region, s.instance_type) in od
    )
    assert verdicts[True] > 4 * verdicts[False]


def test_known_list_prices_are_as_transcribed() -> None:
    # Spot-checks against well-known public list prices (AWS after its mid-2025 P4/P5 cut).
    assert CATALOG.get("aws:us-east-1:p4d.24xlarge:on-demand").price_per_node_hour == 21.957642  # type: ignore[union-attr]
    assert CATALOG.get("aws:us-east-1:p5.48xlarge:on-demand").price_per_node_hour == 55.04  # type: ignore[union-attr]
    assert CATALOG.get("aws:us-east-1:g4dn.xlarge:on-demand").price_per_node_hour == 0.526  # type: ignore[union-attr]
    assert CATALOG.get("aws:us-east-1:g5.xlarge:on-demand").price_per_node_hour == 1.006  # type: ignore[union-attr]
