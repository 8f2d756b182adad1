"""Typed cloud errors: what went wrong, and how far the failure reaches.

Adapters catch their SDK's exceptions and raise one of these; the provisioner decides what
to do from ``reach`` alone, never from message text. A *local* error is about this broker's
own configuration (not the cloud's state), so it is never remembered as a blocked scope::

    ProviderError                       reach      lifecycle reason
    +-- TransientError                  CALL       Error     retry the same call (backoff)
    |   +-- ThrottledError              CALL       Error     429 / RequestLimitExceeded
    |   +-- CallTimeoutError            CALL       Timeout   the call itself timed out
    +-- CapacityError                   ZONE       NoCapacity      next zone
    |   +-- NotOfferedError             ZONE       NoCapacity      next zone (type not there)
    |   +-- RegionCapacityError         REGION     NoCapacity      next region
    +-- QuotaError                      REGION     QuotaExceeded   next region
    +-- RegionConfigError               REGION     NotConfigured   next region
    |   +-- RegionNotConfiguredError    REGION     NotConfigured   next region (local)
    +-- UnrecognizedError               REGION     Error           next region, said loudly
    +-- ProviderUnavailableError        PROVIDER   Unauthorized    skip the provider
    |   +-- AuthError                   PROVIDER   Unauthorized
    |   +-- GlobalQuotaError            PROVIDER   QuotaExceeded
    |   +-- ProviderConfigError         PROVIDER   NotConfigured   (the cloud's account state)
    |   +-- NotConfiguredError          PROVIDER   NotConfigured   (local)
    +-- InvalidLaunchError              REQUEST    InvalidRequest  fail the request
        +-- BootstrapTooLargeError      PROVIDER   InvalidRequest  skip the provider (local)

The rules every cloud's table follows (issue 14):

- **Fail the request** (:class:`InvalidLaunchError`) only for errors certainly about the
  request the broker built: a malformed or missing parameter of ours, an idempotency token
  reused with other parameters, a name of ours taken. Never for a zone, region, instance
  type, image, network or policy: those reach a zone or a region, so other shapes and
  other clouds still get their turn.
- **When in doubt, move on**: a known code whose scope the cloud does not say, and every
  code the table does not know, reaches the next region, and the attempt keeps the cloud's
  code and message for ``broker describe``. An unknown code gets the default of its HTTP
  status family (documented by each table): 5xx transient, 429 throttled, 401/403 auth,
  any other 4xx or no status an :class:`UnrecognizedError` (next region, its message
  starting ``unrecognized <cloud> error``). Nothing unknown ever fails the request.
- **Scope from structured fields first** (a quota metric, error details, an ARM
  ``target``), then from the message only where the cloud puts it nowhere else, in one
  documented function per cloud, each pattern tested with the cloud's real wording.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from shapes.errors import BrokerError, Exit


class Reach(StrEnum):
    """How far a failure reaches: the smallest scope that is worth trying again."""

    CALL = "call"  # the same call again, after a backoff
    ZONE = "zone"  # another zone of the same region
    REGION = "region"  # another region
    PROVIDER = "provider"  # another provider
    REQUEST = "request"  # nothing: the request itself is wrong


class ConfigError(BrokerError):
    """The configuration file cannot be read or is invalid; the message names the key."""

    exit_code = Exit.INVALID
    http_status = 500


class ScenarioError(ConfigError, ValueError):
    """A simulated cloud's scenario file is missing, unreadable or invalid (the message
    names the file and the key). Still a ValueError, as it was before it was a ConfigError."""


class ProviderError(BrokerError):
    """A classified cloud error. ``code`` is the cloud's own error code, kept for the record."""

    exit_code = Exit.LEAK
    http_status = 502
    reach: ClassVar[Reach] = Reach.REQUEST
    reason: ClassVar[str] = "Error"
    # A fact about this broker's own configuration, not the cloud's state: the provisioner
    # moves on as ``reach`` says but never stores a block for it (fixing the file fixes it).
    local: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str,
        provider: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.provider = provider
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.provider} {self.code}: {self.message}"


class TransientError(ProviderError):
    """Throttling, 5xx, a dropped connection: the same call may work after a backoff."""

    reach = Reach.CALL
    reason = "Error"


class ThrottledError(TransientError):
    reason = "Error"


class CallTimeoutError(TransientError):
    reason = "Timeout"


class CapacityError(ProviderError):
    """The zone has no capacity for this shape now (stockout)."""

    reach = Reach.ZONE
    reason = "NoCapacity"


class NotOfferedError(CapacityError):
    """This zone does not offer the instance type (or its accelerator) at all: GCP's
    "Machine type with name 'X' does not exist in zone 'Y'", AWS ``Unsupported`` naming
    the Availability Zone, Azure ``AvailabilityZoneNotSupported``. Another zone of the
    region may: the catalog was wrong about this one."""


class RegionCapacityError(CapacityError):
    """The whole region is out of this shape (GCP ``REGION_RESOURCE_POOL_EXHAUSTED``, Azure
    ``SkuNotAvailable`` naming no zone): no zone of the region is worth asking."""

    reach = Reach.REGION


class RegionConfigError(ProviderError):
    """This region cannot be used as configured (an image, subnet, security group or key
    pair that does not exist there; no subnet configured for it): other regions may work."""

    reach = Reach.REGION
    reason = "NotConfigured"


class RegionNotConfiguredError(RegionConfigError):
    """The configuration does not name this region (or gives it no subnet): local."""

    local = True


class UnrecognizedError(ProviderError):
    """A 4xx code (or an answer without a status) the cloud's table does not know. Not
    certainly about the request, so never a reason to fail it: the broker moves on to the
    next region and the message says loudly that the code was not recognized."""

    reach = Reach.REGION
    reason = "Error"


class QuotaError(ProviderError):
    """A regional quota is exhausted for this shape's quota bucket."""

    reach = Reach.REGION
    reason = "QuotaExceeded"


class ProviderUnavailableError(ProviderError):
    """Nothing on this provider can work now (credentials, account-wide quota, config)."""

    reach = Reach.PROVIDER
    reason = "Unauthorized"


class AuthError(ProviderUnavailableError):
    reason = "Unauthorized"


class GlobalQuotaError(ProviderUnavailableError):
    reason = "QuotaExceeded"


class ProviderConfigError(ProviderUnavailableError):
    """The cloud refuses something every region shares, for a reason of the account
    (Azure ``ResourcePurchaseValidationFailed``: the image's Marketplace terms are not
    accepted, or the subscription cannot buy it): no region can work until it is fixed."""

    reason = "NotConfigured"


class NotConfiguredError(ProviderUnavailableError):
    """The cloud is not enabled or configured here: a local fact, never stored as a block."""

    reason = "NotConfigured"
    local = True


class InvalidLaunchError(ProviderError):
    """The request is malformed for the cloud; trying elsewhere would not help."""

    reach = Reach.REQUEST
    reason = "InvalidRequest"


class BootstrapTooLargeError(InvalidLaunchError):
    """The node bootstrap script is over this cloud's boot-hook limit (AWS UserData, GCP
    metadata value, Azure customData). Another cloud with a larger limit can still take the
    same request, so it skips this provider only; a fact about our script, never stored."""

    reach = Reach.PROVIDER
    local = True
