"""EC2 (and STS, SSM, Pricing) errors -> the broker's typed errors (:mod:`providers.errors`).

:func:`classify` reads the error *code* of a botocore ``ClientError``
(``exc.response["Error"]["Code"]``) and its HTTP status. Codes are looked up in
:data:`ERROR_TABLE` (exact codes), then :data:`PREFIX_TABLE` (code families such as
``InvalidAMIID.*``). Table rows win over the status: EC2 reports
``InsufficientInstanceCapacity`` with HTTP 500, and that is a stockout (next zone), not a
transient error.

An unknown code gets the default of its status family (:func:`_from_status`): 5xx
transient, 429 throttled, 401/403 auth, any other status an
:class:`~providers.errors.UnrecognizedError` (next region, said loudly). Nothing unknown
fails the request: only codes certainly about the request the broker built do
(``MissingParameter``, ``UnknownParameter``, ``IdempotentParameterMismatch``, a
``ParamValidationError`` botocore raises before sending). ``InvalidParameterValue`` and
``InvalidParameterCombination`` name what this region rejects far more often than a bug of
ours (an AMI without ENA for the type, an architecture mismatch, a zone): next region.

One code carries its scope only in its message, read in one place, :func:`_by_message`:
``Unsupported`` means "Your requested instance type (p4d.24xlarge) is not supported in
your requested Availability Zone (us-east-1e)..." (that zone: :class:`NotOfferedError`)
or "The requested configuration is currently not supported..." (the type or its
configuration in this region: next region).

Transport errors (no HTTP answer at all) become :class:`CallTimeoutError` (connect and read
timeouts) or :class:`TransientError` (connection refused, reset, DNS); missing or expired
credentials are an :class:`AuthError`. Messages are kept as the cloud wrote them, with
anything shaped like an access key id redacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from botocore import exceptions as boto_exc  # type: ignore[import-untyped]
from botocore.parsers import ResponseParserError  # type: ignore[import-untyped]

from providers.errors import (
    AuthError,
    CallTimeoutError,
    CapacityError,
    InvalidLaunchError,
    NotConfiguredError,
    NotOfferedError,
    ProviderError,
    QuotaError,
    RegionConfigError,
    ThrottledError,
    TransientError,
    UnrecognizedError,
)

PROVIDER = "aws"

# EC2's error codes (plus the few STS/SSM/Pricing ones the adapter can meet), exact match.
# The real wording of each row is in tests/providers/aws/test_errors.py.
ERROR_TABLE: Mapping[str, type[ProviderError]] = {
    # -- no capacity in this zone for this type now: next zone ----------------------------
    "InsufficientInstanceCapacity": CapacityError,
    "InsufficientHostCapacity": CapacityError,
    "InsufficientCapacityOnHost": CapacityError,
    "InsufficientReservedInstanceCapacity": CapacityError,
    "InsufficientCapacity": CapacityError,
    "UnfulfillableCapacity": CapacityError,
    "InsufficientFreeAddressesInSubnet": CapacityError,  # the zone's configured subnet
    "InsufficientAddressCapacity": CapacityError,  # EC2's own address pool, a server error
    "SpotMaxPriceTooLow": CapacityError,  # the Spot price of this zone is over the cap
    # -- the type or its configuration is not offered here: see _by_message ---------------
    "Unsupported": RegionConfigError,  # naming the Availability Zone: NotOfferedError
    # -- regional quota: next region ------------------------------------------------------
    "MaxSpotInstanceCountExceeded": QuotaError,  # Spot vCPUs of the family, per region
    "VcpuLimitExceeded": QuotaError,
    "InstanceLimitExceeded": QuotaError,
    "VolumeLimitExceeded": QuotaError,  # EBS storage of the region
    # -- the region is not usable by this account yet: next region ------------------------
    "OptInRequired": RegionConfigError,  # an opt-in region, or a Marketplace AMI
    "PendingVerification": RegionConfigError,  # a region being validated for the account
    # -- throttling: the same call again, after a backoff ---------------------------------
    "RequestLimitExceeded": ThrottledError,
    "Throttling": ThrottledError,
    "ThrottlingException": ThrottledError,
    "EC2ThrottledException": ThrottledError,
    "RequestThrottled": ThrottledError,
    # -- the service failed: the same call again -------------------------------------------
    "InternalError": TransientError,
    "InternalFailure": TransientError,
    "InternalErrorException": TransientError,  # Pricing
    "Unavailable": TransientError,
    "ServiceUnavailable": TransientError,
    "RequestTimeout": CallTimeoutError,
    # -- credentials or account: nothing on AWS can work now -------------------------------
    "UnauthorizedOperation": AuthError,
    "AuthFailure": AuthError,
    "Blocked": AuthError,
    "ExpiredToken": AuthError,
    "InvalidClientTokenId": AuthError,
    "SignatureDoesNotMatch": AuthError,
    "AccessDenied": AuthError,  # STS
    "AccessDeniedException": AuthError,  # SSM, Pricing
    # -- per-region configuration that does not exist in that region: next region ----------
    "InvalidSubnetID.NotFound": RegionConfigError,
    "InvalidGroup.NotFound": RegionConfigError,
    "InvalidKeyPair.NotFound": RegionConfigError,
    "ParameterNotFound": RegionConfigError,  # SSM: image_ssm_parameter not in this region
    # A value this region rejects (AMI, type, zone, network), far more often than a bug of
    # ours: next region, the code and message kept for describe.
    "InvalidParameterValue": RegionConfigError,
    "InvalidParameterCombination": RegionConfigError,
    # -- the request itself is wrong, certainly ours: fail it ---------------------------------
    "MissingParameter": InvalidLaunchError,
    "UnknownParameter": InvalidLaunchError,
    "IdempotentParameterMismatch": InvalidLaunchError,
}

# Code families, matched by prefix after the exact table: (prefix, class).
PREFIX_TABLE: tuple[tuple[str, type[ProviderError]], ...] = (
    ("InvalidAMIID.", RegionConfigError),  # NotFound, Malformed, Unavailable
    ("InvalidPlacementGroup.", RegionConfigError),  # Unknown, InUse, Duplicate
    ("InvalidInstanceID.", InvalidLaunchError),  # an instance id of ours (terminate, describe)
    ("InvalidParameter", RegionConfigError),  # InvalidParameter, ...Dependency, ...
)

# What a code means, added in front of the cloud's message where the code alone misleads.
_EXPLAIN: Mapping[str, str] = {
    "OptInRequired": (
        "region not enabled for this account (opt-in region, or an AMI that needs a "
        "Marketplace subscription)"
    ),
    "PendingVerification": "this region is still being validated for the account",
    "SpotMaxPriceTooLow": "the Spot price in this zone is over the price cap",
}

# ``Unsupported`` naming the zone: "Your requested instance type (m5.large) is not supported
# in your requested Availability Zone (us-east-1e). Please retry your request by not
# specifying an Availability Zone or choosing us-east-1a, ..."
_NOT_IN_THIS_ZONE = re.compile(r"not supported in your requested Availability Zone", re.I)


def _by_message(code: str, message: str) -> type[ProviderError] | None:
    """The one code whose scope EC2 puts only in its message (see the module docstring)."""
    if code == "Unsupported":
        return NotOfferedError if _NOT_IN_THIS_ZONE.search(message) else RegionConfigError
    return None


def _from_status(status: int | None) -> type[ProviderError]:
    """The default for a code the tables do not know, by HTTP status family."""
    if status == 429:
        return ThrottledError
    if status is not None and status >= 500:
        return TransientError
    if status in (401, 403):
        return AuthError
    return UnrecognizedError


# botocore exceptions raised without any HTTP answer, by class (most specific first).
_TRANSPORT: tuple[tuple[type[Exception], type[ProviderError]], ...] = (
    (boto_exc.ConnectTimeoutError, CallTimeoutError),
    (boto_exc.ReadTimeoutError, CallTimeoutError),
    (boto_exc.ConnectionError, TransientError),  # EndpointConnectionError, SSL, proxy
    (boto_exc.HTTPClientError, TransientError),  # ConnectionClosedError, streaming errors
    (ResponseParserError, TransientError),  # an answer that is not AWS's (a proxy's 5xx page)
    (boto_exc.NoCredentialsError, AuthError),
    (boto_exc.PartialCredentialsError, AuthError),
    (boto_exc.CredentialRetrievalError, AuthError),
    (boto_exc.TokenRetrievalError, AuthError),
    (boto_exc.SSOError, AuthError),
    (boto_exc.NoRegionError, NotConfiguredError),
    (boto_exc.ParamValidationError, InvalidLaunchError),
)

_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")


def lookup(code: str) -> type[ProviderError] | None:
    """The class the table gives an EC2 error code, or None if the code is unknown."""
    found = ERROR_TABLE.get(code)
    if found is not None:
        return found
    for prefix, cls in PREFIX_TABLE:
        if code.startswith(prefix):
            return cls
    return None


def error_code(exc: BaseException) -> str | None:
    """The cloud's error code of a botocore ClientError, None for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code else None


def _status(response: Mapping[str, Any]) -> int | None:
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if isinstance(status, int) else None


def _retry_after(response: Mapping[str, Any]) -> float | None:
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _short(text: str, most: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 3] + "..."


def redact(text: str) -> str:
    """The text with anything shaped like an AWS access key id replaced."""
    return _ACCESS_KEY_ID.sub("<access-key-id>", text)


def classify(exc: Exception) -> ProviderError:
    """The typed error for a botocore exception (any other exception: InvalidLaunchError)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, boto_exc.ClientError):
        response: Mapping[str, Any] = exc.response or {}
        error = response.get("Error", {}) or {}
        status = _status(response)
        code = str(error.get("Code") or (status if status is not None else "Unknown"))
        message = str(error.get("Message") or "").strip() or f"HTTP {status}"
        known = lookup(code)
        cls = (_by_message(code, message) or known) if known else _from_status(status)
        operation = getattr(exc, "operation_name", None)
        if code in _EXPLAIN:
            message = f"{_EXPLAIN[code]}: {message}"
        elif cls is NotOfferedError:
            message = f"instance type not offered in this availability zone: {message}"
        elif cls is UnrecognizedError:
            message = f"unrecognized {PROVIDER} error {code} (HTTP {status}): {message}"
        if operation:
            message = f"{operation}: {message}"
        return cls(
            redact(message), code=code, provider=PROVIDER, retry_after=_retry_after(response)
        )
    for kind, cls in _TRANSPORT:
        if isinstance(exc, kind):
            return cls(_short(redact(str(exc))), code=type(exc).__name__, provider=PROVIDER)
    if isinstance(exc, boto_exc.BotoCoreError):
        return InvalidLaunchError(redact(str(exc)), code=type(exc).__name__, provider=PROVIDER)
    return InvalidLaunchError(
        redact(f"unexpected {type(exc).__name__}: {exc}"),
        code=type(exc).__name__,
        provider=PROVIDER,
    )


# Every botocore exception the adapter catches and hands to classify(). ResponseParserError
# (a response that is not AWS's XML/JSON) is not a BotoCoreError.
BOTO_ERRORS: tuple[type[Exception], ...] = (
    boto_exc.ClientError,
    boto_exc.BotoCoreError,
    ResponseParserError,
)


def call(client: Any, operation: str, **params: Any) -> Any:
    """One API call; a botocore exception becomes its ProviderError."""
    try:
        return getattr(client, operation)(**params)
    except BOTO_ERRORS as exc:
        raise classify(exc) from exc


def pages(client: Any, operation: str, **params: Any) -> list[Any]:
    """Every page of a paginated call; a botocore exception becomes its ProviderError."""
    try:
        return list(client.get_paginator(operation).paginate(**params))
    except BOTO_ERRORS as exc:
        raise classify(exc) from exc


def chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of at most ``size`` (EC2 calls cap how many ids they take)."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
