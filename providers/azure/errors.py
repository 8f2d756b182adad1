"""Azure Resource Manager errors -> the broker's typed errors (:mod:`providers.errors`).

:func:`classify` reads the ARM error *code* (``exc.error.code``, and the codes nested in
``exc.error.details``, walked recursively: ARM wraps the code that matters, e.g.
``ResourceDeploymentFailure`` around ``AllocationFailed``), never the exception class or the
HTTP status alone, because azure-core's classes and statuses mislead:

- every HTTP 409 becomes ``ResourceExistsError``, even ``SkuNotAvailable`` or a quota error;
- a long-running operation that ends ``Failed`` raises a plain ``HttpResponseError`` whose
  status is the last poll's (usually 200), with ``AllocationFailed`` as its code.

Codes are looked up in :data:`ERROR_TABLE`; the first code found (outermost first, then the
details depth-first) that the table knows decides. The scope of three codes is not in the
code: it is read from the error's ``target`` first (a structured field), then from the
message where Azure puts it only there, all in :func:`_scoped` (the one place this module
reads text), each pattern tested with Azure's real wording:

- ``SkuNotAvailable``: the size is restricted for the subscription. When the message names
  zones (``... in location 'eastus' zones '1' ...``) the restriction is zonal (another zone
  may work: :class:`CapacityError`); an empty list (``zones ''``) or none covers the region
  (:class:`RegionCapacityError`, next region);
- ``InvalidParameter``: its ``target`` says which parameter. The VM size ("The requested
  VM size Standard_ND96asr_v4 is not available in the current region", target ``vmSize``)
  is regional (:class:`RegionCapacityError`); the image or network is this region's
  configuration (:class:`RegionConfigError`); a field only the broker fills in (admin
  user, SSH key, custom data, computer name, tags) is a bug of ours and fails the request;
  any other or no target: next region (when in doubt, move on);
- ``OperationNotAllowed`` is overloaded: a cores/vCPU quota (``QuotaError``), a spot max price
  below the current price (``QuotaError``: next region, the adapter always sends -1), or a
  throttle (``ThrottledError``). Anything else is a :class:`RegionConfigError` (next region):
  the safe default, it neither hammers the same call nor gives up the whole request.

A policy refusal (``RequestDisallowedByPolicy``, an allowed-locations assignment;
``RequestDisallowedByAzure``, a region closed to the subscription) is about that region,
never the credentials, though it comes as HTTP 403.

With no known code, the status decides: 429 throttled (``Retry-After`` kept in
``retry_after``), 5xx transient, 401/403 auth, anything else an
:class:`UnrecognizedError` (next region, said loudly: never a failed request). Transport
errors (no HTTP answer) are :class:`TransientError` (:class:`CallTimeoutError` for timeouts);
azure-identity's ``CredentialUnavailableError`` / ``ClientAuthenticationError`` are
:class:`AuthError`. Messages keep the cloud's wording with bearer tokens, JWTs and secrets
redacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from azure.core import exceptions as core_exc

from providers.errors import (
    AuthError,
    CallTimeoutError,
    CapacityError,
    InvalidLaunchError,
    NotOfferedError,
    ProviderConfigError,
    ProviderError,
    QuotaError,
    RegionCapacityError,
    RegionConfigError,
    ThrottledError,
    TransientError,
    UnrecognizedError,
)

PROVIDER = "azure"
# ARM / Compute error codes -> the typed error (exact match, case-insensitive). The real
# wording of each row is in tests/providers/azure/test_errors.py.
ERROR_TABLE: Mapping[str, type[ProviderError]] = {
    # -- no capacity for this size here now: next zone ------------------------------------
    "AllocationFailed": CapacityError,
    "ZonalAllocationFailed": CapacityError,
    "OverconstrainedAllocationRequest": CapacityError,
    "OverconstrainedZonalAllocationRequest": CapacityError,
    "SkuNotAvailable": CapacityError,  # zonal or regional: see _scoped
    "VMEvictedDuringLaunch": CapacityError,  # the adapter's own code for a spot eviction
    "AvailabilityZoneNotSupported": NotOfferedError,  # the size is not in this zone
    "NotAvailableForSubscription": RegionCapacityError,  # the size, for this subscription
    # -- regional quota: next region -----------------------------------------------------
    "QuotaExceeded": QuotaError,
    "ResourceQuotaExceeded": QuotaError,
    "OperationNotAllowed": RegionConfigError,  # quota / spot price / throttle: _scoped
    # -- throttling and service errors: the same call again -------------------------------
    "TooManyRequests": ThrottledError,
    "RetryableError": TransientError,
    "InternalServerError": TransientError,
    "InternalExecutionError": TransientError,
    "InternalOperationError": TransientError,
    "ServiceUnavailable": TransientError,
    "GatewayTimeout": CallTimeoutError,
    "OperationPreempted": TransientError,
    # -- credentials or subscription: nothing on Azure can work now ------------------------
    "AuthorizationFailed": AuthError,
    "AuthenticationFailed": AuthError,
    "InvalidAuthenticationToken": AuthError,
    "InvalidAuthenticationTokenTenant": AuthError,
    "ExpiredAuthenticationToken": AuthError,
    "LinkedAuthorizationFailed": AuthError,
    "ReadOnlyDisabledSubscription": AuthError,
    "SubscriptionNotFound": AuthError,
    "MissingSubscriptionRegistration": AuthError,
    "ResourceGroupNotFound": AuthError,  # the configured group: nothing can launch
    # The image's Marketplace terms not accepted, or an offer the subscription cannot buy:
    # every region shares the image, so the whole cloud, until someone accepts or fixes it.
    "ResourcePurchaseValidationFailed": ProviderConfigError,
    "MarketplacePurchaseEligibilityFailed": ProviderConfigError,
    # -- this region refuses: its policy, or what the configuration names is missing here
    "RequestDisallowedByPolicy": RegionConfigError,  # e.g. an allowed-locations policy
    "RequestDisallowedByAzure": RegionConfigError,  # a region closed to the subscription
    "ImageNotFound": RegionConfigError,
    "PlatformImageNotFound": RegionConfigError,
    "InvalidResourceReference": RegionConfigError,  # e.g. a subnet of another region
    "NotFound": RegionConfigError,
    "ResourceNotFound": RegionConfigError,
    "LocationNotAvailableForResourceType": RegionConfigError,
    "NoRegisteredProviderFound": RegionConfigError,
    "InvalidParameter": RegionConfigError,  # by its target: see _scoped
    "BadRequest": RegionConfigError,  # ARM's catch-all: when in doubt, the next region
    # -- the request itself is wrong, certainly ours: fail it -----------------------------
    "InvalidRequestContent": InvalidLaunchError,  # a body that does not deserialize
    "InvalidRequestFormat": InvalidLaunchError,
    "PropertyChangeNotAllowed": InvalidLaunchError,  # a VM name of ours, other properties
    "IdempotentParameterMismatch": InvalidLaunchError,
}
_TABLE = {code.lower(): cls for code, cls in ERROR_TABLE.items()}

_ZONE_LIST = re.compile(r"\bzones?\s+'[^']+'")  # zones '' names none: the region
_SIZE_NOT_IN_REGION = re.compile(r"requested VM size \S+ is not available in the current region")
# InvalidParameter targets (the last dotted part, lower case) that only the broker fills in.
_OUR_FIELDS = frozenset(
    {"adminusername", "adminpassword", "customdata", "computername", "ssh", "publickeys"}
    | {"keydata", "tags", "name", "osprofile", "linuxconfiguration", "userdata"}
)
_SIZE_FIELDS = frozenset({"vmsize", "hardwareprofile"})
_REGION_FIELDS = frozenset(
    {"imagereference", "publisher", "offer", "sku", "version", "plan", "id"}
    | {"networkinterfaces", "subnet", "networkprofile", "proximityplacementgroup"}
)
_QUOTA_WORDS = ("quota", "cores", "vcpu", "exceeding approved", "limit")
_PRICE_WORDS = ("max price", "maxprice", "spot price", "billingprofile")
_THROTTLE_WORDS = ("throttl", "too many requests", "rate limit")

_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-_.~+/=]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*")
_SECRETS = re.compile(
    r"(?i)((?:access_?token|accessToken|client_?secret|password|sig|signature|"
    r"refresh_?token|id_token)\s*[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;]+"
)


def lookup(code: str) -> type[ProviderError] | None:
    """The class the table gives an ARM error code (case-insensitive), None if unknown."""
    return _TABLE.get(code.lower())


def redact(text: str) -> str:
    """The text without bearer tokens, JWTs or ``secret=...``-style values."""
    text = _BEARER.sub(r"\1 <redacted>", text)
    text = _JWT.sub("<redacted-jwt>", text)
    return _SECRETS.sub(r"\1<redacted>", text)


def _short(text: str, most: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 3] + "..."


def _walk(error: Any) -> Iterator[tuple[str, str, str]]:
    """(code, message, target) of an ARM error and of every nested detail, outermost
    first (target "" when the error names none)."""
    if error is None:
        return
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        target, details = error.get("target"), error.get("details") or ()
    else:
        code, message = getattr(error, "code", None), getattr(error, "message", None)
        target, details = getattr(error, "target", None), getattr(error, "details", None) or ()
    if code:
        yield str(code), str(message or ""), str(target or "")
    for detail in details:
        yield from _walk(detail)


def error_codes(exc: BaseException) -> list[tuple[str, str]]:
    """Every (code, message) an azure-core exception carries, outermost first."""
    return [(code, message) for code, message, _ in _walk(getattr(exc, "error", None))]


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def retry_after(exc: BaseException) -> float | None:
    """The ``Retry-After`` of the response (seconds), if it has a numeric one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _scoped(code: str, message: str, target: str) -> type[ProviderError] | None:
    """The three codes whose scope is in their target or message (see the docstring)."""
    text, name = message.lower(), code.lower()
    if name == "skunotavailable":
        # "... not available in location 'eastus' zones '1' for subscription ..." names the
        # zones; every variant ends "... deploy to a different location or zones", so only a
        # quoted, non-empty zone list counts.
        return CapacityError if _ZONE_LIST.search(text) else RegionCapacityError
    if name == "invalidparameter":
        field = target.rsplit(".", 1)[-1].strip("[]0123456789").lower()
        if field in _SIZE_FIELDS or _SIZE_NOT_IN_REGION.search(message):
            return RegionCapacityError
        if field in _OUR_FIELDS:
            return InvalidLaunchError
        return RegionConfigError  # an image, a network, or no target: next region
    if name == "operationnotallowed":
        if any(w in text for w in _PRICE_WORDS):
            return QuotaError
        if any(w in text for w in _THROTTLE_WORDS):
            return ThrottledError
        if any(w in text for w in _QUOTA_WORDS):
            return QuotaError
        return RegionConfigError
    return None


def _from_status(status: int | None) -> type[ProviderError]:
    if status == 429:
        return ThrottledError
    if status in (408, 504):
        return CallTimeoutError
    if status is not None and status >= 500:
        return TransientError
    if status in (401, 403):
        return AuthError
    return UnrecognizedError


def _credential_error(exc: BaseException) -> bool:
    """azure-identity's CredentialUnavailableError (a ClientAuthenticationError subclass),
    checked without importing azure.identity here."""
    return any(c.__name__ == "CredentialUnavailableError" for c in type(exc).__mro__)


def classify(exc: BaseException) -> ProviderError:
    """The typed error for an azure-core / azure-identity exception (anything unexpected:
    InvalidLaunchError, with the exception's class as its code)."""
    if isinstance(exc, ProviderError):
        return exc
    if _credential_error(exc):
        return AuthError(
            _short(redact(str(exc))) or "no Azure credential available",
            code="CredentialUnavailable",
            provider=PROVIDER,
        )
    if isinstance(exc, core_exc.HttpResponseError):
        status = _status(exc)
        codes = list(_walk(getattr(exc, "error", None)))
        cls: type[ProviderError] | None = None
        code = message = ""
        for found_code, found_message, target in codes:
            known = lookup(found_code)
            if known is not None:
                code, message = found_code, found_message
                cls = _scoped(found_code, found_message, target) or known
                break
        if cls is None:
            if codes:
                code, message, _ = codes[-1]
            if isinstance(exc, core_exc.ClientAuthenticationError) and status != 403:
                cls = AuthError
            else:
                cls = _from_status(status)
        if not code:
            code = str(status) if status is not None else type(exc).__name__
        if not message:
            message = getattr(exc, "message", None) or str(exc) or f"HTTP {status}"
        hint = retry_after(exc)
        prefix = f"HTTP {status}: " if status is not None and status != 200 else ""
        if cls is UnrecognizedError:
            prefix = f"unrecognized {PROVIDER} error {code} (HTTP {status}): "
        return cls(
            _short(redact(f"{prefix}{message}")), code=code, provider=PROVIDER, retry_after=hint
        )
    if isinstance(exc, core_exc.ClientAuthenticationError):
        return AuthError(_short(redact(str(exc))), code=type(exc).__name__, provider=PROVIDER)
    if isinstance(exc, (core_exc.ServiceRequestTimeoutError, core_exc.ServiceResponseTimeoutError)):
        return CallTimeoutError(
            _short(redact(str(exc))), code=type(exc).__name__, provider=PROVIDER
        )
    if isinstance(exc, (core_exc.ServiceRequestError, core_exc.ServiceResponseError)):
        return TransientError(_short(redact(str(exc))), code=type(exc).__name__, provider=PROVIDER)
    if isinstance(exc, core_exc.AzureError):
        return TransientError(_short(redact(str(exc))), code=type(exc).__name__, provider=PROVIDER)
    return InvalidLaunchError(
        _short(redact(f"unexpected {type(exc).__name__}: {exc}")),
        code=type(exc).__name__,
        provider=PROVIDER,
    )
