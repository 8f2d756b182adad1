"""The shape: one kind of node a cloud sells, at one price.

A shape is (provider, region, instance type, provisioning). Its id is
``provider:region:instance_type:provisioning`` — e.g. ``aws:us-east-1:p5.48xlarge:spot`` —
and ids match case-insensitively (:func:`shape_key`). Models are frozen and do no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shapes.gpus import CANONICAL_GPUS


class Provisioning(StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"


class ShapeId(NamedTuple):
    provider: str
    region: str
    instance_type: str
    provisioning: Provisioning

    def __str__(self) -> str:
        return f"{self.provider}:{self.region}:{self.instance_type}:{self.provisioning.value}"


def parse_shape_id(text: str) -> ShapeId:
    """Parse ``provider:region:instance_type:provisioning``; raise ``ValueError`` saying why not."""
    parts = text.strip().split(":")
    if len(parts) != 4 or not all(parts):
        raise ValueError(
            f"{text!r} is not a shape id (expected provider:region:instance_type:provisioning, "
            "e.g. aws:us-east-1:p5.48xlarge:spot)"
        )
    provider, region, instance_type, provisioning = parts
    try:
        prov = Provisioning(provisioning.lower())
    except ValueError:
        raise ValueError(
            f"{text!r}: provisioning must be 'spot' or 'on-demand', got {provisioning!r}"
        ) from None
    return ShapeId(provider.lower(), region, instance_type, prov)


def shape_key(shape_id: str) -> str:
    """The case-insensitive lookup key of a shape id."""
    return shape_id.strip().lower()


class Shape(BaseModel):
    """One purchasable node type: a GPU instance type in a region, spot or on-demand."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    region: str = Field(min_length=1)
    instance_type: str = Field(min_length=1)
    gpu: str
    gpus_per_node: int = Field(ge=1)
    gpu_memory_gib: float = Field(gt=0)
    vcpus: int = Field(ge=1)
    memory_gib: float = Field(gt=0)
    provisioning: Provisioning
    price_per_node_hour: float = Field(gt=0, description="USD per node-hour")
    zones: tuple[str, ...] = ()
    zone_prices: dict[str, float] | None = Field(
        default=None, description="USD per node-hour by zone, where the price varies by zone"
    )

    @field_validator("gpu")
    @classmethod
    def _canonical_gpu(cls, value: str) -> str:
        if value not in CANONICAL_GPUS:
            raise ValueError(f"GPU {value!r} is not a canonical name ({sorted(CANONICAL_GPUS)})")
        return value

    @field_validator("region", "instance_type")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("must not contain ':' (it separates the parts of a shape id)")
        return value

    @model_validator(mode="after")
    def _zone_prices_match_zones(self) -> Shape:
        if self.zone_prices is not None and set(self.zone_prices) - set(self.zones):
            raise ValueError("zone_prices names zones that are not in zones")
        return self

    @cached_property
    def id(self) -> str:
        return f"{self.provider}:{self.region}:{self.instance_type}:{self.provisioning.value}"

    @cached_property
    def key(self) -> str:
        """Lower-cased id, for case-insensitive matching."""
        return self.id.lower()

    def to_json_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"id": self.id}
        data.update(self.model_dump(mode="json"))
        return data
