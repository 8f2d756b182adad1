"""The FastAPI application: the /v1 API, the console, health, metrics, and one error shape.

Every error leaves as ``{"errors": [{"field", "message"}], "error": "<kind>"}`` with the HTTP
status of the broker's error tree (broker.errors); an unexpected one is a 500 that names an
id the server logged, never a traceback. Bodies over ``MAX_BODY`` bytes are refused (413)
before they are read whole.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.errors import BrokerError
from broker.server.service import Service
from broker.views import error_document

log = logging.getLogger("broker.server")
MAX_BODY = 1024 * 1024  # bytes: the largest request body (a launch file is ~1 KB)
BLOBS = "/v1/blobs/"  # a file store's signed uploads: their size is in the signature

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _errors(status: int, message: str, field: str | None = None, kind: str = "") -> JSONResponse:
    doc: dict[str, object] = {
        "errors": [{"field": field, "message": message, "line": None}],
        "warnings": [],
    }
    if kind:
        doc["error"] = kind
    return JSONResponse(doc, status_code=status)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by the declared length or,
    for a chunked body, as soon as the count passes it."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if str(scope.get("path", "")).startswith(BLOBS):  # signed for a size of its own
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting, tracking)
        except _BodyTooLarge:
            if not started:
                await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return _errors(413, f"the request body is over {limit} bytes", kind="PayloadTooLarge")


def _wants_page(request: Request) -> bool:
    """A browser asking for a console page (not the API, not a machine)."""
    path = request.url.path
    if path.startswith(("/v1/", "/openapi", "/docs", "/redoc")) or path in API_PATHS:
        return False
    return "text/html" in request.headers.get("accept", "")


API_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1"})


def create_app(service: Service, *, console: bool = True) -> FastAPI:
    """The application over ``service``. The caller starts and stops the service (``broker
    serve`` does it in the lifespan; tests may drive workers themselves)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(
        title="burst-broker",
        version="1",
        description="Find, quote and provision GPU clusters for burst ML experiments.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(BrokerError)
    async def broker_error(_request: Request, exc: BrokerError) -> JSONResponse:
        status = int(getattr(exc, "http_status", 500))
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(error_document(exc), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "header", "path")]
            errors.append({"field": ".".join(loc) or None, "message": e.get("msg"), "line": None})
        return JSONResponse(
            {"errors": errors, "warnings": [], "error": "InvalidRequest"}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        if console and _wants_page(request):
            from broker.server.console import error_page

            title = "Not found" if exc.status_code == 404 else str(exc.detail)
            message = "There is no such page." if exc.status_code == 404 else "That did not work."
            return error_page(request, exc.status_code, title, message)
        return _errors(exc.status_code, str(exc.detail), kind=kind)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        incident = secrets.token_hex(4)
        log.error("incident %s: %s", incident, type(exc).__name__, exc_info=exc)
        return _errors(500, f"internal error (incident {incident}; the server logged it)")

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        service.counters.request(request.method, path, response.status_code)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if request.url.path.startswith("/v1/"):
            response.headers.setdefault("Cache-Control", "no-store")
        log.debug("%s %s %d %.1fms", request.method, path, response.status_code,
                  (time.perf_counter() - start) * 1000)  # fmt: skip
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        try:
            service.broker.store.ping()
        except BrokerError as exc:
            return _errors(503, str(exc), kind="StoreError")
        if service.stopping:
            return _errors(503, "the server is shutting down", kind="ShuttingDown")
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> PlainTextResponse:
        from broker.server.metrics import render

        return PlainTextResponse(render(service), media_type="text/plain; version=0.0.4")

    from broker.server.agent_api import router as agent_router
    from broker.server.api import router
    from broker.server.blobs import router as blob_router

    app.include_router(router)
    app.include_router(agent_router)
    app.include_router(blob_router)
    if console:
        from broker.server.console import mount

        mount(app)
    app.add_middleware(BodyLimit)
    return app


__all__ = ["MAX_BODY", "BodyLimit", "create_app"]
