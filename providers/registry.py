"""Which adapter serves a provider name, from the one table of clouds
(:data:`providers.clouds.CLOUDS`); adapters (and their cloud SDKs) import lazily.

A real cloud is used only when the configuration file enables it; the simulated cloud
only when a command asks for it (``--provider sim``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from providers.base import Provider
from providers.clouds import CLOUDS, KNOWN_PROVIDERS
from providers.config import BrokerConfig
from providers.errors import NotConfiguredError, ProviderError
from providers.spec import CloudSection, CloudSpec
from shapes.catalog import Catalog

if TYPE_CHECKING:
    from providers.sim import SimScenario

SIMULATED = "sim"


@runtime_checkable
class SupportsHealth(Protocol):
    """An adapter that can check its credentials and configuration with one cheap call."""

    def health(self) -> tuple[bool, str]: ...


def _not_configured(name: str, why: str) -> NotConfiguredError:
    return NotConfiguredError(why, code="NotConfigured", provider=name)


def _enabled(name: str, config: BrokerConfig) -> tuple[CloudSpec[Any], CloudSection]:
    """The spec and section of an enabled cloud; NotConfiguredError saying why not."""
    spec = CLOUDS.get(name)
    if spec is None:
        known = ", ".join((*KNOWN_PROVIDERS, SIMULATED))
        raise _not_configured(name, f"unknown provider {name!r} (known: {known})")
    section = config.section(name)
    if not config.enabled(name) or section is None:
        where = f"in {config.path}" if config.path else "(there is no configuration file)"
        raise _not_configured(
            name,
            f"{name} is not enabled {where} (add it to [broker] providers; "
            "or use --provider sim for a simulated run)",
        )
    return spec, section


def open_provider(
    name: str,
    *,
    state_dir: Path,
    catalog: Catalog,
    config: BrokerConfig,
    sim_scenario: SimScenario | None = None,
) -> Provider:
    """The adapter for ``name``; raises NotConfiguredError when it cannot be used here.

    ``sim_scenario`` (simulated cloud only) is an already loaded scenario
    (:func:`providers.sim.load_scenario`), so that a bad file is refused before anything
    is written; None is the default scenario."""
    if name == SIMULATED:
        from providers.sim import SimProvider

        return SimProvider(state_dir, catalog, sim_scenario)
    spec, section = _enabled(name, config)
    return spec.open(section, catalog)


def refresh_document(
    name: str,
    *,
    config: BrokerConfig,
    bundled: Catalog,
    today: date,
    credentials: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A fresh catalog document (shapes/data format) from the cloud's live APIs.
    ``credentials``: the credential variables the edge read (``broker.settings``), e.g. the
    GCP Billing Catalog's API key."""
    spec, section = _enabled(name, config)
    if spec.refresh is None:
        raise _not_configured(name, f"{name} has no live catalog in this version")
    return spec.refresh(section, bundled, today, credentials or {})


def sim_exists(state_dir: Path) -> bool:
    """Has the simulated cloud ever been used in this state directory (so reconcile should
    sweep it)? Cheap: opens nothing."""
    from providers.sim import sim_exists as exists

    return exists(state_dir)


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
        provider = open_provider(name, state_dir=state_dir, catalog=catalog, config=config)
    except ProviderError as exc:
        return ProviderStatus(
            provider=name, enabled=config.enabled(name), usable=False, detail=exc.message
        )
    if not isinstance(provider, SupportsHealth):
        return ProviderStatus(provider=name, enabled=True, usable=True, detail="configured")
    ok, detail = provider.health()
    return ProviderStatus(provider=name, enabled=True, usable=bool(ok), detail=str(detail))
