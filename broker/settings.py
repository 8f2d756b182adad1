"""Broker-wide settings that are not part of one request.

Read from the environment for now (a configuration file arrives with the provider
adapters). Each setting has a documented default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MIN_GPUS = 1
MAX_GPUS = 72  # the launch-file format's limit for every compute mode
DEFAULT_BURST_MAX_GPUS = 48  # "Burst experiments are currently limited to a maximum of 48 GPUs"


@dataclass(frozen=True)
class Settings:
    burst_max_gpus: int = DEFAULT_BURST_MAX_GPUS

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw = env.get("BROKER_BURST_MAX_GPUS")
        if raw is None or raw == "":
            return cls()
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"BROKER_BURST_MAX_GPUS must be an integer, got {raw!r}") from None
        if not MIN_GPUS <= value <= MAX_GPUS:
            raise ValueError(
                f"BROKER_BURST_MAX_GPUS must be between {MIN_GPUS} and {MAX_GPUS}, got {value}"
            )
        return cls(burst_max_gpus=value)
