"""GCP's entry in :data:`providers.clouds.CLOUDS`. Imports no SDK: google-cloud-compute
loads when GCP is opened or refreshed. Compute Engine counts GPUs per model (spot from the
``PREEMPTIBLE_*`` metrics, apart): the default quota rule, one bucket per GPU model."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from providers.gcp.config import GcpConfig
from providers.spec import CloudSpec

if TYPE_CHECKING:
    from providers.base import Provider
    from shapes.catalog import Catalog


def _open(config: GcpConfig, catalog: Catalog) -> Provider:
    from providers.gcp.adapter import GcpProvider

    return GcpProvider(config, catalog)


def _refresh(
    config: GcpConfig, bundled: Catalog | None, today: date, credentials: Mapping[str, str]
) -> dict[str, Any]:
    from providers.gcp.catalog import api_key_from_env, build_catalog_document

    api_key = api_key_from_env(credentials)
    return build_catalog_document(config, bundled=bundled, today=today, api_key=api_key)


SPEC = CloudSpec(name="gcp", section=GcpConfig, open=_open, refresh=_refresh)
