"""The one table of clouds: a new cloud is a folder ``providers/<cloud>/`` (its adapter,
``errors.classify``, ``config.py`` with its section model, ``spec.py`` with its
:class:`~providers.spec.CloudSpec`) plus one entry here.

The configuration file's sections, the registry (open, refresh, status), the quota scopes
the provisioner blocks and the CLI's list of clouds all come from :data:`CLOUDS`. The
simulated cloud (``sim``) is not in the table: it is used only when a command asks for it.
Importing this module imports no cloud SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from providers.aws.spec import SPEC as AWS
from providers.azure.spec import SPEC as AZURE
from providers.azure.spec import azure_family
from providers.gcp.spec import SPEC as GCP
from providers.spec import CloudSpec

if TYPE_CHECKING:
    from shapes.model import Shape

CLOUDS: Mapping[str, CloudSpec[Any]] = MappingProxyType(
    {spec.name: spec for spec in (AWS, GCP, AZURE)}
)
KNOWN_PROVIDERS: tuple[str, ...] = tuple(CLOUDS)


def default_quota_bucket(shape: Shape) -> str:
    """One bucket per GPU model (GCP's rule, and any cloud's that names none)."""
    return "gpu-" + shape.gpu


def quota_bucket(shape: Shape) -> str:
    """The quota a shape draws on, within its region and market, by its cloud's rule."""
    spec = CLOUDS.get(shape.provider)
    rule = spec.quota_bucket if spec is not None else None
    return (rule or default_quota_bucket)(shape)


__all__ = [
    "CLOUDS",
    "KNOWN_PROVIDERS",
    "CloudSpec",
    "azure_family",
    "default_quota_bucket",
    "quota_bucket",
]
