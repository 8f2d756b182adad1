"""Which adapter serves a provider name; adapters (and their cloud SDKs) import lazily."""

from __future__ import annotations

import os
from pathlib import Path

from providers.base import Provider
from providers.errors import NotConfiguredError
from shapes.catalog import Catalog

SIMULATED = "sim"


def open_provider(
    name: str,
    *,
    state_dir: Path,
    catalog: Catalog,
    sim_scenario: str | os.PathLike[str] | None = None,
) -> Provider:
    """The adapter for ``name``; raises NotConfiguredError when it cannot be used here."""
    if name == SIMULATED:
        from providers.sim import SimProvider, load_scenario

        return SimProvider(state_dir, catalog, load_scenario(sim_scenario))
    raise NotConfiguredError(
        f"no {name} adapter is available in this version of burst-broker "
        "(use --provider sim for a simulated run)",
        code="NotConfigured",
        provider=name,
    )
