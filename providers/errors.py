"""Typed cloud errors: what went wrong, and how far the failure reaches.

Adapters catch their SDK's exceptions and raise one of these; the provisioner decides what
to do from ``reach`` alone, never from message text. A *local* error is about this broker's
own configuration (not the cloud's state), so it is never remembered as a blocked scope::

    ProviderError                       reach      lifecycle reason
    +-- TransientError                  CALL       Error     retry the same call (backoff)
    |   +-- ThrottledError              CALL       Error     429 / RequestLimitExceeded
    |   +-- CallTimeoutError            CALL       Timeout   the call itself timed out
    +-- CapacityError                   ZONE       NoCapacity      next zone
    |   +-- RegionCapacityError         REGION     NoCapacity      next region
    +-- QuotaError                      REGION     QuotaExceeded   next region
    +-- RegionConfigError               REGION     NotConfigured   next region
    |   +-- RegionNotConfiguredError    REGION     NotConfigured   next region (local)
    +-- ProviderUnavailableError        PROVIDER   Unauthorized    skip the provider
    |   +-- AuthError                   PROVIDER   Unauthorized
    |   +-- GlobalQuotaError            PROVIDER   QuotaExceeded
    |   +-- NotConfiguredError          PROVIDER   NotConfigured   (local)
    +-- InvalidLaunchError              REQUEST    InvalidRequest  fail the request
        +-- BootstrapTooLargeError      PROVIDER   InvalidRequest  skip the provider (local)
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
