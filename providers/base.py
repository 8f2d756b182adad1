"""The provider interface every cloud adapter (and the simulated cloud) implements.

A provider sells shapes and launches *gangs*: N identical nodes of one shape in one zone,
all or nothing. Every resource it creates carries the broker's tags (cluster, attempt), so
that ``list_tagged`` can find whatever a crashed or confused broker left behind.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from providers.errors import BootstrapTooLargeError, InvalidLaunchError, RegionNotConfiguredError
from providers.quotas import QuotaReport
from shapes.catalog import Catalog
from shapes.model import Shape

TAG_BROKER = "broker"  # value: the deployment name (``BROKER_DEPLOYMENT``, default "default")
TAG_CLUSTER = "broker-cluster"
TAG_ATTEMPT = "broker-attempt"

# The most each cloud's boot hook takes (LaunchRequest.bootstrap), as each cloud counts it:
AWS_USER_DATA_LIMIT = 16 * 1024  # UserData: bytes of the script, before base64
GCP_METADATA_VALUE_LIMIT = 256 * 1024  # one metadata value (``startup-script``): bytes
AZURE_CUSTOM_DATA_LIMIT = 65_535  # customData: counted on its base64 text (stricter than
# the documented 65,535 bytes decoded, so that either reading of the limit holds)
BOOTSTRAP_LIMITS: Mapping[str, int] = {
    "aws": AWS_USER_DATA_LIMIT,
    "gcp": GCP_METADATA_VALUE_LIMIT,
    "azure": AZURE_CUSTOM_DATA_LIMIT,
}
_BOOTSTRAP_HOOKS = {
    "aws": "UserData (before base64)",
    "gcp": "the startup-script metadata value",
    "azure": "customData (base64)",
}


class NodeState(StrEnum):
    PENDING = "pending"  # created, not yet running or without an address
    RUNNING = "running"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class Node(BaseModel):
    """One instance a provider created for the broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    provider_id: str  # the cloud's instance id / name
    shape_id: str
    region: str
    zone: str
    state: NodeState
    private_ip: str | None = None
    tags: Mapping[str, str] = Field(default_factory=dict)

    @property
    def cluster_id(self) -> str | None:
        return self.tags.get(TAG_CLUSTER)

    @property
    def attempt(self) -> str | None:
        return self.tags.get(TAG_ATTEMPT)


@dataclass(frozen=True)
class AgentLaunch:
    """What a node needs to start its agent: where the service is, which cluster, the
    cluster's node token (never shown), and the agent's file (for the simulated cloud)."""

    service_url: str
    cluster_id: str
    node_token: str = field(repr=False)
    agent_path: str | None = None


class LaunchRequest(BaseModel):
    """Launch ``count`` nodes of ``shape`` in ``zone``, all or nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: Shape
    zone: str
    count: int = Field(ge=1)
    # Idempotency token of this attempt (at most 64 characters, AWS's limit). Clouds that
    # want another form (GCP: a UUID) derive it deterministically, e.g. uuid5 of the token.
    token: str = Field(min_length=1, max_length=64)
    tags: Mapping[str, str]
    # The script every node runs at first boot (broker.agent.bootstrap: it starts the node
    # agent), or None: nodes boot as the image does. It holds the cluster's node token, so
    # it is never part of the repr.
    bootstrap: str | None = Field(default=None, min_length=1, repr=False)
    # The same, as values, for a provider that starts the agent itself (the simulated
    # cloud runs each node as a local process). Clouds ignore it.
    agent: AgentLaunch | None = Field(default=None, repr=False)


def configured_shapes(catalog: Catalog, provider: str, regions: Sequence[str]) -> list[Shape]:
    """The catalog's shapes of ``provider`` in the regions its configuration names."""
    wanted = set(regions)
    return [s for s in catalog.shapes if s.provider == provider and s.region in wanted]


def check_launch_region(shape: Shape, provider: str, regions: Sequence[str]) -> None:
    """Refuse, before any cloud call, a shape of another cloud (the request is wrong) or of
    a region the configuration does not name (other regions may work)."""
    if shape.provider != provider:
        raise InvalidLaunchError(
            f"shape {shape.id} is not a {provider} shape", code="WrongProvider", provider=provider
        )
    if shape.region not in regions:
        raise RegionNotConfiguredError(
            f"region {shape.region} is not in [{provider}] regions ({', '.join(regions)})",
            code="NotConfigured",
            provider=provider,
        )


def bootstrap_size(script: str, provider: str) -> int:
    """The size of a boot script as ``provider`` counts it against its limit."""
    raw = script.encode("utf-8")
    return len(base64.b64encode(raw)) if provider == "azure" else len(raw)


def check_bootstrap(script: str | None, provider: str) -> None:
    """Refuse, before any cloud call, a boot script over the provider's limit
    (BootstrapTooLargeError). No script, or a provider without a limit (sim): nothing to do."""
    limit = BOOTSTRAP_LIMITS.get(provider)
    if script is None or limit is None:
        return
    size = bootstrap_size(script, provider)
    if size > limit:
        raise BootstrapTooLargeError(
            f"the node bootstrap script is {size:,} bytes as {provider} counts it; "
            f"{_BOOTSTRAP_HOOKS[provider]} takes at most {limit:,} (the script fetches the "
            "agent from the service; a very long service URL is what makes it grow)",
            code="BootstrapTooLarge",
            provider=provider,
        )


@runtime_checkable
class Provider(Protocol):
    """What the provisioner needs from a cloud. Errors are :mod:`providers.errors` types."""

    name: str

    def list_shapes(self) -> list[Shape]:
        """The shapes this provider can launch now, spot and on-demand, with prices."""
        ...

    def launch(self, request: LaunchRequest, *, timeout: float) -> list[Node]:
        """Create the gang and wait until every node is running with a private address.

        Returns the nodes in a stable order, or raises a ProviderError. On error some
        nodes may exist (a partial gang); they carry the request's tags, and the caller
        finds and terminates them with :meth:`describe` and :meth:`terminate`. Calling
        again with the same token must not create a second gang; the same token with a
        different shape, zone or count is an InvalidLaunchError (IdempotentParameterMismatch).
        """
        ...

    def describe(self, cluster_id: str) -> list[Node]:
        """Every node tagged ``broker-cluster=<cluster_id>`` that still exists (pending,
        running or terminating: a terminating node still bills)."""
        ...

    def terminate(self, nodes: Sequence[Node]) -> None:
        """Terminate these nodes; nodes already gone are fine. Returns once they no longer
        show in :meth:`describe` (the provisioner confirms a cleanup that way); raises
        ProviderError, or CallTimeoutError if they linger."""
        ...

    def list_tagged(self) -> list[Node]:
        """Every node that still exists and carries a ``broker-cluster`` tag, in every
        region the provider is configured for, whatever its ``broker`` (deployment) tag:
        the caller keeps only its own deployment's nodes."""
        ...


@runtime_checkable
class QuotaSource(Protocol):
    """A provider that can read its quotas (providers.quotas); the provisioner skips a plan
    whose gang cannot fit in them, and tries one it cannot read as before."""

    name: str

    def quotas(self, region: str) -> QuotaReport:
        """The quotas of ``region`` (and the project-wide ones) with their usage. What cannot
        be read (a missing permission, a quota the cloud does not answer for) is a warning
        in the report, never an exception; other failures are ProviderErrors."""
        ...
