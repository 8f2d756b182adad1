"""Which adapter serves a provider name; adapters (and their cloud SDKs) import lazily.

A real cloud is used only when the configuration file enables it; the simulated cloud
only when a command asks for it (``--provider sim``).
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from providers.base import Provider
from providers.config import KNOWN_PROVIDERS, BrokerConfig, default_config_path
from providers.errors import NotConfiguredError, ProviderError
from shapes.catalog import Catalog

SIMULATED = "sim"


def _not_configured(name: str, why: str) -> NotConfiguredError:
    return NotConfiguredError(why, code="NotConfigured", provider=name)


def open_provider(
    name: str,
    *,
    state_dir: Path,
    catalog: Catalog,
    config: BrokerConfig,
    sim_scenario: str | os.PathLike[str] | None = None,
) -> Provider:
    """The adapter for ``name``; raises NotConfiguredError when it cannot be used here."""
    if name == SIMULATED:
        from providers.sim import SimProvider, load_scenario

        return SimProvider(state_dir, catalog, load_scenario(sim_scenario))
    if name not in KNOWN_PROVIDERS:
        raise _not_configured(name, f"unknown provider {name!r}")
    if not config.enabled(name):
        where = config.path or default_config_path()
        raise _not_configured(
            name,
            f"{name} is not enabled in {where} (add it to [broker] providers; "
            "or use --provider sim for a simulated run)",
        )
    if name == "aws" and config.aws is not None:
        from providers.aws.adapter import AwsProvider

        return AwsProvider(config.aws, catalog)
    if name == "gcp" and config.gcp is not None:
        from providers.gcp.adapter import GcpProvider

        return GcpProvider(config.gcp, catalog)
    if name == "azure" and config.azure is not None:
        from providers.azure.adapter import AzureProvider

        return AzureProvider(config.azure, catalog)
    raise _not_configured(name, f"no {name} adapter is available in this version of burst-broker")


def refresh_document(
    name: str, *, config: BrokerConfig, bundled: Catalog, today: date
) -> dict[str, Any]:
    """A fresh catalog document (shapes/data format) from the cloud's live APIs."""
    if not config.enabled(name):
        raise _not_configured(
            name, f"{name} is not enabled in {config.path or default_config_path()}"
        )
    if name == "aws" and config.aws is not None:
        from providers.aws.catalog import build_catalog_document

        return build_catalog_document(None, config.aws, bundled=bundled, today=today)
    if name == "gcp" and config.gcp is not None:
        from providers.gcp.catalog import build_catalog_document as build_gcp

        return build_gcp(config.gcp, bundled=bundled, today=today)
    if name == "azure" and config.azure is not None:
        from providers.azure.catalog import build_catalog_document as build_azure

        return build_azure(config.azure, bundled=bundled, today=today)
    raise _not_configured(name, f"no live catalog for {name} in this version")


class ProviderStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: str
    enabled: bool
    usable: bool
    detail: str


def provider_status(
    name: str, *, state_dir: Path, catalog: Catalog, config: BrokerConfig
) -> ProviderStatus:
    """Is ``name`` configured and usable now, and why not. Never shows a credential."""
    if name == SIMULATED:
        return ProviderStatus(
            provider=name,
            enabled=True,
            usable=True,
            detail="simulated cloud, used only with --provider sim",
        )
    try:
        provider: Any = open_provider(name, state_dir=state_dir, catalog=catalog, config=config)
    except ProviderError as exc:
        return ProviderStatus(
            provider=name, enabled=config.enabled(name), usable=False, detail=exc.message
        )
    health = getattr(provider, "health", None)
    if health is None:
        return ProviderStatus(provider=name, enabled=True, usable=True, detail="configured")
    ok, detail = health()
    return ProviderStatus(provider=name, enabled=True, usable=bool(ok), detail=str(detail))
