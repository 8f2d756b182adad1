"""A Cloud Storage stand-in on 127.0.0.1 that checks what real GCS checks.

The PyPI emulators (gcp-storage-emulator, fake-gcs-server's clients) accept any signed URL, so
this werkzeug app is small and strict instead:

- XML API ``/<bucket>/<object>``: every request but a resumable session's must carry a V4
  signature (``GOOG4-RSA-SHA256``), verified with the service account's *public* key over the
  canonical request rebuilt from what arrived (method, raw path, query, signed headers); an
  expired (``X-Goog-Date`` + ``X-Goog-Expires``), tampered or unsigned URL is refused.
  ``PUT`` stores, ``GET``/``HEAD`` read, ``POST`` with a signed ``x-goog-resumable: start``
  opens a resumable session (201, ``Location``).
- Resumable sessions (``?upload_id=``): ``PUT`` chunks with ``Content-Range: bytes a-b/total``
  in order, each but the last a multiple of 256 KiB (308 with ``Range`` until the last, then
  200); ``DELETE`` cancels (499).
- JSON API ``/storage/v1/b/<bucket>/o[/<object>]``: list (prefix, maxResults, pageToken), get
  metadata, delete; only with a bearer token from ``/token``.
- ``/token``: the OAuth JWT-bearer grant; the assertion's RS256 signature, issuer, audience
  and expiry are checked.
Written from Google's published descriptions, independently of the store's signer.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

QUANTUM = 256 * 1024
# the audience of a service account's JWT grant, whatever token_uri it is posted to
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def service_account(token_uri: str) -> tuple[dict[str, str], rsa.RSAPublicKey]:
    """A throwaway service account's key file (as JSON info) and its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "burst-test",
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": "artifacts@burst-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    return info, key.public_key()


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def _xml_error(status: int, code: str, message: str = "") -> Response:
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
    body += f"<Message>{message}</Message></Error>"
    return Response(body, status=status, content_type="application/xml")


def _json_error(status: int, message: str) -> Response:
    body = json.dumps({"error": {"code": status, "message": message}})
    return Response(body, status=status, content_type="application/json")


@dataclass
class Blob:
    data: bytes
    updated: float
    etag: str


@dataclass
class Session:
    bucket: str
    name: str
    data: bytearray = field(default_factory=bytearray)


class FakeGcs:
    """The WSGI app (see the module docstring)."""

    def __init__(self, email: str, public_key: rsa.RSAPublicKey) -> None:
        self.email = email
        self.public_key = public_key
        self.clock: Callable[[], float] = time.time
        self.buckets: set[str] = set()
        self.objects: dict[tuple[str, str], Blob] = {}
        self.sessions: dict[str, Session] = {}
        self.tokens: set[str] = set()
        self.refused: list[str] = []  # the error code of each refused request
        self.page_size = 1000
        self.token_uri = ""  # where grants are posted (the key file's token_uri)
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        with self._lock:
            response = self._dispatch(request, environ)
        if response.status_code in (400, 401, 403):
            self.refused.append(self._code(response))
        return response(environ, start_response)

    @staticmethod
    def _code(response: Response) -> str:
        text = response.get_data(as_text=True)
        if "<Code>" in text:
            return text.split("<Code>")[1].split("</Code>")[0]
        return str(json.loads(text)["error"]["message"])

    def _dispatch(self, request: Request, environ: dict[str, Any]) -> Response:
        raw_path, _, raw_query = environ.get("RAW_URI", request.full_path).partition("?")
        if raw_path == "/token" and request.method == "POST":
            return self._token(request)
        if raw_path.startswith("/storage/v1/b/"):
            return self._json_api(request, raw_path)
        bucket, _, encoded_name = raw_path[1:].partition("/")
        bucket, name = unquote(bucket), unquote(encoded_name)
        if bucket not in self.buckets:
            return _xml_error(404, "NoSuchBucket")
        query = parse_qsl(raw_query, keep_blank_values=True)
        if "upload_id" in dict(query):
            return self._session(request, dict(query)["upload_id"], bucket, name)
        problem = self._verify(request, raw_path, query)
        if problem is not None:
            return problem
        if request.method == "PUT":
            data = request.get_data()
            etag = hashlib.md5(data).hexdigest()
            self.objects[bucket, name] = Blob(data, self.clock(), etag)
            return Response("", status=200, headers={"ETag": f'"{etag}"'})
        if request.method in ("GET", "HEAD"):
            blob = self.objects.get((bucket, name))
            if blob is None:
                return _xml_error(404, "NoSuchKey")
            return Response(blob.data, status=200, content_type="application/octet-stream")
        if request.method == "POST" and request.headers.get("x-goog-resumable") == "start":
            upload_id = secrets.token_urlsafe(24)
            self.sessions[upload_id] = Session(bucket, name)
            location = f"http://{request.host}{raw_path}?upload_id={upload_id}"
            return Response("", status=201, headers={"Location": location})
        return _xml_error(400, "InvalidArgument", "unsupported request")

    # -- V4 signatures ------------------------------------------------------------------------

    def _verify(self, request: Request, raw_path: str, query: list[tuple[str, str]]) -> Any:
        params = dict(query)
        if "X-Goog-Signature" not in params:
            return _xml_error(403, "AccessDenied", "Anonymous caller does not have access")
        if params.get("X-Goog-Algorithm") != "GOOG4-RSA-SHA256":
            return _xml_error(400, "InvalidArgument", "X-Goog-Algorithm")
        email, date, location, service, terminal = params["X-Goog-Credential"].split("/")
        if email != self.email or (location, service, terminal) != (
            "auto",
            "storage",
            "goog4_request",
        ):
            return _xml_error(400, "AuthenticationRequired", "unknown credential")
        stamp = params["X-Goog-Date"]
        expires = int(params["X-Goog-Expires"])
        if not stamp.startswith(date) or not 1 <= expires <= 604800:
            return _xml_error(400, "InvalidArgument", "X-Goog-Date or X-Goog-Expires")
        signed_at = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
        if self.clock() > signed_at + expires:
            return _xml_error(400, "ExpiredToken", "Invalid argument.")
        names = params["X-Goog-SignedHeaders"].split(";")
        if "host" not in names:
            return _xml_error(400, "InvalidArgument", "host must be signed")
        values = {}
        for name in names:
            value = request.headers.get(name)
            if value is None:
                return _xml_error(403, "SignatureDoesNotMatch", f"missing header {name}")
            values[name] = " ".join(value.split())
        canonical_query = "&".join(
            f"{_encode(k)}={_encode(v)}" for k, v in sorted(query) if k != "X-Goog-Signature"
        )
        canonical = "\n".join(
            [
                request.method,
                raw_path,
                canonical_query,
                "".join(f"{n}:{values[n]}\n" for n in names),
                ";".join(names),
                "UNSIGNED-PAYLOAD",
            ]
        )
        to_sign = "\n".join(
            [
                "GOOG4-RSA-SHA256",
                stamp,
                f"{date}/auto/storage/goog4_request",
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        try:
            signature = bytes.fromhex(params["X-Goog-Signature"])
            self.public_key.verify(signature, to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, InvalidSignature):
            return _xml_error(403, "SignatureDoesNotMatch", "signature mismatch")
        return None

    # -- resumable sessions -------------------------------------------------------------------

    def _session(self, request: Request, upload_id: str, bucket: str, name: str) -> Response:
        session = self.sessions.get(upload_id)
        if session is None or (session.bucket, session.name) != (bucket, name):
            return _xml_error(404, "NoSuchUpload")
        if request.method == "DELETE":
            del self.sessions[upload_id]
            return Response("", status=499)
        if request.method != "PUT":
            return _xml_error(400, "InvalidArgument", "unsupported request")
        spec = request.headers.get("Content-Range", "")
        chunk = request.get_data()
        try:
            unit, _, rest = spec.partition(" ")
            span, _, total_text = rest.partition("/")
            first, _, last = span.partition("-")
            total = int(total_text)
            assert unit == "bytes" and int(first) == len(session.data)
            assert int(last) - int(first) + 1 == len(chunk)
        except (ValueError, AssertionError):
            return _xml_error(400, "InvalidArgument", f"bad Content-Range {spec!r}")
        final = int(last) == total - 1
        if not final and len(chunk) % QUANTUM:
            return _xml_error(400, "InvalidArgument", "chunk not a multiple of 256 KiB")
        session.data += chunk
        if not final:
            return Response("", status=308, headers={"Range": f"bytes=0-{len(session.data) - 1}"})
        data = bytes(session.data)
        etag = hashlib.md5(data).hexdigest()
        self.objects[bucket, name] = Blob(data, self.clock(), etag)
        del self.sessions[upload_id]
        return Response(json.dumps({"name": name, "size": str(len(data))}), status=200)

    # -- OAuth and the JSON API ---------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        if request.form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _json_error(400, "unsupported_grant_type")
        try:
            head, body, signature = request.form["assertion"].split(".")
            self.public_key.verify(
                _b64url(signature),
                f"{head}.{body}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            claims = json.loads(_b64url(body))
        except (KeyError, ValueError, InvalidSignature):
            return _json_error(400, "invalid_grant: bad assertion")
        if claims.get("iss") != self.email or claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            return _json_error(400, "invalid_grant: wrong issuer or audience")
        if not claims.get("iat", 0) - 300 <= self.clock() <= claims.get("exp", 0):
            return _json_error(400, "invalid_grant: assertion expired")
        if "devstorage" not in str(claims.get("scope", "")):
            return _json_error(400, "invalid_scope")
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        answer = {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        return Response(json.dumps(answer), content_type="application/json")

    def _json_api(self, request: Request, raw_path: str) -> Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return _json_error(401, "Anonymous caller does not have storage.objects access")
        parts = raw_path[len("/storage/v1/b/") :].split("/")
        bucket = unquote(parts[0])
        if bucket not in self.buckets:
            return _json_error(404, "The specified bucket does not exist.")
        if len(parts) == 2 and parts[1] == "o" and request.method == "GET":
            return self._list(request, bucket)
        if len(parts) == 3 and parts[1] == "o":
            name = unquote(parts[2])
            blob = self.objects.get((bucket, name))
            if blob is None:
                return _json_error(404, f"No such object: {bucket}/{name}")
            if request.method == "DELETE":
                del self.objects[bucket, name]
                return Response("", status=204)
            if request.method == "GET":
                return Response(json.dumps(self._item(bucket, name, blob)))
        return _json_error(400, "unsupported request")

    def _list(self, request: Request, bucket: str) -> Response:
        prefix = request.args.get("prefix", "")
        after = request.args.get("pageToken", "")
        size = min(int(request.args.get("maxResults", 1000)), self.page_size)
        names = sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))
        names = [n for n in names if n > after]
        page: dict[str, Any] = {"kind": "storage#objects"}
        if names:
            page["items"] = [self._item(bucket, n, self.objects[bucket, n]) for n in names[:size]]
        if len(names) > size:
            page["nextPageToken"] = names[size - 1]
        return Response(json.dumps(page), content_type="application/json")

    @staticmethod
    def _item(bucket: str, name: str, blob: Blob) -> dict[str, str]:
        updated = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(blob.updated))
        return {
            "kind": "storage#object",
            "bucket": bucket,
            "name": name,
            "size": str(len(blob.data)),
            "updated": f"{updated}.{int(blob.updated % 1 * 1000):03d}Z",
            "etag": base64.b64encode(bytes.fromhex(blob.etag)).decode(),
        }


class GcsServer:
    """The stand-in served on 127.0.0.1 in a thread, with its service account."""

    def __init__(self) -> None:
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self.key_info, public_key = service_account(f"{self.endpoint}/token")
        self.app = FakeGcs(self.key_info["client_email"], public_key)
        self.app.token_uri = f"{self.endpoint}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self.app(environ, start_response)

    def start(self) -> GcsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
