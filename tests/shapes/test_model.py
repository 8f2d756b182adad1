"""Shape ids, the Shape model's validation, and GPU name normalisation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shapes.gpus import gpu_filter_names, normalize_gpu
from shapes.model import Provisioning, ShapeId, parse_shape_id
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
        ({"gpu": "H100 80GB"}, "canonical"),
        ({"price": 0}, "greater than 0"),
        ({"gpus": 0}, "greater than or equal to 1"),
        ({"provider": "AWS"}, "pattern"),
        ({"region": "us:east"}, "must not contain ':'"),
        ({"zone_prices": {"elsewhere": 1.0}}, "not in zones"),
    ],
)
def test_shape_validation(override: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        make_shape(**override)  # type: ignore[arg-type]


def test_shape_is_frozen() -> None:
    s = make_shape()
    with pytest.raises(ValidationError):
        s.price_per_node_hour = 1.0  # type: ignore[misc]


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
