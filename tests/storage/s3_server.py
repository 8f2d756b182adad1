"""moto's S3 in server mode on 127.0.0.1, behind a check of presigned URLs.

moto serves S3 faithfully but accepts any presigned URL (it never checks a query-string
signature or its expiry). Real S3 does, so the server here verifies every request that carries
``X-Amz-Signature`` the way S3 does (SigV4 query authentication: canonical request, string to
sign, the derived key, ``X-Amz-Expires``) before moto sees it, and refuses anonymous requests
(no signature, no Authorization header). Written from AWS's published description of SigV4,
independently of botocore's signer, so a URL botocore signs wrongly is refused here.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote

from moto.moto_server.werkzeug_app import MotoRequestHandler
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

ACCESS_KEY = "AKIDBURSTBROKERTEST"
SECRET_KEY = "burst-broker-test-secret"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def _refuse(start_response: Callable[..., Any], code: str, message: str) -> list[bytes]:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    start_response("403 Forbidden", [("Content-Type", "application/xml")])
    return [body]


class PresignCheck:
    """WSGI middleware: SigV4 query-string authentication as S3 does it."""

    def __init__(self, app: WsgiApp, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.clock = clock
        self.refused: list[str] = []  # the error code of each refused request

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        raw_query = environ.get("QUERY_STRING", "")
        params = parse_qsl(raw_query, keep_blank_values=True)
        query = dict(params)
        if "X-Amz-Signature" not in query:
            if "HTTP_AUTHORIZATION" in environ or environ["PATH_INFO"].startswith("/moto-api"):
                return self.app(environ, start_response)
            self.refused.append("AccessDenied")
            return _refuse(start_response, "AccessDenied", "Anonymous access is not allowed")
        problem = self._check(environ, params, query)
        if problem is not None:
            self.refused.append(problem[0])
            return _refuse(start_response, *problem)
        return self.app(environ, start_response)

    def _check(
        self, environ: dict[str, Any], params: list[tuple[str, str]], query: dict[str, str]
    ) -> tuple[str, str] | None:
        if query.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
            return "AuthorizationQueryParametersError", "X-Amz-Algorithm"
        access_key, date, region, service, terminal = query["X-Amz-Credential"].split("/")
        if access_key != ACCESS_KEY or service != "s3" or terminal != "aws4_request":
            return "InvalidAccessKeyId", "unknown credential"
        stamp = query["X-Amz-Date"]
        signed_at = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
        if not stamp.startswith(date):
            return "AuthorizationQueryParametersError", "date and credential differ"
        if self.clock() > signed_at + int(query["X-Amz-Expires"]):
            return "AccessDenied", "Request has expired"
        signed_headers = query["X-Amz-SignedHeaders"].split(";")
        if "host" not in signed_headers:
            return "AuthorizationQueryParametersError", "host is not signed"
        headers = {"host": environ["HTTP_HOST"]}
        for name in signed_headers:
            if name != "host":
                value = environ.get("HTTP_" + name.upper().replace("-", "_"))
                if name == "content-type":
                    value = environ.get("CONTENT_TYPE")
                if value is None:
                    return "AccessDenied", f"signed header {name} is missing"
                headers[name] = " ".join(value.split())
        path = environ.get("RAW_URI", environ["PATH_INFO"]).split("?", 1)[0]
        canonical_query = "&".join(
            f"{_uri_encode(k)}={_uri_encode(v)}"
            for k, v in sorted(params)
            if k != "X-Amz-Signature"
        )
        canonical_request = "\n".join(
            [
                environ["REQUEST_METHOD"],
                path,
                canonical_query,
                "".join(f"{n}:{headers[n]}\n" for n in signed_headers),
                ";".join(signed_headers),
                "UNSIGNED-PAYLOAD",
            ]
        )
        scope = f"{date}/{region}/s3/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                stamp,
                scope,
                hashlib.sha256(canonical_request.encode()).hexdigest(),
            ]
        )
        key = ("AWS4" + SECRET_KEY).encode()
        for part in (date, region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, query["X-Amz-Signature"]):
            return "SignatureDoesNotMatch", "The request signature we calculated does not match"
        return None


class CheckedMotoServer:
    """``moto.server.ThreadedMotoServer`` with :class:`PresignCheck` in front."""

    def __init__(self) -> None:
        self.check = PresignCheck(DomainDispatcherApplication(create_backend_app))
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, self.check, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> CheckedMotoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
