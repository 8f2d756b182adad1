"""EC2 (and STS, SSM, Pricing) errors -> the broker's typed errors (:mod:`providers.errors`).

:func:`classify` reads the error *code* of a botocore ``ClientError``
(``exc.response["Error"]["Code"]``) and its HTTP status, never the message text. Codes are
looked up in :data:`ERROR_TABLE` (exact codes), then :data:`PREFIX_TABLE` (code families such
as ``InvalidAMIID.*``); an unknown code is a :class:`TransientError` if the HTTP status is
5xx and an :class:`InvalidLaunchError` otherwise, with the cloud's code kept in ``code``.
Table rows win over the status: EC2 reports ``InsufficientInstanceCapacity`` with HTTP 500,
and that is a stockout (next zone), not a transient error.

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
    ProviderError,
    QuotaError,
    RegionConfigError,
    ThrottledError,
    TransientError,
)

PROVIDER = "aws"

# EC2's error codes (plus the few STS/SSM/Pricing ones the adapter can meet), exact match.
ERROR_TABLE: Mapping[str, type[ProviderError]] = {
    # -- no capacity in this zone for this type now: next zone ----------------------------
    "InsufficientInstanceCapacity": CapacityError,
    "InsufficientHostCapacity": CapacityError,
    "InsufficientCapacityOnHost": CapacityError,
    "InsufficientReservedInstanceCapacity": CapacityError,
    "InsufficientCapacity": CapacityError,
    "UnfulfillableCapacity": CapacityError,
    "Unsupported": CapacityError,  # the type is not offered in this AZ
    "InsufficientFreeAddressesInSubnet": CapacityError,
    # -- regional quota, spot limits, region not enabled: next region ---------------------
    "SpotMaxPriceTooLow": QuotaError,
    "MaxSpotInstanceCountExceeded": QuotaError,
    "VcpuLimitExceeded": QuotaError,
    "InstanceLimitExceeded": QuotaError,
    "OptInRequired": QuotaError,
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
    "PendingVerification": AuthError,
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
    # -- the request itself is wrong: fail it ---------------------------------------------
    "InvalidParameterValue": InvalidLaunchError,
    "InvalidParameterCombination": InvalidLaunchError,
    "MissingParameter": InvalidLaunchError,
    "UnknownParameter": InvalidLaunchError,
    "IdempotentParameterMismatch": InvalidLaunchError,
}

# Code families, matched by prefix after the exact table: (prefix, class).
PREFIX_TABLE: tuple[tuple[str, type[ProviderError]], ...] = (
    ("InvalidAMIID.", RegionConfigError),  # NotFound, Malformed, Unavailable
    ("InvalidParameter", InvalidLaunchError),  # InvalidParameter, ...Value, ...Combination
)

# What a code means, added in front of the cloud's message where the code alone misleads.
_EXPLAIN: Mapping[str, str] = {
    "OptInRequired": (
        "region not enabled for this account (opt-in region, or an AMI that needs a "
        "Marketplace subscription)"
    ),
    "Unsupported": "instance type not supported in this availability zone",
}

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
        cls = lookup(code)
        if cls is None:
            cls = TransientError if status is not None and status >= 500 else InvalidLaunchError
        operation = getattr(exc, "operation_name", None)
        if code in _EXPLAIN:
            message = f"{_EXPLAIN[code]}: {message}"
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
