"""One name per GPU across clouds.

Each cloud spells the same accelerator differently (AWS ``A100`` + 40960 MiB, GCP
``nvidia-tesla-a100``, Azure ``Standard_ND96asr_v4``). The catalog, the filters and the
adapters all go through :func:`normalize_gpu` so that ``--gpu a100-80gb`` means one thing.
"""

from __future__ import annotations

import re

# Canonical name -> memory per GPU in GiB.
GPU_MEMORY_GIB: dict[str, int] = {
    "H100": 80,
    "H100-NVL": 94,
    "H200": 141,
    "B200": 180,
    "MI300X": 192,
    "A100-40GB": 40,
    "A100-80GB": 80,
    "L40S": 48,
    "L4": 24,
    "A10G": 24,
    "A10": 24,
    "T4": 16,
    "V100-16GB": 16,
    "V100-32GB": 32,
}
CANONICAL_GPUS: frozenset[str] = frozenset(GPU_MEMORY_GIB)

# Spellings seen in the clouds' APIs and in users' mouths, lower-cased, separators removed.
_ALIASES: dict[str, str] = {
    # GCP accelerator type names
    "nvidiateslat4": "T4",
    "nvidiateslav100": "V100-16GB",
    "nvidiateslaa100": "A100-40GB",
    "nvidiaa10080gb": "A100-80GB",
    "nvidiah10080gb": "H100",
    "nvidiah100mega80gb": "H100",
    "nvidiah200141gb": "H200",
    "nvidiab200": "B200",
    "nvidial4": "L4",
    # plain spellings
    "h100": "H100",
    "h10080gb": "H100",
    "h100sxm": "H100",
    "h100mega": "H100",
    "h100nvl": "H100-NVL",
    "h200": "H200",
    "h200141gb": "H200",
    "b200": "B200",
    "mi300x": "MI300X",
    "amdmi300x": "MI300X",
    "amdinstinctmi300x": "MI300X",
    "a10040gb": "A100-40GB",
    "a10080gb": "A100-80GB",
    "l40s": "L40S",
    "l4": "L4",
    "a10g": "A10G",
    "a10": "A10",
    "t4": "T4",
    "teslat4": "T4",
    "v10016gb": "V100-16GB",
    "v10032gb": "V100-32GB",
}

# Names that cover several canonical GPUs when used as a filter ("--gpu A100").
FAMILIES: dict[str, frozenset[str]] = {
    "a100": frozenset({"A100-40GB", "A100-80GB"}),
    "v100": frozenset({"V100-16GB", "V100-32GB"}),
    "h100": frozenset({"H100", "H100-NVL"}),
}

_SEPARATORS = re.compile(r"[\s_\-.:/]+")


def _key(name: str) -> str:
    return _SEPARATORS.sub("", name.strip().lower())


def normalize_gpu(name: str, memory_gib: float | None = None) -> str:
    """Return the canonical name for a cloud's GPU name.

    ``memory_gib`` settles names that clouds reuse for two memory sizes (AWS calls both
    A100s ``A100`` and both V100s ``V100``). Raises ``ValueError`` for an unknown GPU.
    """
    key = _key(name)
    if key in ("a100", "v100"):
        if memory_gib is None:
            raise ValueError(f"GPU {name!r} is ambiguous without its memory size")
        if key == "a100":
            return "A100-80GB" if memory_gib > 60 else "A100-40GB"
        return "V100-32GB" if memory_gib > 24 else "V100-16GB"
    if key in _ALIASES:
        return _ALIASES[key]
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(sorted(CANONICAL_GPUS))}")


def gpu_filter_names(query: str) -> frozenset[str]:
    """The canonical GPUs a user's ``--gpu`` value selects (a family name selects all sizes)."""
    key = _key(query)
    if key in FAMILIES:
        return FAMILIES[key]
    return frozenset({normalize_gpu(query)})
