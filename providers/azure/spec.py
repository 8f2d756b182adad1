"""Azure's entry in :data:`providers.clouds.CLOUDS`. Imports no SDK: the azure-mgmt
packages load when Azure is opened or refreshed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from providers.azure.config import AzureConfig
from providers.spec import CloudSpec
from shapes.model import Provisioning

if TYPE_CHECKING:
    from providers.base import Provider
    from shapes.catalog import Catalog
    from shapes.model import Shape


def _open(config: AzureConfig, catalog: Catalog) -> Provider:
    from providers.azure.adapter import AzureProvider

    return AzureProvider(config, catalog)


def _refresh(
    config: AzureConfig, bundled: Catalog | None, today: date, _credentials: Mapping[str, str]
) -> dict[str, Any]:
    from providers.azure.catalog import build_catalog_document

    return build_catalog_document(config, bundled=bundled, today=today)


def azure_family(size: str) -> str:
    """The VM family of an Azure size, the sizes that share one per-family core quota:
    ``Standard_NC24ads_A100_v4`` and ``Standard_NC96ads_A100_v4`` -> ``ncads-a100-v4``."""
    parts = size.removeprefix("Standard_").split("_")
    parts[0] = "".join(c for c in parts[0] if not c.isdigit())
    return "-".join(parts).lower()


def quota_bucket(shape: Shape) -> str:
    """Azure counts on-demand vCPUs per VM family, and every Spot VM of a region against one
    ``lowPriorityCores`` bucket."""
    if shape.provisioning is Provisioning.SPOT:
        return "low-priority-cores"
    return "family-" + azure_family(shape.instance_type)


SPEC = CloudSpec(
    name="azure", section=AzureConfig, open=_open, refresh=_refresh, quota_bucket=quota_bucket
)
