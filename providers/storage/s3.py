"""``s3://bucket/prefix``: Amazon S3 (or anything speaking its API, such as moto's server).

The service holds the credentials (boto3's usual chain: environment, shared files, instance
role); nodes get SigV4 presigned URLs: ``PutObject`` for a ``single`` upload, ``UploadPart``
per part of a multipart upload the service creates, completes and aborts, ``GetObject`` to
download. boto3 is imported on first use, never with :mod:`providers.storage`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

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
from providers.storage.cloud import check_expiry, full_key, full_prefix, relative_key

GiB = 1024**3
MAX_SINGLE = 5 * GiB  # one PutObject, and one UploadPart, carry at most 5 GiB
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
# Bodies are bytes; said so, or a client's default (urllib: a form) becomes the object's type.
BODY_HEADERS = {"Content-Type": "application/octet-stream"}

# Error codes: what does not exist, and what may go away if tried again.
_MISSING = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NotFound"})
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)


class S3Store:
    """An :class:`~providers.storage.base.ArtifactStore` on S3.

    ``endpoint_url``: another S3 endpoint (an emulator; path-style addressing then);
    ``region``: the bucket's region (else boto3's configured region, else us-east-1):
    presigned URLs are signed for it, so it must be the bucket's own."""

    def __init__(
        self, url: StoreURL, *, endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        if url.scheme != "s3":
            raise ValueError(f"not an S3 store: {url.text}")
        self._url = url
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3Store({self._url.text!r}{where})"

    @property
    def url(self) -> str:
        return self._url.text

    @property
    def bucket(self) -> str:
        return self._url.bucket

    def client(self) -> Any:
        """The boto3 S3 client (made on first use)."""
        with self._lock:
            if self._client is None:
                import boto3  # type: ignore[import-untyped]
                from botocore.config import Config  # type: ignore[import-untyped]

                session = boto3.session.Session()
                config = Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                    retries={"mode": "standard", "max_attempts": 3},
                    connect_timeout=10,
                    read_timeout=60,
                    # presigned URLs carry no checksum parameter a plain client cannot send
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                self._client = session.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region or session.region_name or "us-east-1",
                    config=config,
                )
            return self._client

    # -- uploads ------------------------------------------------------------------------------

    def upload(
        self, key: str, size: int, *, expires: float = DEFAULT_EXPIRY, part_size: int | None = None
    ) -> UploadPlan:
        name = full_key(self._url, key)
        if size < 0:
            raise ValueError(f"an object's size cannot be negative ({size})")
        seconds = check_expiry(expires)
        chosen, count = plan_parts(size, min(part_size, MAX_SINGLE) if part_size else None)
        chosen = min(chosen, MAX_SINGLE) if count > 1 else chosen
        expires_at = time.time() + seconds
        what = f"{self.url}: upload {key!r}"
        if count == 1 and size <= MAX_SINGLE:
            put = self._presign("put_object", {"Key": name}, seconds, what)
            return UploadPlan(
                "single",
                key,
                size,
                max(size, 1),
                (SignedRequest("PUT", put, BODY_HEADERS, expires_at),),
            )
        try:
            upload_id = self.client().create_multipart_upload(Bucket=self.bucket, Key=name)[
                "UploadId"
            ]
        except Exception as exc:
            raise _classify(exc, what) from None
        requests = tuple(
            SignedRequest(
                "PUT",
                self._presign(
                    "upload_part",
                    {"Key": name, "UploadId": upload_id, "PartNumber": number},
                    seconds,
                    what,
                ),
                BODY_HEADERS,
                expires_at,
            )
            for number in range(1, count + 1)
        )
        return UploadPlan("parts", key, size, chosen, requests, upload_id)

    def complete(self, plan: UploadPlan, etags: Sequence[str]) -> None:
        if plan.kind != "parts":
            return
        what = f"{self.url}: complete {plan.key!r}"
        if len(etags) != plan.parts or not all(etags):
            raise StorageError(
                f"{what}: {plan.parts} parts were sent, {sum(1 for e in etags if e)} ETags given"
            )
        parts = [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, start=1)]
        try:
            self.client().complete_multipart_upload(
                Bucket=self.bucket,
                Key=full_key(self._url, plan.key),
                UploadId=str(plan.upload_id),
                MultipartUpload={"Parts": parts},
            )
        except Exception as exc:
            raise _classify(exc, what) from None

    def abort(self, plan: UploadPlan) -> None:
        if plan.kind != "parts" or plan.upload_id is None:
            return
        try:
            self.client().abort_multipart_upload(
                Bucket=self.bucket, Key=full_key(self._url, plan.key), UploadId=plan.upload_id
            )
        except Exception as exc:
            error = _classify(exc, f"{self.url}: abort {plan.key!r}")
            if not isinstance(error, NotFound):  # already completed or aborted
                raise error from None

    # -- reading ------------------------------------------------------------------------------

    def download(self, key: str, *, expires: float = DEFAULT_EXPIRY) -> SignedRequest:
        name = full_key(self._url, key)
        seconds = check_expiry(expires)
        what = f"{self.url}: download {key!r}"
        try:
            self.client().head_object(Bucket=self.bucket, Key=name)
        except Exception as exc:
            raise _classify(exc, what) from None
        url = self._presign("get_object", {"Key": name}, seconds, what)
        return SignedRequest("GET", url, {}, time.time() + seconds)

    def list(self, prefix: str) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        try:
            pages = self.client().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=full_prefix(self._url, prefix)):
                for item in page.get("Contents", []):
                    found.append(
                        ObjectInfo(
                            key=relative_key(self._url, item["Key"]),
                            size=int(item["Size"]),
                            modified=item["LastModified"].timestamp(),
                            etag=item.get("ETag", "").strip('"') or None,
                        )
                    )
        except StorageError:
            raise
        except Exception as exc:
            raise _classify(exc, f"{self.url}: list {prefix!r}") from None
        return sorted(found, key=lambda o: o.key)

    def delete(self, prefix: str) -> int:
        names = [full_key(self._url, o.key) for o in self.list(prefix)]
        what = f"{self.url}: delete {prefix!r}"
        for start in range(0, len(names), DELETE_BATCH):
            batch = [{"Key": n} for n in names[start : start + DELETE_BATCH]]
            try:
                answer = self.client().delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": batch, "Quiet": True},
                )
            except Exception as exc:
                raise _classify(exc, what) from None
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"{what}: {len(errors)} objects not deleted "
                    f"(first: {relative_key(self._url, first.get('Key', '?'))!r}, "
                    f"{first.get('Code', 'error')})",
                    transient=first.get("Code") in _TRANSIENT,
                )
        return len(names)

    # -- helpers ------------------------------------------------------------------------------

    def _presign(self, operation: str, params: dict[str, Any], seconds: int, what: str) -> str:
        try:
            url: str = self.client().generate_presigned_url(
                operation, Params={"Bucket": self.bucket, **params}, ExpiresIn=seconds
            )
        except Exception as exc:
            raise _classify(exc, what) from None
        return url


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _classify(exc: Exception, what: str) -> StorageError:
    """A botocore error as a StorageError (NotFound for a missing object, bucket or upload;
    transient for throttling, 5xx and connection failures); anything else is re-raised."""
    from botocore import exceptions as boto_exc  # type: ignore[import-untyped]

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, boto_exc.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _MISSING or status == 404:
            return NotFound(f"{what}: not found ({code or 'HTTP 404'})")
        transient = code in _TRANSIENT or status in (408, 429) or status >= 500
        if not code or code.isdigit():  # a HEAD's error has no body: say the status's name
            code = _status_phrase(status)
        return StorageError(f"{what}: {code} (HTTP {status})", transient=transient)
    if isinstance(exc, boto_exc.NoCredentialsError | boto_exc.PartialCredentialsError):
        return StorageError(
            f"{what}: no AWS credentials (boto3 looks in AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws, then the instance's role)"
        )
    if isinstance(exc, boto_exc.ConnectionError | boto_exc.HTTPClientError):
        return StorageError(f"{what}: cannot reach S3 ({type(exc).__name__})", transient=True)
    if isinstance(exc, boto_exc.BotoCoreError):
        return StorageError(f"{what}: {exc}")
    raise exc


__all__ = ["S3Store"]
