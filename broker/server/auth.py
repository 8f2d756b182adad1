"""Who is calling: a bearer token (API) or a signed-in session (console), resolved to a
:class:`~broker.tokens.Principal`, and the Broker as that organisation sees it.

Tokens are checked against their stored digest (broker.tokens); a missing, malformed,
unknown or revoked token is one answer, 401, so nothing tells them apart. Neither the token
nor its digest is ever logged.
"""

from __future__ import annotations

from fastapi import Depends, Request

from broker.api import Broker
from broker.errors import Forbidden, Unauthorized
from broker.server.service import Service
from broker.tokens import Principal


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def principal(request: Request) -> Principal:
    """The caller of an API route (bearer token only: cookies never authorise the API,
    so a cross-site request cannot use a signed-in browser's session)."""
    token = bearer(request)
    found = service_of(request).broker.authenticate(token) if token else None
    if found is None or found.node:  # a node token serves only /v1/agent
        raise Unauthorized("a valid API token is required (Authorization: Bearer <token>)")
    request.state.principal = found
    return found


def node(request: Request) -> Principal:
    """The caller of an agent route: a node token only (user tokens get 401 here)."""
    token = bearer(request)
    found = service_of(request).broker.authenticate(token) if token else None
    if found is None or not found.node:
        raise Unauthorized("a valid node token is required")
    return found


def admin(who: Principal = Depends(principal)) -> Principal:  # noqa: B008
    if not who.admin:
        raise Forbidden("this needs an admin token of the organisation")
    return who


def org_broker(request: Request, who: Principal = Depends(principal)) -> Broker:  # noqa: B008
    """The Broker scoped to the caller's organisation."""
    return service_of(request).broker.scoped(who.org)


__all__ = [
    "Forbidden",
    "Unauthorized",
    "admin",
    "bearer",
    "node",
    "org_broker",
    "principal",
    "service_of",
]
