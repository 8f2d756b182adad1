"""Shape ids, the Shape model's validation, and GPU name normalisation."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from shapes.gpus import gpu_filter_names, normalize_gpu
from shapes.model import Provisioning, Shape, ShapeId, parse_shape_id, prechecked_shape
from tests.conftest import SHAPE_JSON_FIELDS, make_shape


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "aws:us-east-1:p5.48xlarge:spot",
            ShapeId("aws", "us-east-1", "p5.48xlarge", Provisioning.SPOT),
        ),
        (
            "GCP:us-central1:a3-highgpu-8g:On-Demand",
            ShapeId("gcp", "us-central1", "a3-highgpu-8g", Provisioning.ON_DEMAND),
        ),
        (
            " azure:eastus:Standard_ND96isr_H100_v5:spot ",
            ShapeId("azure", "eastus", "Standard_ND96isr_H100_v5", Provisioning.SPOT),
        ),
    ],
)
def test_parse_shape_id(text: str, expected: ShapeId) -> None:
    assert parse_shape_id(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("gcp-desired-shape", "not a shape id"),
        ("aws:us-east-1:p5.48xlarge", "not a shape id"),
        ("aws::p5.48xlarge:spot", "not a shape id"),
        ("aws:us-east-1:p5.48xlarge:reserved", "must be 'spot' or 'on-demand'"),
    ],
)
def test_parse_shape_id_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_shape_id(text)


def test_shape_id_and_key() -> None:
    s = make_shape(
        "Standard_NC24ads_A100_v4",
        provider="azure",
        region="eastus",
        gpu="A100-80GB",
        provisioning="spot",
        zones=("1",),
    )
    assert s.id == "azure:eastus:Standard_NC24ads_A100_v4:spot"
    assert s.key == "azure:eastus:standard_nc24ads_a100_v4:spot"
    assert str(parse_shape_id(s.id)) == s.id


def test_shape_json_has_the_documented_fields() -> None:
    doc = make_shape().to_json_dict()
    assert set(doc) >= SHAPE_JSON_FIELDS
    assert doc["provisioning"] == "on-demand"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"gpu": "H100 80GB"}, "not a canonical name"),
        ({"price": 0}, "price_per_node_hour must be > 0"),
        ({"price": -1.5}, "price_per_node_hour must be > 0"),
        ({"price": math.nan}, "price_per_node_hour must be > 0 and finite, got nan"),
        ({"price": math.inf}, "price_per_node_hour must be > 0 and finite, got inf"),
        ({"price": "10"}, 'price_per_node_hour must be a number, got a string ("10")'),
        ({"price": True}, "price_per_node_hour must be a number, got a boolean"),
        ({"gpus": 0}, "gpus_per_node must be >= 1"),
        ({"vcpus": "8"}, 'vcpus must be an integer, got a string ("8")'),
        ({"vcpus": True}, "vcpus must be an integer, got a boolean (true)"),
        ({"vcpus": 8.0}, "vcpus must be an integer, got a float"),
        ({"provider": "AWS"}, "provider must match"),
        ({"region": "us:east"}, "must not contain ':'"),
        ({"region": ""}, "region must not be empty"),
        ({"zones": ("a", 1)}, "zones item 1 must be a string"),
        ({"zone_prices": {"elsewhere": 1.0}}, "not in zones"),
        ({"zone_prices": {"use1-az1": math.inf}}, "zone_prices['use1-az1'] must be > 0"),
        ({"provisioning": "reserved"}, "provisioning must be 'spot' or 'on-demand'"),
    ],
)
def test_shape_validation(override: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        if "vcpus" in override:
            dataclasses.replace(make_shape(), **override)  # type: ignore[arg-type]
        else:
            make_shape(**override)  # type: ignore[arg-type]


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ValueError) as info:
        make_shape(gpus=0, price=-1, region="")
    message = str(info.value)
    assert all(f in message for f in ("gpus_per_node", "price_per_node_hour", "region"))


def test_numbers_are_normalised_and_ids_computed() -> None:
    s = make_shape(price=10, zones=["use1-az1"], zone_prices={"use1-az1": 3})  # type: ignore[arg-type]
    assert type(s.price_per_node_hour) is float and type(s.gpu_memory_gib) is float
    assert s.zones == ("use1-az1",) and s.zone_prices == {"use1-az1": 3.0}
    assert s.id == "aws:us-east-1:p4d.24xlarge:on-demand" and hash(s) == hash(make_shape())


def test_a_changed_copy_is_checked_again() -> None:
    """Shapes change only through dataclasses.replace, which runs every check again (the
    GCP adapter narrows zones this way)."""
    s = make_shape(zones=("a", "b"), zone_prices={"a": 1.0, "b": 2.0})
    narrowed = dataclasses.replace(s, zones=("a",), zone_prices={"a": 1.0})
    assert narrowed.zones == ("a",) and narrowed.id == s.id
    with pytest.raises(ValueError, match="not in zones"):
        dataclasses.replace(s, zones=("a",))
    with pytest.raises(ValueError, match="price_per_node_hour"):
        dataclasses.replace(s, price_per_node_hour=math.nan)


def test_shape_json_round_trip() -> None:
    s = make_shape(provisioning="spot", zones=("a", "b"), zone_prices={"a": 0.05786})
    doc = json.loads(json.dumps(s.to_json_dict()))
    assert Shape.from_json_dict(doc) == s
    assert doc["price_per_node_hour"] == 10.0 and doc["zone_prices"] == {"a": 0.05786}
    with pytest.raises(ValueError, match="unknown field"):
        Shape.from_json_dict({**doc, "colour": "red"})
    with pytest.raises(ValueError, match="does not match"):
        Shape.from_json_dict({**doc, "id": "aws:us-east-1:other:spot"})


def test_prechecked_shapes_equal_checked_ones() -> None:
    s = make_shape(provisioning="spot", zones=("a",), zone_prices={"a": 2.0})
    fast = prechecked_shape(
        s.provider, s.region, s.instance_type, s.gpu, s.gpus_per_node, s.gpu_memory_gib,
        s.vcpus, s.memory_gib, s.provisioning, s.price_per_node_hour, s.zones, s.zone_prices,
    )  # fmt: skip
    assert type(fast) is Shape and fast == s and fast.key == s.key and fast.id == s.id
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.price_per_node_hour = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "memory", "canonical"),
    [
        ("A100", 40, "A100-40GB"),
        ("A100", 80, "A100-80GB"),
        ("V100", 16, "V100-16GB"),
        ("V100", 32, "V100-32GB"),
        ("nvidia-tesla-a100", None, "A100-40GB"),
        ("nvidia-a100-80gb", None, "A100-80GB"),
        ("nvidia-h100-80gb", None, "H100"),
        ("nvidia-h100-mega-80gb", None, "H100"),
        ("nvidia-h200-141gb", None, "H200"),
        ("nvidia-l4", None, "L4"),
        ("nvidia-tesla-t4", None, "T4"),
        ("nvidia-tesla-v100", None, "V100-16GB"),
        ("L40S", None, "L40S"),
        ("a10g", None, "A10G"),
        ("H100 NVL", None, "H100-NVL"),
    ],
)
def test_normalize_gpu(name: str, memory: float | None, canonical: str) -> None:
    assert normalize_gpu(name, memory) == canonical


def test_normalize_gpu_errors() -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        normalize_gpu("A100")
    with pytest.raises(ValueError, match="unknown GPU"):
        normalize_gpu("K80")


def test_gpu_families_select_every_size() -> None:
    assert gpu_filter_names("a100") == {"A100-40GB", "A100-80GB"}
    assert gpu_filter_names("V100") == {"V100-16GB", "V100-32GB"}
    assert gpu_filter_names("h100") == {"H100", "H100-NVL"}
    assert gpu_filter_names("A100-80GB") == {"A100-80GB"}
