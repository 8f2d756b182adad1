"""AWS's entry in :data:`providers.clouds.CLOUDS`. Imports no SDK: boto3 loads when AWS is
opened or refreshed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from providers.aws.config import AwsConfig
from providers.spec import CloudSpec

if TYPE_CHECKING:
    from providers.base import Provider
    from shapes.catalog import Catalog
    from shapes.model import Shape


def _open(config: AwsConfig, catalog: Catalog) -> Provider:
    from providers.aws.adapter import AwsProvider

    return AwsProvider(config, catalog)


def _refresh(
    config: AwsConfig, bundled: Catalog | None, today: date, _credentials: Mapping[str, str]
) -> dict[str, Any]:
    from providers.aws.catalog import build_catalog_document

    return build_catalog_document(None, config, bundled=bundled, today=today)


def quota_bucket(shape: Shape) -> str:
    """EC2 counts vCPUs per instance family letter (P, G, ...), on-demand and spot apart
    (the market is part of every scope already): ``p5.48xlarge`` -> ``family-p``."""
    return "family-" + shape.instance_type[:1].lower()


SPEC = CloudSpec(
    name="aws", section=AwsConfig, open=_open, refresh=_refresh, quota_bucket=quota_bucket
)
