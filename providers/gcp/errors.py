"""Compute Engine (and Billing Catalog, google-auth) errors -> the broker's typed errors.

Errors reach the adapter in two shapes, and :func:`classify` reads both:

1. **Synchronous HTTP errors**: a ``google.api_core.exceptions.GoogleAPICallError`` subclass
   chosen by HTTP status, whose ``errors`` are *dicts* from the JSON body (``"reason"``:
   ``quotaExceeded``, ``rateLimitExceeded``, ``invalid``, ...) and whose ``details`` may hold
   ``google.rpc`` details (an ``ErrorInfo`` with a reason and metadata).
2. **Failed operations**: the adapter never calls ``ExtendedOperation.result()`` (it polls the
   real Google host); it reads ``op.error.errors`` itself and builds the exception with
   :func:`operation_error`. Its ``errors`` are ``compute_v1.Errors`` *protos* (``.code``,
   ``.error_details[].quota_info.metric_name``), and its status is the operation's
   ``httpErrorStatusCode`` (absent on some failures).

Decisions come from codes, reasons, quota metric names and HTTP statuses. Codes are looked
up in :data:`ERROR_TABLE`; quota codes are then refined by metric (:func:`quota_class`:
``*_ALL_REGIONS`` is project-wide, anything else regional). An error can carry several
codes (a bulkInsert reports one per VM, and ``VM_MIN_COUNT_NOT_REACHED`` next to its
cause): the one that reaches furthest decides, and ``VM_MIN_COUNT_NOT_REACHED``, a summary,
counts only alone (a compact placement that could not be met: capacity, next zone).
Without a known code the HTTP status decides (:data:`STATUS_TABLE`: any other 4xx, or no
status, is an :class:`UnrecognizedError`, next region; 5xx transient), with one exception:
**a failed operation with HTTP 503 is a stockout** (that is how
``ZONE_RESOURCE_POOL_EXHAUSTED`` arrives), so it is a :class:`CapacityError`, while a
*synchronous* 503 is transient.

Only what is certainly about the request the broker built fails it (``required``,
``alreadyExists``: a field of ours missing, a name of ours taken). ``invalid``,
``badRequest`` and ``INVALID_FIELD_VALUE`` mostly name a type, accelerator, image or
subnetwork this zone or region does not have, so they move on to the next region.

GCP puts two scopes only in the message; :func:`_by_message` reads them, the one place
this module reads text, each pattern tested with Google's real wording:

- a machine or accelerator type missing from the zone: "Invalid value for field
  'resource.machineType': '...'. Machine type with name 'a2-highgpu-8g' does not exist in
  zone 'us-central1-c'." and "The resource 'projects/p/zones/us-central1-f/acceleratorTypes/
  nvidia-tesla-k80' was not found" (``invalid``, ``badRequest`` or ``notFound``): that zone
  only, :class:`NotOfferedError`;
- a quota whose metric is in the message only: "Quota 'GPUS_ALL_REGIONS' exceeded. Limit:
  0.0 globally." (project-wide: :class:`GlobalQuotaError`) or "Quota 'NVIDIA_A100_GPUS'
  exceeded.  Limit: 16.0 in region us-central1." (regional).

Transport failures (no HTTP answer) are :class:`CallTimeoutError` (timeouts) or
:class:`TransientError`; google-auth failures are :class:`NotConfiguredError` (no Application
Default Credentials) or :class:`AuthError` (a refresh refused). Messages keep the cloud's text
with anything credential-like (OAuth access/refresh tokens, ``Bearer`` headers, keys and
secrets in URLs or JSON) replaced by :func:`redact`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import requests
from google.api_core import exceptions as core_exc
from google.auth import exceptions as auth_exc

from providers.errors import (
    AuthError,
    CallTimeoutError,
    CapacityError,
    GlobalQuotaError,
    InvalidLaunchError,
    NotConfiguredError,
    NotOfferedError,
    ProviderError,
    QuotaError,
    Reach,
    RegionCapacityError,
    RegionConfigError,
    ThrottledError,
    TransientError,
    UnrecognizedError,
)

PROVIDER = "gcp"

__all__ = [
    "ERROR_TABLE",
    "GOOGLE_ERRORS",
    "PROVIDER",
    "STATUS_TABLE",
    "SUMMARY_CODES",
    "classify",
    "error_codes",
    "operation_error",
    "quota_class",
    "quota_metrics",
    "redact",
]
# Error codes (operation errors, upper case) and reasons (synchronous errors, camelCase).
# The real wording of each row is in tests/providers/gcp/test_errors.py.
ERROR_TABLE: Mapping[str, type[ProviderError]] = {
    # -- stockouts: no capacity for this shape in this zone now -> next zone ------------------
    "ZONE_RESOURCE_POOL_EXHAUSTED": CapacityError,
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS": CapacityError,
    "insufficientCapacity": CapacityError,  # synchronous 503 from bulkInsert
    "UNSUPPORTED_OPERATION": CapacityError,  # seen for spot VMs preempted while created
    "GPU_STOCKOUT": CapacityError,
    # A summary next to its cause (which decides); alone, a compact placement not met.
    "VM_MIN_COUNT_NOT_REACHED": CapacityError,
    "REGION_RESOURCE_POOL_EXHAUSTED": RegionCapacityError,
    "RESOURCE_POOL_EXHAUSTED": RegionCapacityError,  # the region's external IP pool
    # -- quota (refined by metric name: *_ALL_REGIONS is project-wide) ------------------------
    "QUOTA_EXCEEDED": QuotaError,
    "quotaExceeded": QuotaError,
    # -- throttling: the same call again after a backoff ---------------------------------------
    "rateLimitExceeded": ThrottledError,
    "userRateLimitExceeded": ThrottledError,
    "RATE_LIMIT_EXCEEDED": ThrottledError,
    # Too many operations on one source resource (an image): retried, then the next zone.
    "RESOURCE_OPERATION_RATE_EXCEEDED": ThrottledError,
    # -- the service failed: the same call again -----------------------------------------------
    "backendError": TransientError,
    "internalError": TransientError,
    # The adapter always sends a bare machine type, so INTERNAL_ERROR is Google's own failure
    # (with a URL-form InstanceProperties.machine_type it would be a bug of ours).
    "INTERNAL_ERROR": TransientError,
    "resourceNotReady": TransientError,
    "RESOURCE_NOT_READY": TransientError,
    # -- credentials, permissions, API not enabled: nothing on GCP works now ------------------
    "forbidden": AuthError,
    "insufficientPermissions": AuthError,
    "authError": AuthError,
    "unauthorized": AuthError,
    "IAM_PERMISSION_DENIED": AuthError,
    "PERMISSION_DENIED": AuthError,
    "accessNotConfigured": NotConfiguredError,  # the Compute API is not enabled
    "SERVICE_DISABLED": NotConfiguredError,
    # -- a resource the request names (image, network, subnetwork, machine or accelerator
    # type) does not exist where it was asked for: next region, as AWS's InvalidAMIID and
    # Azure's ImageNotFound (a type missing from one zone: that zone, see _by_message).
    # Failing the request would also fail the other clouds' shapes over one cloud's
    # configuration; a global resource just costs one explained attempt per region.
    "notFound": RegionConfigError,
    "RESOURCE_NOT_FOUND": RegionConfigError,
    # -- what this region refuses: a value it does not accept, a full subnetwork, an
    # organization policy (constraints/gcp.resourceLocations, vmExternalIpAccess): next region
    "invalid": RegionConfigError,
    "badRequest": RegionConfigError,
    "invalidParameter": RegionConfigError,
    "INVALID_FIELD_VALUE": RegionConfigError,
    "INVALID_USAGE": RegionConfigError,  # e.g. an image's architecture and the type's
    "IP_SPACE_EXHAUSTED": RegionConfigError,
    "IP_SPACE_EXHAUSTED_WITH_DETAILS": RegionConfigError,
    "conditionNotMet": RegionConfigError,  # HTTP 412: an organization policy constraint
    "CONDITION_NOT_MET": RegionConfigError,
    # -- the request itself is wrong, certainly ours: fail it ---------------------------------
    "required": InvalidLaunchError,  # a field of ours missing
    "alreadyExists": InvalidLaunchError,  # a name of ours taken by someone else's resource
    "RESOURCE_ALREADY_EXISTS": InvalidLaunchError,
}
# Codes that only sum up the others (the other code decides; alone, the table's row does).
SUMMARY_CODES = frozenset({"VM_MIN_COUNT_NOT_REACHED"})

# Without a known code: the HTTP status (exact), then its family (5xx transient, any other
# status UnrecognizedError: next region, never a failed request).
STATUS_TABLE: Mapping[int, type[ProviderError]] = {
    401: AuthError,
    403: AuthError,
    404: RegionConfigError,
    408: CallTimeoutError,
    412: RegionConfigError,  # conditionNotMet: an organization policy
    429: ThrottledError,
    504: CallTimeoutError,
}

# The two scopes Google writes only in the message (see _by_message).
_NOT_IN_ZONE = (
    re.compile(r"Machine type with name '[^']+' does not exist in zone '[^']+'", re.I),
    re.compile(r"/zones/[^/'\s]+/acceleratorTypes/[^'\s]+' was not found", re.I),
)
_QUOTA_IN_MESSAGE = re.compile(
    r"Quota '(?P<metric>[A-Z0-9_]+)' exceeded\.\s+Limit: [0-9.]+ (?P<scope>globally|in region)"
)
_MESSAGE_SCOPED = frozenset(
    {"invalid", "badRequest", "invalidParameter", "INVALID_FIELD_VALUE", "notFound"}
    | {"RESOURCE_NOT_FOUND"}
)
_REACH_ORDER = (Reach.CALL, Reach.ZONE, Reach.REGION, Reach.PROVIDER, Reach.REQUEST)

_SECRETS = (
    re.compile(r"ya29\.[\w.\-]+"),  # OAuth access tokens
    re.compile(r"1//[\w.\-]{10,}"),  # OAuth refresh tokens
    re.compile(r"(?i)bearer\s+[\w.\-~+/=]+"),
    re.compile(
        r"(?i)((?:access_token|refresh_token|id_token|client_secret|private_key|api_key|key)"
        r"[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
    ),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
)


def redact(text: str) -> str:
    """The text with anything credential-like replaced by ``<redacted>``."""
    for pattern in _SECRETS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "<redacted>", text)
        else:
            text = pattern.sub("<redacted>", text)
    return text


def _short(text: str, most: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 3] + "..."


def _get(item: Any, *names: str) -> Any:
    """A field of a dict (JSON, camelCase or snake_case) or of a proto message."""
    for name in names:
        if isinstance(item, Mapping):
            if name in item:
                return item[name]
        elif hasattr(item, name):
            return getattr(item, name)
    return None


def _coded(exc: BaseException) -> list[tuple[str, str]]:
    """(code or reason, its own message) of every error item, then of the ErrorInfo
    details, in order (a detail has no message of its own: the exception's)."""
    found: list[tuple[str, str]] = []
    for item in getattr(exc, "errors", None) or ():
        code = _get(item, "code", "reason")
        if code and isinstance(code, str):
            found.append((code, str(_get(item, "message") or "")))
    for detail in getattr(exc, "details", None) or ():
        if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("ErrorInfo"):
            reason = detail.get("reason")
            if isinstance(reason, str) and reason:
                found.append((reason, ""))
    return found


def error_codes(exc: BaseException) -> list[str]:
    """The codes (operation errors) or reasons (HTTP errors) an API error carries, in order."""
    return [code for code, _ in _coded(exc)]


def _quota_infos(item: Any) -> Iterable[Any]:
    for detail in _get(item, "error_details", "errorDetails") or ():
        info = _get(detail, "quota_info", "quotaInfo")
        if info:
            yield info
    info = _get(item, "quota_info", "quotaInfo")
    if info:
        yield info


def quota_metrics(exc: BaseException) -> list[str]:
    """Quota metric names named by the error's structured details (not by its message)."""
    metrics: list[str] = []
    for item in [*(getattr(exc, "errors", None) or ()), *(getattr(exc, "details", None) or ())]:
        for info in _quota_infos(item):
            name = _get(info, "metric_name", "metricName")
            if name:
                metrics.append(str(name))
        metadata = _get(item, "metadata") if isinstance(item, Mapping) else None
        if isinstance(metadata, Mapping):
            for key in ("quota_metric", "quotaMetric", "metric_name", "metricName"):
                if metadata.get(key):
                    metrics.append(str(metadata[key]))
    return metrics


def quota_class(metrics: Sequence[str], globally: bool = False) -> type[ProviderError]:
    """Project-wide quota (``GPUS_ALL_REGIONS``, ``CPUS_ALL_REGIONS``, any ``*_ALL_REGIONS``
    metric, or a message saying "globally") is a GlobalQuotaError; a regional metric, or
    none named, a QuotaError."""
    names = [m.rsplit("/", 1)[-1].upper() for m in metrics]
    if globally or any(n.endswith("ALL_REGIONS") for n in names):
        return GlobalQuotaError
    return QuotaError


def _by_message(code: str, cls: type[ProviderError], message: str) -> type[ProviderError]:
    """The scope Google writes only in the message, for the codes that need it (the one
    place this module reads text: see the module docstring)."""
    if code in _MESSAGE_SCOPED and any(p.search(message) for p in _NOT_IN_ZONE):
        return NotOfferedError
    if cls is QuotaError:
        found = _QUOTA_IN_MESSAGE.search(message)
        if found is not None:
            return quota_class([found["metric"]], globally=found["scope"] == "globally")
    return cls


def _message_metrics(exc: BaseException) -> list[str]:
    """Quota metrics named only in the messages ("Quota 'GPUS_ALL_REGIONS' exceeded...")."""
    texts = [m for _, m in _coded(exc)] + [str(getattr(exc, "message", "") or "")]
    return [found["metric"] for t in texts for found in _QUOTA_IN_MESSAGE.finditer(t)]


class OperationFailed(core_exc.GoogleAPICallError):
    """A Compute operation that ended DONE with ``error.errors`` (HTTP status or not)."""

    def __init__(self, message: str, *, status: int | None, errors: Sequence[Any]) -> None:
        super().__init__(message, errors=list(errors))  # type: ignore[no-untyped-call]
        self.code = status


def operation_error(op: Any) -> OperationFailed | None:
    """The error of a DONE operation as an exception, or None if it succeeded. Reads
    ``op.error.errors`` even when the operation has no ``httpErrorStatusCode``."""
    errors = list(op.error.errors) if op.error else []
    if not errors:
        return None
    status = int(op.http_error_status_code) if op.http_error_status_code else None
    first = errors[0]
    message = op.http_error_message or first.message or first.code or "operation failed"
    if first.message and first.message != message:
        message = f"{message}: {first.message}"
    return OperationFailed(message, status=status, errors=errors)


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        value = headers.get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _api_class(exc: core_exc.GoogleAPICallError) -> tuple[type[ProviderError], str]:
    coded = _coded(exc)
    status = exc.code if isinstance(exc.code, int) else None
    from_operation = isinstance(exc, OperationFailed)
    whole = str(exc.message or "")
    metrics = quota_metrics(exc)
    known: list[tuple[type[ProviderError], str]] = []
    for code, message in coded:
        cls = ERROR_TABLE.get(code)
        if cls is None:
            continue
        if cls is QuotaError and metrics:  # structured fields first
            cls = quota_class(metrics)
        else:
            cls = _by_message(code, cls, message or whole)
        known.append((cls, code))
    causes = [k for k in known if k[1] not in SUMMARY_CODES] or known
    if causes:  # the code that reaches furthest decides (first of equals)
        return max(causes, key=lambda k: _REACH_ORDER.index(k[0].reach))
    code = coded[0][0] if coded else (str(status) if status is not None else type(exc).__name__)
    if status is None:
        return UnrecognizedError, code
    if from_operation and status == 503:
        return CapacityError, code  # a stockout arrives as an operation's 503
    found = STATUS_TABLE.get(status)
    if found is not None:
        return found, code
    return (TransientError if status >= 500 else UnrecognizedError), code


# Exceptions raised without any HTTP answer, by class (most specific first).
_TRANSPORT: tuple[tuple[type[BaseException], type[ProviderError]], ...] = (
    (auth_exc.DefaultCredentialsError, NotConfiguredError),
    (auth_exc.RefreshError, AuthError),
    (auth_exc.TransportError, TransientError),  # the token endpoint did not answer
    (auth_exc.GoogleAuthError, AuthError),
    (core_exc.RetryError, CallTimeoutError),
    (requests.exceptions.Timeout, CallTimeoutError),  # ConnectTimeout, ReadTimeout
    (requests.exceptions.ConnectionError, TransientError),
    (requests.exceptions.RequestException, TransientError),
    (TimeoutError, CallTimeoutError),
    (ConnectionError, TransientError),
)


def classify(exc: BaseException) -> ProviderError:
    """The typed error for an exception of the Google clients (anything unknown:
    InvalidLaunchError, with its class name as the code)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, core_exc.GoogleAPICallError):
        cls, code = _api_class(exc)
        message = _short(redact(exc.message or str(exc)))
        metrics = []
        if cls in (QuotaError, GlobalQuotaError):
            metrics = quota_metrics(exc) or _message_metrics(exc)
        if metrics:
            message = f"quota {', '.join(dict.fromkeys(metrics))}: {message}"
        elif cls is NotOfferedError:
            message = f"not offered in this zone: {message}"
        elif cls is UnrecognizedError:
            status = exc.code if isinstance(exc.code, int) else None
            message = f"unrecognized {PROVIDER} error {code} (HTTP {status}): {message}"
        return cls(message, code=code, provider=PROVIDER, retry_after=_retry_after(exc))
    for kind, cls in _TRANSPORT:
        if isinstance(exc, kind):
            return cls(_short(redact(str(exc))), code=type(exc).__name__, provider=PROVIDER)
    return InvalidLaunchError(
        _short(redact(f"unexpected {type(exc).__name__}: {exc}")),
        code=type(exc).__name__,
        provider=PROVIDER,
    )


# Every exception the adapter hands to classify().
GOOGLE_ERRORS: tuple[type[BaseException], ...] = (
    core_exc.GoogleAPIError,
    auth_exc.GoogleAuthError,
    requests.exceptions.RequestException,
)
