"""``file:///path``: an artifact store in a local directory (the simulated cloud, one host).

Nodes reach it through the broker service: its signed URLs are ``<service>/v1/blobs/<token>``
where the token names one object (and, for a part, its upload and number), one method and an
expiry, signed with HMAC-SHA256 under a key only the service holds. The service's blob route
calls :meth:`FileStore.receive` and :meth:`FileStore.path_for` after :meth:`FileStore.verify`.

Objects are files under the directory, by key; a ``parts`` upload keeps its parts under
``.uploads/<upload id>/`` until :meth:`FileStore.complete` joins them; every write goes to a
temporary name first and is renamed into place, so a reader never sees half an object.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

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

UPLOADS = ".uploads"
BLOB_ROUTE = "/v1/blobs/"
KEY_FILE = "blob-signing.key"


class Forbidden(StorageError):
    """A blob token that is malformed, tampered with, expired or for another method."""

    http_status = 403


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(state_dir: Path) -> bytes:
    """The service's blob-signing key, made once (0600) in ``state_dir``."""
    path = state_dir / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key.hex())
    try:
        os.link(tmp, path)  # the first writer wins; the others read its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


def check_key(key: str) -> str:
    """``key`` if it is a relative ``/``-separated path with no empty, ``.`` or ``..`` part
    (and not under the uploads directory), else StorageError."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or parts[0] == UPLOADS
        or "\\" in key
        or "\0" in key
    ):
        raise StorageError(f"{key[:200]!r} is not an object key")
    return key


class FileStore:
    """An :class:`~providers.storage.base.ArtifactStore` over a directory."""

    def __init__(
        self,
        url: StoreURL,
        *,
        public_url: str | None = None,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if url.scheme != "file":
            raise ValueError(f"not a file store: {url.text}")
        self._url = url
        self.root = Path(url.prefix)
        self.public_url = None if public_url is None else public_url.rstrip("/")
        self._secret = secret
        self._clock = clock

    def __repr__(self) -> str:
        return f"FileStore({self._url.text!r})"

    @property
    def url(self) -> str:
        return self._url.text

    def with_base(self, public_url: str) -> FileStore:
        """The same store, its URLs on another base (e.g. "" for links relative to the host
        a browser already talks to)."""
        return FileStore(self._url, public_url=public_url, secret=self._secret, clock=self._clock)

    # -- signing ------------------------------------------------------------------------------

    def _sign(
        self, method: Literal["GET", "PUT"], key: str, expires: float, **extra: Any
    ) -> SignedRequest:
        if self._secret is None or self.public_url is None:
            raise StorageError(
                f"{self.url}: signed URLs need the broker service (its public URL and key)"
            )
        expires_at = int(self._clock() + expires)
        claims = {"m": method, "k": key, "e": expires_at, **extra}
        raw = _b64(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode())
        mac = _b64(hmac.new(self._secret, raw.encode(), hashlib.sha256).digest())
        return SignedRequest(method, f"{self.public_url}{BLOB_ROUTE}{raw}.{mac}", {}, expires_at)

    def verify(self, token: str, method: str) -> dict[str, Any]:
        """The claims of a blob token, if it is ours, unexpired and for ``method``."""
        if self._secret is None:
            raise Forbidden("this store signs no URLs")
        raw, _, mac = token.partition(".")
        try:
            expected = hmac.new(self._secret, raw.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(mac)):
                raise Forbidden("bad signature")
            claims: dict[str, Any] = json.loads(_unb64(raw))
        except (ValueError, UnicodeError) as exc:
            raise Forbidden("malformed token") from exc
        if claims.get("m") != method:
            raise Forbidden(f"this URL is for {claims.get('m')}, not {method}")
        if not isinstance(claims.get("e"), int) or claims["e"] < self._clock():
            raise Forbidden("this URL has expired")
        check_key(str(claims.get("k", "")))
        return claims

    # -- the interface ------------------------------------------------------------------------

    def path_for(self, key: str) -> Path:
        return self.root / check_key(key)

    def upload(
        self, key: str, size: int, *, expires: float = DEFAULT_EXPIRY, part_size: int | None = None
    ) -> UploadPlan:
        check_key(key)
        if size < 0:
            raise StorageError(f"size must be >= 0, got {size}")
        chosen, count = plan_parts(size, part_size)
        if count == 1:
            put = self._sign("PUT", key, expires, s=size)
            return UploadPlan("single", key, size, max(chosen, size), (put,))
        upload_id = secrets.token_hex(12)
        requests = tuple(
            self._sign("PUT", key, expires, u=upload_id, p=i, s=min(chosen, size - i * chosen))
            for i in range(count)
        )
        return UploadPlan("parts", key, size, chosen, requests, upload_id)

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise StorageError(f"{upload_id[:40]!r} is not an upload id")
        return self.root / UPLOADS / upload_id

    def complete(self, plan: UploadPlan, etags: Sequence[str]) -> None:
        if plan.kind != "parts" or plan.upload_id is None:
            return
        folder = self._upload_dir(plan.upload_id)
        parts = [folder / str(i) for i in range(plan.parts)]
        missing = [i for i, p in enumerate(parts) if not p.is_file()]
        if missing:
            raise StorageError(f"{plan.key}: parts {missing[:10]} were never sent")
        total = sum(p.stat().st_size for p in parts)
        if total != plan.size:
            raise StorageError(f"{plan.key}: the parts hold {total} bytes, {plan.size} expected")
        target = self.path_for(plan.key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1024 * 1024)
        os.replace(tmp, target)
        shutil.rmtree(folder, ignore_errors=True)

    def abort(self, plan: UploadPlan) -> None:
        if plan.upload_id is not None:
            shutil.rmtree(self._upload_dir(plan.upload_id), ignore_errors=True)

    def download(self, key: str, *, expires: float = DEFAULT_EXPIRY) -> SignedRequest:
        if not self.path_for(key).is_file():
            raise NotFound(f"{self.url}: no object {key!r}")
        return self._sign("GET", key, expires)

    def list(self, prefix: str) -> list[ObjectInfo]:
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if ".." in prefix.split("/") or not start.is_dir():
            return []
        found: list[ObjectInfo] = []
        for folder, dirs, files in os.walk(start):
            dirs[:] = sorted(d for d in dirs if not (Path(folder) == self.root and d == UPLOADS))
            for name in files:
                if name.startswith(".") and name.endswith(".part"):
                    continue  # a write in progress
                path = Path(folder) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    st = path.stat()
                    found.append(ObjectInfo(key, st.st_size, st.st_mtime))
        return sorted(found, key=lambda o: o.key)

    def delete(self, prefix: str) -> int:
        gone = 0
        for obj in self.list(prefix):
            try:
                (self.root / obj.key).unlink()
                gone += 1
            except FileNotFoundError:
                pass
        return gone

    # -- what the service's blob route does ---------------------------------------------------

    def receiver(self, claims: dict[str, Any]) -> Receiver:
        """Where a PUT's body for verified ``claims`` goes (see :class:`Receiver`)."""
        key = str(claims["k"])
        if "u" in claims:
            target = self._upload_dir(str(claims["u"])) / str(int(claims["p"]))
        else:
            target = self.path_for(key)
        expected = claims.get("s")
        return Receiver(key, target, expected if isinstance(expected, int) else None)

    def receive(self, claims: dict[str, Any], chunks: Iterable[bytes]) -> int:
        """Write a whole PUT body for verified ``claims``; the bytes written."""
        receiver = self.receiver(claims)
        try:
            for chunk in chunks:
                receiver.write(chunk)
            return receiver.commit()
        finally:
            receiver.discard()


class Receiver:
    """One PUT body on its way to disk: written to a temporary name, renamed into place by
    :meth:`commit` only when it holds exactly the size signed for; :meth:`discard` (always
    safe) removes what a failed or short body left."""

    def __init__(self, key: str, target: Path, expected: int | None) -> None:
        self.key, self.target, self.expected = key, target, expected
        target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
        self._out = self.tmp.open("wb")
        self.written = 0

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.expected is not None and self.written > self.expected:
            raise StorageError(f"{self.key}: more than the {self.expected} bytes signed for")
        self._out.write(chunk)

    def commit(self) -> int:
        self._out.close()
        if self.expected is not None and self.written != self.expected:
            raise StorageError(f"{self.key}: {self.written} bytes sent, {self.expected} signed for")
        os.replace(self.tmp, self.target)
        return self.written

    def discard(self) -> None:
        self._out.close()
        self.tmp.unlink(missing_ok=True)


__all__ = ["BLOB_ROUTE", "FileStore", "Forbidden", "Receiver", "check_key", "signing_key"]
