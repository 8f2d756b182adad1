"""``az://account/container/prefix``: Azure Blob Storage (or Azurite, its emulator).

The service holds the storage account's key; nodes get service SAS URLs (HMAC-SHA256 of the
documented string-to-sign, version 2020-12-06 and later) for one blob: ``Put Blob`` for a
``single`` upload, ``Put Block`` (``comp=block&blockid=...``) per part of a block blob whose
``Put Block List`` the service sends in :meth:`AzureStore.complete`, ``Get Blob`` to download.
The service's own calls (list, delete, the block list) use a SAS it signs for itself too, over
the standard library's HTTP: no Azure SDK is needed.

The key: ``account_key``, else ``AZURE_STORAGE_KEY``, else the ``AccountKey`` of
``AZURE_STORAGE_CONNECTION_STRING`` (whose ``BlobEndpoint``, if any, is the endpoint when none
is given). It is never printed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import quote, urlencode, urlsplit
from xml.sax.saxutils import escape

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

SAS_VERSION = "2021-12-02"  # signs with the 2020-12-06+ string-to-sign (16 fields)
MAX_BLOCK = 4000 * 1024 * 1024  # one Put Block carries at most 4000 MiB (2019-12-12+)
MAX_SINGLE = 5000 * 1024 * 1024  # and one Put Blob at most 5000 MiB
CLOCK_SKEW = 300  # seconds a SAS starts before it is signed: clocks differ
LIST_PAGE = 5000  # List Blobs' maxresults (5000 is the service's most)
BLOB_HEADERS = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"}
BLOCK_HEADERS = {"Content-Type": "application/octet-stream"}

Permission = Literal["r", "w", "d", "l", "rw", "dl"]


def block_id(number: int) -> str:
    """Part ``number``'s block id: base64 of a fixed-width text (a blob's ids share a length)."""
    return base64.b64encode(f"part-{number:06d}".encode()).decode()


def _sas_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class AzureStore:
    """An :class:`~providers.storage.base.ArtifactStore` on Azure Blob Storage.

    ``endpoint``: the blob service's URL (default ``https://<account>.blob.core.windows.net``;
    Azurite: ``http://127.0.0.1:10000/<account>``)."""

    def __init__(
        self,
        url: StoreURL,
        *,
        endpoint: str | None = None,
        account_key: str | None = None,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if url.scheme != "az":
            raise ValueError(f"not an Azure store: {url.text}")
        self._url = url
        env = {} if environ is None else environ  # the edge's credential variables
        key_text, from_string = account_key, None
        if key_text is None:
            key_text = env.get("AZURE_STORAGE_KEY") or None
        if key_text is None and env.get("AZURE_STORAGE_CONNECTION_STRING"):
            from_string = _parse_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
            if from_string.get("AccountName", url.bucket) != url.bucket:
                raise ConfigError(
                    f"{url.text}: AZURE_STORAGE_CONNECTION_STRING is for another account "
                    f"({from_string['AccountName']!r})"
                )
            key_text = from_string.get("AccountKey")
        if not key_text:
            raise ConfigError(
                f"{url.text}: signing Azure URLs needs the storage account's key: set "
                "AZURE_STORAGE_KEY or AZURE_STORAGE_CONNECTION_STRING"
            )
        try:
            self._key = base64.b64decode(key_text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{url.text}: the storage account key is not base64") from None
        if endpoint is None and from_string is not None:
            endpoint = from_string.get("BlobEndpoint")
        self.endpoint = (endpoint or f"https://{url.bucket}.blob.core.windows.net").rstrip("/")
        self._https = urlsplit(self.endpoint).scheme == "https"
        self._clock = clock

    def __repr__(self) -> str:
        return f"AzureStore({self._url.text!r}, endpoint={self.endpoint!r})"

    @property
    def url(self) -> str:
        return self._url.text

    @property
    def account(self) -> str:
        return self._url.bucket

    @property
    def container(self) -> str:
        return self._url.container

    # -- signing ------------------------------------------------------------------------------

    def sas(self, permissions: Permission, seconds: int, blob: str | None = None) -> str:
        """A service SAS query string for one ``blob`` (or, None, the whole container)."""
        now = self._clock()
        fields = {
            "sv": SAS_VERSION,
            "sr": "b" if blob is not None else "c",
            "sp": permissions,
            "st": _sas_time(now - CLOCK_SKEW),
            "se": _sas_time(now + seconds),
            "spr": "https" if self._https else "",
        }
        resource = f"/blob/{self.account}/{self.container}" + (f"/{blob}" if blob else "")
        string_to_sign = "\n".join(
            [
                fields["sp"],
                fields["st"],
                fields["se"],
                resource,
                "",  # signedIdentifier (no stored access policy)
                "",  # signedIP
                fields["spr"],
                fields["sv"],
                fields["sr"],
                "",  # signedSnapshotTime
                "",  # signedEncryptionScope
                "",  # rscc
                "",  # rscd
                "",  # rsce
                "",  # rscl
                "",  # rsct
            ]
        )
        mac = hmac.new(self._key, string_to_sign.encode("utf-8"), hashlib.sha256).digest()
        fields["sig"] = base64.b64encode(mac).decode()
        return urlencode({k: v for k, v in fields.items() if v}, quote_via=quote)

    def _blob_url(self, name: str, query: str) -> str:
        return f"{self.endpoint}/{self.container}/{quote(name, safe='/~')}?{query}"

    def _container_url(self, query: Mapping[str, str], sas: str) -> str:
        return f"{self.endpoint}/{self.container}?{urlencode(query, quote_via=quote)}&{sas}"

    # -- uploads ------------------------------------------------------------------------------

    def upload(
        self, key: str, size: int, *, expires: float = DEFAULT_EXPIRY, part_size: int | None = None
    ) -> UploadPlan:
        name = full_key(self._url, key)
        if size < 0:
            raise ValueError(f"an object's size cannot be negative ({size})")
        seconds = check_expiry(expires)
        expires_at = self._clock() + seconds
        chosen, count = plan_parts(size, min(part_size, MAX_BLOCK) if part_size else None)
        sas = self.sas("w", seconds, name)
        if count == 1 and size <= MAX_SINGLE:
            put = SignedRequest("PUT", self._blob_url(name, sas), BLOB_HEADERS, expires_at)
            return UploadPlan("single", key, size, max(size, 1), (put,))
        requests = tuple(
            SignedRequest(
                "PUT",
                self._blob_url(name, f"comp=block&blockid={quote(block_id(n), safe='')}&{sas}"),
                BLOCK_HEADERS,
                expires_at,
            )
            for n in range(1, count + 1)
        )
        # Azure needs no upload id: the blocks wait, uncommitted, for the block list
        return UploadPlan("parts", key, size, min(chosen, MAX_BLOCK), requests, f"blocks:{count}")

    def complete(self, plan: UploadPlan, etags: Sequence[str]) -> None:
        """Commit the blocks in part order (Put Block List); the ETags are not needed."""
        if plan.kind != "parts":
            return
        name = full_key(self._url, plan.key)
        body = "".join(f"<Latest>{escape(block_id(n))}</Latest>" for n in range(1, plan.parts + 1))
        xml = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{body}</BlockList>'
        http(
            "PUT",
            self._blob_url(name, f"comp=blocklist&{self.sas('w', 600, name)}"),
            what=f"{self.url}: complete {plan.key!r}",
            headers={"Content-Type": "application/xml", "x-ms-version": SAS_VERSION},
            body=xml.encode(),
            ok=(201,),
        )

    def abort(self, plan: UploadPlan) -> None:
        """Nothing to do: uncommitted blocks are dropped by the service after a week, and a
        later upload of the same blob replaces them."""

    # -- reading ------------------------------------------------------------------------------

    def download(self, key: str, *, expires: float = DEFAULT_EXPIRY) -> SignedRequest:
        name = full_key(self._url, key)
        seconds = check_expiry(expires)
        # the node's GET needs "r" only; the service's HEAD below proves the blob is there
        http(
            "HEAD",
            self._blob_url(name, self.sas("r", 60, name)),
            what=f"{self.url}: download {key!r}",
            ok=(200,),
        )
        url = self._blob_url(name, self.sas("r", seconds, name))
        return SignedRequest("GET", url, {}, self._clock() + seconds)

    def list(self, prefix: str) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        what = f"{self.url}: list {prefix!r}"
        sas = self.sas("l", 600)
        marker = ""
        while True:
            query = {
                "restype": "container",
                "comp": "list",
                "prefix": full_prefix(self._url, prefix),
                "maxresults": str(LIST_PAGE),
            }
            if marker:
                query["marker"] = marker
            answer = http("GET", self._container_url(query, sas), what=what, ok=(200,))
            try:
                root = ET.fromstring(answer.body)
            except ET.ParseError:
                raise StorageError(f"{what}: the answer is not XML", transient=True) from None
            for blob in root.iter("Blob"):
                props = blob.find("Properties")
                name = blob.findtext("Name") or ""
                modified = props.findtext("Last-Modified") if props is not None else None
                found.append(
                    ObjectInfo(
                        key=relative_key(self._url, name),
                        size=int(
                            (props.findtext("Content-Length") if props is not None else 0) or 0
                        ),
                        modified=parsedate_to_datetime(modified).timestamp() if modified else 0.0,
                        etag=((props.findtext("Etag") or "").strip('"') or None)
                        if props is not None
                        else None,
                    )
                )
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return sorted(found, key=lambda o: o.key)

    def delete(self, prefix: str) -> int:
        objects = self.list(prefix)
        sas = self.sas("d", 600)
        deleted = 0
        for obj in objects:
            name = full_key(self._url, obj.key)
            try:
                http(
                    "DELETE",
                    self._blob_url(name, sas),
                    what=f"{self.url}: delete {obj.key!r}",
                    headers={"x-ms-delete-snapshots": "include", "x-ms-version": SAS_VERSION},
                    ok=(202,),
                )
            except NotFound:
                continue  # gone already
            deleted += 1
        return deleted


def _parse_connection_string(text: str) -> dict[str, str]:
    """``Name=value;...`` (values may hold ``=``, as base64 keys do)."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value
    if "BlobEndpoint" not in fields and "AccountName" in fields:
        protocol = fields.get("DefaultEndpointsProtocol", "https")
        suffix = fields.get("EndpointSuffix", "core.windows.net")
        fields["BlobEndpoint"] = f"{protocol}://{fields['AccountName']}.blob.{suffix}"
    return fields


__all__ = ["SAS_VERSION", "AzureStore", "block_id"]
