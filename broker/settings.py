"""Broker-wide settings that are not part of one request: the one place that reads the
environment (``BROKER_*``, ``XDG_*``). Everything below the edge takes these as parameters.

- ``BROKER_STATE_DIR``: the store and the simulated cloud (default
  ``$XDG_STATE_HOME/burst-broker``, i.e. ``~/.local/state/burst-broker``);
- ``BROKER_STATE_URL``: another database for the store, PostgreSQL for several broker
  hosts: ``postgresql+psycopg://user:password@127.0.0.1:5432/broker`` (``postgresql://`` means
  psycopg too; ``pip install 'burst-broker[postgres]'``); the password is never shown;
- ``BROKER_CONFIG``: which clouds and how to launch (``$XDG_CONFIG_HOME/burst-broker/
  config.toml``); when set, a missing file is an error;
- ``BROKER_CATALOG_DIR``: refreshed catalog files (``$XDG_DATA_HOME/burst-broker/catalog``);
  compiled copies of the bundled files go to ``$XDG_CACHE_HOME/burst-broker/catalog``;
- ``BROKER_DEPLOYMENT``: the ``broker`` tag on every node, i.e. whose nodes reconcile may
  touch (``default``);
- ``BROKER_SIM_SCENARIO``: the simulated cloud's scenario file;
- ``BROKER_BURST_MAX_GPUS``: the burst cap (48);
- ``BROKER_LEASE_SECONDS``: a provisioning owner's lease between renewals (120);
- ``BROKER_URL`` and ``BROKER_TOKEN``: a broker service (``broker serve``) and an API token of
  it; when the URL is set, the CLI's cluster commands call that service instead of the local
  store. The token is never part of a repr or a message.
- credentials our own code reads (the clouds' SDKs read theirs themselves):
  ``BROKER_GCP_API_KEY`` (the GCP Billing Catalog, ``broker catalog refresh``),
  ``GOOGLE_APPLICATION_CREDENTIALS`` (a gs:// artifact store's signing key file),
  ``AZURE_STORAGE_KEY`` / ``AZURE_STORAGE_CONNECTION_STRING`` (an az:// artifact store). They
  are kept in ``credentials`` (never in a repr) and handed to the providers as parameters.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from providers.errors import ConfigError

MIN_GPUS = 1
MAX_GPUS = 72  # the launch-file format's limit for every compute mode
DEFAULT_BURST_MAX_GPUS = 48  # "Burst experiments are currently limited to a maximum of 48 GPUs"
DEFAULT_LEASE_SECONDS = 120.0
STATE_DB_FILENAME = "broker.sqlite"  # the SQLite store inside the state directory
CREDENTIAL_VARS = (
    "BROKER_GCP_API_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
)


def _home_dir(env: Mapping[str, str], xdg: str, fallback: str) -> Path:
    base = env.get(xdg) or str(Path.home() / fallback)
    return Path(base) / "burst-broker"


@dataclass(frozen=True)
class Settings:
    burst_max_gpus: int = DEFAULT_BURST_MAX_GPUS
    state_dir: Path = field(default_factory=lambda: _home_dir({}, "", ".local/state"))
    state_url: str | None = None
    config_path: Path = field(default_factory=lambda: _home_dir({}, "", ".config") / "config.toml")
    config_explicit: bool = False  # named by BROKER_CONFIG: a missing file is an error
    catalog_dir: Path | None = None  # None: the bundled catalog only
    cache_dir: Path | None = None  # compiled catalogs of the bundled files (None: none)
    deployment: str = "default"
    sim_scenario: Path | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    service_url: str | None = None  # BROKER_URL: the CLI's cluster commands call this service
    service_token: str | None = field(default=None, repr=False)  # BROKER_TOKEN: never shown
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)  # CREDENTIAL_VARS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default: the process environment); a bad
        value is a ConfigError naming the variable."""
        env = os.environ if environ is None else environ
        config = env.get("BROKER_CONFIG") or ""
        return cls(
            burst_max_gpus=_burst_max_gpus(env.get("BROKER_BURST_MAX_GPUS", "")),
            state_dir=Path(env["BROKER_STATE_DIR"])
            if env.get("BROKER_STATE_DIR")
            else _home_dir(env, "XDG_STATE_HOME", ".local/state"),
            state_url=env.get("BROKER_STATE_URL") or None,
            config_path=Path(config)
            if config
            else _home_dir(env, "XDG_CONFIG_HOME", ".config") / "config.toml",
            config_explicit=bool(config),
            catalog_dir=Path(env["BROKER_CATALOG_DIR"])
            if env.get("BROKER_CATALOG_DIR")
            else _home_dir(env, "XDG_DATA_HOME", ".local/share") / "catalog",
            cache_dir=_home_dir(env, "XDG_CACHE_HOME", ".cache") / "catalog",
            deployment=_deployment(env.get("BROKER_DEPLOYMENT", "")),
            sim_scenario=Path(env["BROKER_SIM_SCENARIO"])
            if env.get("BROKER_SIM_SCENARIO")
            else None,
            lease_seconds=_lease(env.get("BROKER_LEASE_SECONDS", "")),
            service_url=env.get("BROKER_URL", "").strip() or None,
            service_token=env.get("BROKER_TOKEN", "").strip() or None,
            credentials={k: env[k] for k in CREDENTIAL_VARS if env.get(k, "").strip()},
        )


def _burst_max_gpus(raw: str) -> int:
    if raw == "":
        return DEFAULT_BURST_MAX_GPUS
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"BROKER_BURST_MAX_GPUS must be an integer, got {raw!r}") from None
    if not MIN_GPUS <= value <= MAX_GPUS:
        raise ConfigError(
            f"BROKER_BURST_MAX_GPUS must be between {MIN_GPUS} and {MAX_GPUS}, got {value}"
        )
    return value


def _deployment(raw: str) -> str:
    if raw == "":
        return "default"
    if not (raw.replace("-", "").replace("_", "").isalnum() and raw.islower() and len(raw) <= 63):
        raise ConfigError(
            "BROKER_DEPLOYMENT must be lower-case letters, digits, '-' or '_' "
            f"(at most 63: it is a tag value on every cloud), got {raw!r}"
        )
    return raw


def _lease(raw: str) -> float:
    if raw == "":
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"BROKER_LEASE_SECONDS must be a number, got {raw!r}") from None
    if not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"BROKER_LEASE_SECONDS must be a finite number >= 1, got {raw!r}")
    return value


__all__ = [
    "DEFAULT_BURST_MAX_GPUS",
    "MAX_GPUS",
    "MIN_GPUS",
    "STATE_DB_FILENAME",
    "Settings",
]
