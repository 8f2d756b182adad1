"""The artifact store interface: what the broker service asks of an object store.

A store is named by a URL (``[artifacts] url`` in the configuration):

- ``file:///path`` -- a directory (sim and single-host use); its signed URLs are served by
  the broker service itself (``/v1/blobs/...``), so they need the service's public URL;
- ``s3://bucket/prefix`` -- Amazon S3 (presigned URLs; multipart with presigned UploadPart);
- ``gs://bucket/prefix`` -- Google Cloud Storage (V4 signed URLs; resumable uploads);
- ``az://account/container/prefix`` -- Azure Blob Storage (SAS; block blobs).

Keys are relative to the store's prefix and use ``/``; the layout of keys is the broker's
business (``broker.artifacts``), not the store's. Every URL a store hands out is signed for
one object, one method and a short time; a store never returns a credential.

Uploads: :meth:`ArtifactStore.upload` returns an :class:`UploadPlan` saying how to send an
object of a given size:

- ``single``: one ``PUT`` of the whole body to ``requests[0]``;
- ``parts``: ``PUT`` part i (``part_size`` bytes each, the last shorter) to ``requests[i]``
  in any order; then the service calls :meth:`ArtifactStore.complete` with each part's
  ``ETag`` response header, in part order (stores that do not need them ignore them);
- ``resumable``: ``PUT`` consecutive chunks of ``part_size`` bytes (the last shorter) to
  ``requests[0]`` in order, each with ``Content-Range: bytes a-b/total``; the object exists
  once the last chunk is answered 200/201 (no ``complete`` call).

Every request carries the ``headers`` it lists (e.g. ``x-ms-blob-type``), exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from providers.errors import ConfigError
from shapes.errors import BrokerError, Exit

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 64 * MiB  # S3 allows 5 MiB..5 GiB per part and 10,000 parts: 625 GiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10_000
DEFAULT_EXPIRY = 3600.0  # seconds a signed URL lives


class StorageError(BrokerError):
    """A store call failed (the message names the store and the object, never a secret).
    ``transient`` says whether trying again may help (throttling, 5xx, connection)."""

    exit_code = Exit.UNAVAILABLE
    http_status = 503

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class NotFound(StorageError):
    """The object or prefix does not exist."""

    exit_code = Exit.INVALID
    http_status = 404


@dataclass(frozen=True)
class SignedRequest:
    """One HTTP request a node may make without a credential."""

    method: Literal["GET", "PUT", "POST", "HEAD"]
    url: str = field(repr=False)  # carries a signature: never logged
    headers: Mapping[str, str] = field(default_factory=dict)
    expires_at: float = 0.0  # unix seconds

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "url": self.url,
            "headers": dict(self.headers),
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True)
class UploadPlan:
    """How to send one object (see the module docstring)."""

    kind: Literal["single", "parts", "resumable"]
    key: str
    size: int
    part_size: int
    requests: tuple[SignedRequest, ...]
    upload_id: str | None = None  # "parts": what complete() and abort() need

    @property
    def parts(self) -> int:
        """How many parts (or chunks) the object goes in: from its size and part size, so a
        plan rebuilt from what a node sent back (without the URLs) counts the same."""
        return max(1, -(-self.size // self.part_size)) if self.part_size > 0 else 1

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "size": self.size,
            "part_size": self.part_size,
            "requests": [r.to_json_dict() for r in self.requests],
            "upload_id": self.upload_id,
        }


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    modified: float  # unix seconds
    etag: str | None = None


class ArtifactStore(Protocol):
    """An object store under one prefix. Methods raise :class:`StorageError`."""

    @property
    def url(self) -> str:
        """The store's URL as configured (no secret in it)."""
        ...

    def upload(
        self, key: str, size: int, *, expires: float = DEFAULT_EXPIRY, part_size: int | None = None
    ) -> UploadPlan:
        """How to send ``size`` bytes to ``key`` (``part_size`` None: the store's choice;
        objects up to one part go ``single``)."""
        ...

    def complete(self, plan: UploadPlan, etags: Sequence[str]) -> None:
        """Finish a ``parts`` upload (``etags``: each part's ETag header, in order)."""
        ...

    def abort(self, plan: UploadPlan) -> None:
        """Give up a ``parts`` or ``resumable`` upload (idempotent)."""
        ...

    def download(self, key: str, *, expires: float = DEFAULT_EXPIRY) -> SignedRequest:
        """A GET of ``key`` (NotFound when it does not exist)."""
        ...

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""
        ...

    def delete(self, prefix: str) -> int:
        """Delete every object under ``prefix``; how many went."""
        ...


@dataclass(frozen=True)
class StoreURL:
    scheme: Literal["file", "s3", "gs", "az"]
    bucket: str  # file: "" ; az: the account
    container: str  # az only: the container ("" otherwise)
    prefix: str  # no leading or trailing "/" ("" for none); file: the directory path

    @property
    def text(self) -> str:
        if self.scheme == "file":
            return f"file://{self.prefix}"
        middle = f"{self.bucket}/{self.container}" if self.scheme == "az" else self.bucket
        return f"{self.scheme}://{middle}" + (f"/{self.prefix}" if self.prefix else "")


def parse_store_url(url: str) -> StoreURL:
    """``file:///abs/path``, ``s3://bucket[/prefix]``, ``gs://bucket[/prefix]``,
    ``az://account/container[/prefix]``; ConfigError naming what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"{url!r}: a file store is file:///absolute/path")
        return StoreURL("file", "", "", parts.path.rstrip("/") or "/")
    if scheme not in ("s3", "gs", "az"):
        raise ConfigError(
            f"{url!r}: an artifact store URL is file:///path, s3://bucket/prefix, "
            "gs://bucket/prefix or az://account/container/prefix"
        )
    if parts.query or parts.fragment or "@" in parts.netloc or not parts.netloc:
        raise ConfigError(f"{url!r}: expected {scheme}://bucket/prefix with no query or user")
    path = parts.path.strip("/")
    if scheme == "az":
        container, _, prefix = path.partition("/")
        if not container:
            raise ConfigError(f"{url!r}: an Azure store is az://account/container[/prefix]")
        return StoreURL("az", parts.netloc, container, prefix.strip("/"))
    return StoreURL(scheme, parts.netloc, "", path)  # type: ignore[arg-type]


def plan_parts(size: int, part_size: int | None) -> tuple[int, int]:
    """(part size, number of parts) for ``size`` bytes: at least MIN_PART_SIZE per part and
    at most MAX_PARTS parts (the part size grows for very large objects)."""
    chosen = max(part_size or DEFAULT_PART_SIZE, MIN_PART_SIZE)
    while -(-size // chosen) > MAX_PARTS:
        chosen *= 2
    return chosen, max(1, -(-size // chosen))


__all__ = [
    "DEFAULT_EXPIRY",
    "DEFAULT_PART_SIZE",
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "ArtifactStore",
    "NotFound",
    "ObjectInfo",
    "SignedRequest",
    "StorageError",
    "StoreURL",
    "UploadPlan",
    "parse_store_url",
    "plan_parts",
]
