"""``gs://bucket/prefix``: Google Cloud Storage (or a stand-in speaking its XML and JSON APIs).

The service holds a service account's key; nodes get V4 signed URLs (``GOOG4-RSA-SHA256``:
the canonical request and string-to-sign of Google's documented V4 signing process, signed
with the key): a ``PUT`` for a ``single`` upload, and for a larger object the URI of a
resumable upload session the service opens itself with a signed ``POST`` carrying
``x-goog-resumable: start`` (the node then ``PUT``\\s chunks of a multiple of 256 KiB with
``Content-Range``; no credential in it but the session's own id); a ``GET`` to download.
Listing and deleting go through the JSON API (``storage/v1/b/<bucket>/o``) with the service
account's OAuth token.

Credentials: a ``google.oauth2.service_account.Credentials`` given in code, else the
service-account key file named by ``credentials_file`` or ``GOOGLE_APPLICATION_CREDENTIALS``
(signing needs the private key: user or metadata-server credentials cannot sign locally).
google-auth is imported on first use, never with :mod:`providers.storage`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

from providers.errors import ConfigError
from providers.storage.base import (
    DEFAULT_EXPIRY,
    NotFound,
    ObjectInfo,
    SignedRequest,
    StorageError,
    StoreURL,
    UploadPlan,
    plan_parts,
)
from providers.storage.cloud import check_expiry, full_key, full_prefix, http, relative_key

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
CHUNK_QUANTUM = 256 * 1024  # a resumable upload's chunks are multiples of 256 KiB
LIST_PAGE = 1000  # the JSON API's maxResults (1000 is its most)
BODY_HEADERS = {"Content-Type": "application/octet-stream"}


def _encode(text: str, safe: str = "") -> str:
    """RFC 3986 percent-encoding (unreserved characters kept), as V4 signing wants."""
    return quote(text, safe="-_.~" + safe)


class GcsStore:
    """An :class:`~providers.storage.base.ArtifactStore` on Cloud Storage.

    ``endpoint``: another host for both APIs (an emulator), default
    ``https://storage.googleapis.com``."""

    def __init__(
        self,
        url: StoreURL,
        *,
        endpoint: str | None = None,
        credentials: Any = None,
        credentials_file: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if url.scheme != "gs":
            raise ValueError(f"not a GCS store: {url.text}")
        self._url = url
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self._host = urlsplit(self.endpoint).netloc
        self._base_path = urlsplit(self.endpoint).path
        self._credentials = credentials
        self._credentials_file = credentials_file
        self._clock = clock
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = "" if self.endpoint == DEFAULT_ENDPOINT else f", endpoint={self.endpoint!r}"
        return f"GcsStore({self._url.text!r}{where})"

    @property
    def url(self) -> str:
        return self._url.text

    @property
    def bucket(self) -> str:
        return self._url.bucket

    # -- credentials --------------------------------------------------------------------------

    def credentials(self) -> Any:
        """The service account's credentials (loaded on first use)."""
        with self._lock:
            if self._credentials is None:
                self._credentials = self._load_credentials()
            return self._credentials

    def _load_credentials(self) -> Any:
        path = self._credentials_file  # GOOGLE_APPLICATION_CREDENTIALS, read at the edge
        if not path:
            raise ConfigError(
                f"{self.url}: GCS signed URLs need a service account's key file: set "
                "GOOGLE_APPLICATION_CREDENTIALS (or the credentials_file option)"
            )
        try:
            with open(path, encoding="utf-8") as handle:
                info = json.load(handle)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
            raise ConfigError(f"{self.url}: cannot read the key file {path}: {reason}") from None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise ConfigError(
                f"{self.url}: {path} is not a service account's key file "
                "(its type must be service_account: signing needs the private key)"
            )
        from google.oauth2 import service_account

        try:
            return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=[SCOPE]
            )
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"{self.url}: {path} is not a usable key ({exc})") from None

    def _token(self) -> str:
        """An OAuth access token for the JSON API (refreshed when it is about to expire)."""
        credentials = self.credentials()
        with self._lock:
            if not credentials.valid:
                from google.auth import exceptions as auth_exc
                from google.auth.transport.requests import Request

                try:
                    credentials.refresh(Request())
                except auth_exc.TransportError:
                    raise StorageError(
                        f"{self.url}: cannot reach the token endpoint", transient=True
                    ) from None
                except auth_exc.RefreshError as exc:
                    said = exc.args[0] if exc.args else ""
                    if isinstance(said, dict):  # the token endpoint's JSON error
                        said = said.get("message") or said.get("error") or said
                    raise StorageError(
                        f"{self.url}: the service account was refused a token ({said})",
                        transient=bool(getattr(exc, "retryable", False)),
                    ) from None
            return str(credentials.token)

    # -- V4 signing ---------------------------------------------------------------------------

    def sign(
        self,
        method: Literal["GET", "PUT", "POST", "HEAD", "DELETE"],
        name: str,
        seconds: int,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """A V4 signed URL for ``method`` on object ``name`` (bucket-level), valid for
        ``seconds``; the request must carry ``headers`` (they are signed, with the host)."""
        credentials = self.credentials()
        now = self._clock()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        scope = f"{stamp[:8]}/auto/storage/goog4_request"
        signed = {"host": self._host}
        signed.update({k.lower(): " ".join(v.split()) for k, v in (headers or {}).items()})
        signed_names = ";".join(sorted(signed))
        path = f"{self._base_path}/{_encode(self.bucket)}/{_encode(name, safe='/')}"
        query = {
            "X-Goog-Algorithm": "GOOG4-RSA-SHA256",
            "X-Goog-Credential": f"{credentials.signer_email}/{scope}",
            "X-Goog-Date": stamp,
            "X-Goog-Expires": str(seconds),
            "X-Goog-SignedHeaders": signed_names,
        }
        canonical_query = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(query.items()))
        canonical_request = "\n".join(
            [
                method,
                path,
                canonical_query,
                "".join(f"{k}:{signed[k]}\n" for k in sorted(signed)),
                signed_names,
                "UNSIGNED-PAYLOAD",
            ]
        )
        string_to_sign = "\n".join(
            [
                "GOOG4-RSA-SHA256",
                stamp,
                scope,
                hashlib.sha256(canonical_request.encode()).hexdigest(),
            ]
        )
        signature = credentials.sign_bytes(string_to_sign.encode()).hex()
        origin = self.endpoint[: len(self.endpoint) - len(self._base_path)]
        return f"{origin}{path}?{canonical_query}&X-Goog-Signature={signature}"

    # -- uploads ------------------------------------------------------------------------------

    def upload(
        self, key: str, size: int, *, expires: float = DEFAULT_EXPIRY, part_size: int | None = None
    ) -> UploadPlan:
        name = full_key(self._url, key)
        if size < 0:
            raise ValueError(f"an object's size cannot be negative ({size})")
        seconds = check_expiry(expires)
        expires_at = self._clock() + seconds
        chosen, count = plan_parts(size, part_size)
        if count == 1:
            put = SignedRequest("PUT", self.sign("PUT", name, seconds), BODY_HEADERS, expires_at)
            return UploadPlan("single", key, size, max(size, 1), (put,))
        chunk = -(-chosen // CHUNK_QUANTUM) * CHUNK_QUANTUM
        start = {"x-goog-resumable": "start"}
        answer = http(
            "POST",
            self.sign("POST", name, 600, start),
            what=f"{self.url}: upload {key!r}",
            headers={**start, **BODY_HEADERS},
            body=b"",
            ok=(200, 201),
        )
        session = answer.headers.get("Location") or answer.headers.get("location")
        if not session:
            raise StorageError(f"{self.url}: upload {key!r}: no resumable session was opened")
        # the session URI lives a week whatever we say; the plan says when to ask again
        resume = SignedRequest("PUT", session, BODY_HEADERS, expires_at)
        return UploadPlan("resumable", key, size, chunk, (resume,), None)

    def complete(self, plan: UploadPlan, etags: Sequence[str]) -> None:
        """Nothing: a resumable upload is done when its last chunk is answered."""

    def abort(self, plan: UploadPlan) -> None:
        if plan.kind != "resumable":
            return
        http(
            "DELETE",
            plan.requests[0].url,
            what=f"{self.url}: abort {plan.key!r}",
            headers={"Content-Length": "0"},
            # 499 ("Client Closed Request") is the documented answer; 404 and 410: the
            # session finished, was cancelled or expired already
            ok=(200, 204, 404, 410, 499),
        )

    # -- reading ------------------------------------------------------------------------------

    def download(self, key: str, *, expires: float = DEFAULT_EXPIRY) -> SignedRequest:
        name = full_key(self._url, key)
        seconds = check_expiry(expires)
        self._json("GET", f"/o/{_encode(name)}", what=f"{self.url}: download {key!r}")
        return SignedRequest("GET", self.sign("GET", name, seconds), {}, self._clock() + seconds)

    def list(self, prefix: str) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        what = f"{self.url}: list {prefix!r}"
        query = {"prefix": full_prefix(self._url, prefix), "maxResults": str(LIST_PAGE)}
        while True:
            page = self._json("GET", "/o?" + urlencode(query, quote_via=quote), what=what)
            for item in page.get("items", []):
                found.append(
                    ObjectInfo(
                        key=relative_key(self._url, str(item["name"])),
                        size=int(item.get("size", 0)),
                        modified=_rfc3339(item.get("updated")),
                        etag=item.get("etag") or None,
                    )
                )
            token = page.get("nextPageToken")
            if not token:
                return sorted(found, key=lambda o: o.key)
            query["pageToken"] = str(token)

    def delete(self, prefix: str) -> int:
        deleted = 0
        for obj in self.list(prefix):
            name = full_key(self._url, obj.key)
            try:
                self._json("DELETE", f"/o/{_encode(name)}", what=f"{self.url}: delete {obj.key!r}")
            except NotFound:
                continue  # gone already
            deleted += 1
        return deleted

    def _json(self, method: str, path: str, *, what: str) -> dict[str, Any]:
        """One JSON API call on this bucket, with the service account's token."""
        url = f"{self.endpoint}/storage/v1/b/{_encode(self.bucket)}{path}"
        answer = http(method, url, what=what, headers={"Authorization": f"Bearer {self._token()}"})
        if not answer.body:
            return {}
        try:
            data = json.loads(answer.body)
        except ValueError:
            raise StorageError(f"{what}: the answer is not JSON", transient=True) from None
        return data if isinstance(data, dict) else {}


def _rfc3339(text: object) -> float:
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


__all__ = ["GcsStore"]
