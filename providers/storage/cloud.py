"""What the three cloud backends (:mod:`.s3`, :mod:`.gcs`, :mod:`.azure`) share: object keys
under the store's prefix, signed-URL lifetimes, and the service's own plain-HTTP calls (GCS's
JSON API, Azure's REST API) with their failures classified into
:class:`~providers.storage.base.StorageError` (never a URL in a message: it may carry a
signature)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from providers.storage.base import NotFound, StorageError, StoreURL

MAX_EXPIRY = 7 * 24 * 3600  # S3 presigned URLs and GCS V4 signed URLs live at most 7 days
HTTP_TIMEOUT = 60.0  # seconds, each of the service's own calls to a store


def check_key(key: str, *, what: str = "object key") -> str:
    """``key`` when it is a relative ``/``-separated path with no empty, ``.`` or ``..``
    part, else StorageError (keys come from the broker's own layout; this is a backstop)."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or any(c in key for c in "\\\0\r\n")
    ):
        raise StorageError(f"{key[:200]!r} is not an {what}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: "" (everything), or a key's beginning (a trailing ``/`` allowed)."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix, what="object prefix")
    return prefix


def full_key(url: StoreURL, key: str) -> str:
    """The bucket-level name of ``key`` (the store's prefix in front)."""
    check_key(key)
    return f"{url.prefix}/{key}" if url.prefix else key


def full_prefix(url: StoreURL, prefix: str) -> str:
    check_prefix(prefix)
    return f"{url.prefix}/{prefix}" if url.prefix else prefix


def relative_key(url: StoreURL, name: str) -> str:
    """The key of a bucket-level ``name`` listed under the store's prefix."""
    return name[len(url.prefix) + 1 :] if url.prefix else name


def check_expiry(expires: float) -> int:
    """Whole seconds a signed URL lives (1 s .. 7 days)."""
    if not expires > 0:
        raise ValueError(f"a signed URL's lifetime must be positive, not {expires}")
    return max(1, min(int(expires), MAX_EXPIRY))


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer (GCS's 308 Resume Incomplete), not somewhere to go."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def is_transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def http(
    method: str,
    url: str,
    *,
    what: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    ok: tuple[int, ...] = (200, 201, 202, 204),
    timeout: float = HTTP_TIMEOUT,
) -> Response:
    """One request; a status outside ``ok`` raises NotFound (404) or StorageError naming
    ``what`` and the store's own error code when its body has one (transient for 408, 429,
    5xx and connection failures). The URL is never part of a message."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if body is not None and "Content-Type" not in request.headers:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, got, data = response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        status, got = exc.code, dict(exc.headers.items()) if exc.headers else {}
        data = exc.read() if exc.fp is not None else b""
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise StorageError(f"{what}: cannot reach the store ({reason})", transient=True) from None
    if status in ok:
        return Response(status, got, data)
    code = error_code(data) or f"HTTP {status}"
    if status == 404:
        raise NotFound(f"{what}: not found ({code})")
    raise StorageError(f"{what}: {code} (HTTP {status})", transient=is_transient_status(status))


def error_code(body: bytes) -> str | None:
    """The error code in a store's error body (S3/GCS/Azure XML ``<Code>``, GCS JSON
    ``error.message``), else None."""
    text = body[:4096].decode("utf-8", "replace")
    start = text.find("<Code>")
    if start >= 0:
        end = text.find("</Code>", start)
        if end > start:
            return text[start + 6 : end].strip()[:100] or None
    if text.lstrip().startswith("{"):
        import json

        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            return None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:200]
        if isinstance(error, str):
            return error[:100]
    return None


__all__ = [
    "HTTP_TIMEOUT",
    "MAX_EXPIRY",
    "Response",
    "check_expiry",
    "check_key",
    "check_prefix",
    "error_code",
    "full_key",
    "full_prefix",
    "http",
    "is_transient_status",
    "relative_key",
]
