"""The web console: sign-in with an API token, the Burst page (shapes, filters, a quote) and
the Experiments pages (the organisation's clusters, one cluster's lifecycle, Cancel).

Server-rendered (Jinja2, autoescaped) with one stylesheet and one small script, all served
from ``static/``: no build step, no CDN. Every value comes from the Broker scoped to the
signed-in organisation and the documents of :mod:`broker.views`; filters and quotes are built
by :mod:`broker.inputs`, as for the API and the CLI.

The Experiments page opens with the organisation's credits (left, spent, burn rate and the
time left at that rate, from :mod:`broker.credits`); the list and an experiment's page show
the time left before its run-time limit (``max_hours``, counted from the current cycle's
RUNNING, as the service's watch loop counts it).

An experiment's page lists its artifacts and its nodes' sync totals; a download link is made
only when it is clicked (``/experiments/<id>/artifacts/download``: a redirect to a signed URL
that lives two minutes), so no signed URL is ever in a page, a cache or a log.

Sessions are stateless, so any replica serves any request: the cookie holds the token itself
(HttpOnly, SameSite=Strict, Secure over HTTPS) and every request authenticates it again, so a
revoked token ends its sessions at once. Each POST form carries a CSRF token, an HMAC of a
fixed label keyed by the token's digest; the sign-in form, which has no session yet, uses a
random double-submit cookie instead (against login CSRF). The token is never logged or
rendered. Pages carry a strict Content-Security-Policy (no inline script) and may not be
framed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from broker.api import Broker, accrue
from broker.credits import OrgCredits
from broker.diagnostics import Diagnostic
from broker.errors import InvalidRequest, NotFoundError
from broker.inputs import RequestInputs, build_request, shape_filter
from broker.launchfile import ComputeMode
from broker.lifecycle import TERMINAL, Status
from broker.server.api import END_ANSWER_WITHIN
from broker.server.auth import service_of
from broker.state import ClusterRecord, TransitionRecord
from broker.tokens import Principal, digest
from broker.views import (
    Document,
    catalog_document,
    cluster_document,
    quote_document,
    report_document,
    shape_document,
    when,
)
from shapes.catalog import Catalog
from shapes.errors import BrokerError
from shapes.model import Shape

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

SESSION_COOKIE = "broker_session"
SIGNIN_COOKIE = "broker_signin"  # the sign-in form's double-submit CSRF value
CSRF_LABEL = b"burst-broker console csrf v1"
SHAPES_PER_PAGE = 100
PLANS_SHOWN = 20
EXPERIMENTS_PER_PAGE = 50
MAX_FIELD = 200  # characters kept of a free-text filter or form field

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# How the console names request fields in messages (broker.inputs' ``names``).
FIELD_NAMES = {"gpus": "GPUs", "gpu": "GPU", "launch_file": "a launch file"}
FIELD_LABELS = {
    "gpus": "GPUs",
    "gpu": "GPU",
    "provider": "Provider",
    "region": "Region",
    "provisioning": "Spot / on-demand",
    "hours": "Hours",
    "priority": "Priority",
    "status": "Status",
    "mode": "Mode",
    "cursor": "Page",
}
NOTICES: Mapping[str, tuple[str, str]] = {
    "stopped": ("ok", "Cancelled: the experiment is STOPPED and its nodes are terminated."),
    "stopping": (
        "ok",
        "Cancelling: its command is being stopped and its artifacts get their final sync; "
        "then its nodes are terminated.",
    ),
    "finished": ("info", "The experiment had already finished; nothing to cancel."),
    "signed-out": ("ok", "Signed out."),
}
_LOCAL_PATH = re.compile(r"/(?![/\\])[^\s\\]*")


# -- sessions and CSRF ------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A signed-in request: who it is, the CSRF token of its forms, its organisation's Broker."""

    who: Principal
    csrf: str
    broker: Broker

    @property
    def org(self) -> str:
        return self.who.org

    @property
    def role(self) -> str:
        return self.who.role.value


class SignInFirst(Exception):
    """No valid session: the page redirects to the sign-in form."""


class BadForm(Exception):
    """A POST without a valid CSRF token: 403."""


def csrf_token(token: str) -> str:
    """The CSRF token of a session: HMAC-SHA256 of a fixed label keyed by the token's digest
    (stateless: every replica computes the same value; the token itself is not derivable)."""
    return hmac.new(bytes.fromhex(digest(token)), CSRF_LABEL, hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def session_of(request: Request) -> Session | None:
    """The request's session when its cookie holds a live token (checked on every request)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    broker = service_of(request).broker
    who = broker.authenticate(token)
    if who is None:
        return None
    found = Session(who, csrf_token(token), broker.scoped(who.org))
    request.state.console_session = found
    return found


def signed_in(request: Request) -> Session:
    found = session_of(request)
    if found is None:
        raise SignInFirst
    return found


def checked(request: Request, csrf: str) -> Session:
    """The session of a POST form, refused (403) unless it carries the session's CSRF token."""
    found = signed_in(request)
    if not _same(found.csrf, csrf):
        raise BadForm
    return found


def _local(path: str | None) -> str | None:
    """``path`` when it is a path on this server (never another site: no open redirect)."""
    if path and len(path) <= 2 * MAX_FIELD and _LOCAL_PATH.fullmatch(path):
        return path
    return None


def _cookie(request: Request, response: Response, name: str, value: str, path: str) -> None:
    response.set_cookie(
        name,
        value,
        path=path,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


# -- rendering ----------------------------------------------------------------------------------


def money(value: float | None) -> str:
    """Dollars: cents from $1 up, four decimals below (node prices such as $0.0579)."""
    if value is None:
        return "—"
    if value == 0 or abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.4f}"


def age(seconds: float) -> str:
    """A duration for people: ``42 s``, ``7 min``, ``3 h 5 min``, ``4 d 2 h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


def label(field: str | None) -> str:
    """How a page names a diagnostic's field: ``priority[1]`` is "Priority #2"."""
    name, _, index = (field or "").partition("[")
    shown = FIELD_LABELS.get(name, name or "Input")
    if index.rstrip("]").isdigit():
        shown = f"{shown} #{int(index.rstrip(']')) + 1}"
    return shown


@cache
def _static_version(name: str) -> str:
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    """A static file's URL, versioned by its content (safe to cache)."""
    return f"/static/{name}?v={_static_version(name)}"


@cache
def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(("html",), default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = money
    env.filters["age"] = age
    env.filters["size"] = size
    env.globals["static"] = static_url
    env.globals["label"] = label
    return env


def render(request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    """A page; ``session`` (header, sign-out form) and ``notice`` are filled in here."""
    session = getattr(request.state, "console_session", None)
    kind, text = NOTICES.get(request.query_params.get("notice") or "", ("", ""))
    context.setdefault("nav", "")
    html = (
        templates()
        .get_template(template)
        .render(session=session, notice={"kind": kind, "text": text} if text else None, **context)
    )
    return HTMLResponse(html, status_code=status)


def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", status=status, title=title, message=message)


def _to_signin(request: Request) -> Response:
    """To the sign-in form, which returns to this page afterwards (a GET only: a form posted
    without a session is not repeated)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    back = request.method == "GET" and target not in ("/", "/experiments")
    query = "?" + urlencode({"next": target}) if back else ""
    response = RedirectResponse("/signin" + query, status_code=303)
    if request.cookies.get(SESSION_COOKIE):
        response.delete_cookie(SESSION_COOKIE, path="/")
    return response


class ConsoleRoute(APIRoute):
    """Console routes: errors become pages (not the API's JSON), and every response carries
    the console's security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInFirst:
                response = _to_signin(request)
            except RequestValidationError as exc:
                problems = "; ".join(str(e.get("msg", "")) for e in exc.errors())
                response = error_page(request, 400, "Bad request", problems)
            except BadForm:
                response = error_page(
                    request,
                    403,
                    "Form refused",
                    "This form did not come from this console or has expired "
                    "(missing or wrong CSRF token). Reload the page and try again.",
                )
            except NotFoundError:
                response = error_page(
                    request, 404, "Not found", "Nothing here in your organisation."
                )
            except BrokerError as exc:
                response = error_page(
                    request, int(getattr(exc, "http_status", 500)), type(exc).__name__, str(exc)
                )
            for name, value in SECURITY_HEADERS.items():
                response.headers[name] = value
            return response

        return route


router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


# -- sign-in ------------------------------------------------------------------------------------


@router.get("/")
def home(request: Request) -> Response:
    where = "/experiments" if session_of(request) else "/signin"
    return RedirectResponse(where, status_code=303)


def _signin_form(
    request: Request, *, status: int = 200, error: str | None = None, nxt: str | None = None
) -> Response:
    value = secrets.token_urlsafe(32)
    response = render(
        request, "signin.html", status=status, csrf=value, error=error, next=_local(nxt) or ""
    )
    _cookie(request, response, SIGNIN_COOKIE, value, "/signin")
    if request.cookies.get(SESSION_COOKIE):  # a revoked or unknown token: forget it
        response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/signin")
def signin_page(request: Request, next: str | None = None) -> Response:
    if session_of(request):
        return RedirectResponse(_local(next) or "/experiments", status_code=303)
    return _signin_form(request, nxt=next)


@router.post("/signin")
def signin(
    request: Request,
    token: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not _same(expected, csrf):
        return _signin_form(
            request,
            status=403,
            error="The sign-in form expired or did not come from this console: try again.",
            nxt=next,
        )
    secret = token.strip()
    who = service_of(request).broker.authenticate(secret) if secret else None
    if who is None:
        return _signin_form(
            request,
            status=401,
            error="That token is not valid: it is unknown, mistyped or revoked.",
            nxt=next,
        )
    response = RedirectResponse(_local(next) or "/experiments", status_code=303)
    _cookie(request, response, SESSION_COOKIE, secret, "/")
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


@router.post("/signout")
def signout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    if session_of(request) is not None:
        checked(request, csrf)
    response = RedirectResponse("/signin?notice=signed-out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- the Burst page -----------------------------------------------------------------------------


def _values(items: Iterable[str] | None) -> tuple[str, ...]:
    """Values of a repeatable field, commas separating several in one box."""
    out = [v.strip()[:MAX_FIELD] for item in items or () for v in item.split(",")]
    return tuple(v for v in out if v)


def _int(text: str | None, default: int) -> int:
    try:
        return int(text or default)
    except ValueError:
        return default


@lru_cache(maxsize=4)
def _choices(catalog: Catalog) -> dict[str, Any]:
    """What the Burst page's filters offer, and each provider's price date."""
    sources = catalog_document(catalog)["sources"]
    return {
        "gpus": sorted(set(catalog.columns.gpu)),
        "providers": list(catalog.providers),
        "regions": list(catalog.regions),
        "dates": {s["provider"]: s for s in sources},
        "age": catalog.describe_age(),
        "shapes_total": len(catalog),
    }


def _quote(
    broker: Broker, filters: RequestInputs, gpus: str, hours: str, priority: str
) -> tuple[Document | None, list[Diagnostic]]:
    """The ranked plans for the quote form, or the problems with its input."""
    errors: list[Diagnostic] = []
    count = hours_f = None
    try:
        count = int(gpus.strip())
    except ValueError:
        errors.append(Diagnostic(field="gpus", message="must be a whole number, 1 to 72"))
    try:
        hours_f = float(hours.strip() or "1")
    except ValueError:
        errors.append(Diagnostic(field="hours", message="must be a number of hours, such as 2.5"))
    if errors or count is None or hours_f is None:
        return None, errors
    inputs = RequestInputs(
        gpus=count,
        hours=hours_f,
        priority=_values(re.split(r"[\s,]+", priority)),
        gpu=filters.gpu,
        provider=filters.provider,
        region=filters.region,
        provisioning=filters.provisioning,
        names=FIELD_NAMES,
    )
    try:
        request, _ = build_request(
            inputs, burst_max_gpus=broker.settings.burst_max_gpus, catalog=broker.catalog
        )
        result = broker.quote(request)
    except InvalidRequest as exc:
        return None, exc.errors
    return quote_document(result, limit=PLANS_SHOWN), []


@router.get("/burst")
def burst(
    request: Request,
    gpu: Annotated[list[str] | None, Query()] = None,
    provider: Annotated[list[str] | None, Query()] = None,
    region: Annotated[list[str] | None, Query()] = None,
    provisioning: str = "",
    sort: str = "id",
    page: str = "1",
    gpus: str = "",
    hours: str = "",
    priority: str = "",
) -> Response:
    session = signed_in(request)
    broker = session.broker
    catalog = broker.catalog
    filters = RequestInputs(
        gpu=_values(gpu),
        provider=_values(provider),
        region=_values(region),
        provisioning=provisioning.strip() or None,
        names=FIELD_NAMES,
    )
    errors: list[Diagnostic] = []
    found: list[Shape] = []
    try:
        found = shape_filter(filters, catalog).apply(catalog.shapes)
    except InvalidRequest as exc:
        errors = exc.errors
    if sort == "price":
        found = sorted(found, key=lambda s: (s.price_per_node_hour, s.key))
    pages = max(1, -(-len(found) // SHAPES_PER_PAGE))
    number = min(max(1, _int(page, 1)), pages)
    shown = found[(number - 1) * SHAPES_PER_PAGE : number * SHAPES_PER_PAGE]
    quote_doc: Document | None = None
    quote_errors: list[Diagnostic] = []
    if gpus.strip() and not errors:
        quote_doc, quote_errors = _quote(broker, filters, gpus, hours, priority)
    kept: list[tuple[str, str]] = [
        *(("gpu", v) for v in filters.gpu),
        *(("provider", v) for v in filters.provider),
        *(("region", v) for v in filters.region),
        *([("provisioning", filters.provisioning)] if filters.provisioning else []),
        *([("sort", "price")] if sort == "price" else []),
    ]
    asked = [(k, v) for k, v in (("gpus", gpus), ("hours", hours), ("priority", priority)) if v]

    def page_url(n: int) -> str:
        return "/burst?" + urlencode([*kept, *asked, ("page", str(n))])

    return render(
        request,
        "burst.html",
        nav="burst",
        choices=_choices(catalog),
        filters=filters,
        sort=sort,
        errors=errors,
        shapes=[shape_document(s) for s in shown],
        total=len(found),
        first=(number - 1) * SHAPES_PER_PAGE + 1,
        page=number,
        prev_url=page_url(number - 1) if number > 1 else None,
        next_url=page_url(number + 1) if number < pages else None,
        kept=kept,
        form={"gpus": gpus[:MAX_FIELD], "hours": hours[:MAX_FIELD], "priority": priority},
        quote=quote_doc,
        quote_errors=quote_errors,
        quote_more=(quote_doc["plans_total"] - len(quote_doc["plans"])) if quote_doc else 0,
    )


# -- the Experiments pages ----------------------------------------------------------------------

MODES = tuple(m.value for m in ComputeMode)


def _filters(status: str, mode: str) -> tuple[set[Status] | None, str | None, list[Diagnostic]]:
    errors: list[Diagnostic] = []
    statuses = None
    if status:
        try:
            statuses = {Status(status.strip().upper())}
        except ValueError:
            known = ", ".join(s.value for s in Status)
            errors.append(Diagnostic(field="status", message=f"unknown status (known: {known})"))
    if mode and mode not in MODES:
        errors.append(
            Diagnostic(field="mode", message=f"unknown compute mode (known: {', '.join(MODES)})")
        )
    return statuses, mode or None, errors


@router.get("/experiments")
def experiments(
    request: Request,
    status: str = "",
    mode: str = "",
    cursor: str = "",
) -> Response:
    session = signed_in(request)
    broker = session.broker
    statuses, wanted_mode, errors = _filters(status, mode)
    if len(cursor) > MAX_FIELD:
        errors.append(Diagnostic(field="cursor", message="not a cursor this broker handed out"))
    kept = [(k, v) for k, v in (("status", status), ("mode", mode)) if v]
    rows: list[dict[str, Any]] = []
    next_url = None
    if not errors:
        try:
            page = broker.page_clusters(
                statuses, mode=wanted_mode, limit=EXPERIMENTS_PER_PAGE, cursor=cursor or None
            )
        except InvalidRequest as exc:
            errors = exc.errors
        else:
            now = broker.clock()
            for c in page.clusters:
                history = broker.store.transitions(c.id)  # one query
                rows.append(
                    {
                        "doc": cluster_document(c),
                        "age": age(now - c.created_at),
                        "cost": accrue(history, now).cost,
                        "limit": run_time_left(c, history, now),
                    }
                )
            if page.next_cursor:
                next_url = "/experiments?" + urlencode([*kept, ("cursor", page.next_cursor)])
    return render(
        request,
        "experiments.html",
        nav="experiments",
        rows=rows,
        errors=errors,
        statuses=[s.value for s in Status],
        modes=MODES,
        chosen_status=status.strip().upper(),
        chosen_mode=mode,
        filtered=bool(kept),
        paged=bool(cursor),
        first_url="/experiments?" + urlencode(kept),
        next_url=next_url,
        credits=credits_panel(broker),
    )


@router.get("/experiments/{cluster_id}")
def experiment(request: Request, cluster_id: str) -> Response:
    session = signed_in(request)
    report = session.broker.describe(cluster_id)  # another organisation's: NotFoundError
    doc = report_document(report)
    command = (report.cluster.experiment or {}).get("command")
    log = session.broker.logs(report.cluster.id, 0, tail=LOG_LINES)
    live = report.cluster.status not in TERMINAL
    return render(
        request,
        "experiment.html",
        nav="experiments",
        c=doc,
        log_lines=[x.line for x in log.lines],
        log_dropped=log.dropped,
        live=live,
        files=artifacts_panel(session.broker, report.cluster.id),
        syncs=sync_rows(session.broker.store.syncs(report.cluster.id), live=live),
        age=age(session.broker.clock() - report.cluster.created_at),
        limit=run_time_left(report.cluster, report.transitions, session.broker.clock()),
        command=command if isinstance(command, str) else None,
        updated=when(report.cluster.updated_at),
    )


@router.get("/experiments/{cluster_id}/log")
def experiment_log(request: Request, cluster_id: str) -> JSONResponse:
    """The rank-0 log panel's refresh (the page polls it while the experiment is live)."""
    session = signed_in(request)
    log = session.broker.logs(cluster_id, 0, tail=LOG_LINES)
    return JSONResponse(
        {
            "lines": [x.line for x in log.lines],
            "dropped": log.dropped,
            "live": log.cluster.status not in TERMINAL,
        },
        headers={"Cache-Control": "no-store"},
    )


# -- credits and run-time limits ----------------------------------------------------------------

LOW_CREDITS_HOURS = 1.0  # the credits panel warns when less than this is left at the burn rate


def credits_panel(broker: Broker) -> dict[str, Any] | None:
    """The Experiments page's credits summary of the signed-in organisation (never another's:
    ``broker`` is scoped to it): its ``OrgCredits`` (no grant: no limit, no figures), the time
    left at the current burn rate for people, and how loudly to show it (``kind``: ``ok``,
    ``low`` under LOW_CREDITS_HOURS left, ``exhausted``)."""
    found = broker.util_credits().orgs
    if not found:
        return None
    line: OrgCredits = found[0]
    hours = line.hours_left
    remaining = line.remaining
    kind = "ok"
    if remaining is not None and remaining <= 0:
        kind = "exhausted"
    elif hours is not None and hours < LOW_CREDITS_HOURS:
        kind = "low"
    return {
        "line": line,
        "kind": kind,
        "time_left": None if hours is None else age(hours * 3600),
    }


def run_time_left(
    cluster: ClusterRecord, history: Sequence[TransitionRecord], now: float
) -> dict[str, Any]:
    """An experiment's run-time limit as the pages show it, counted as the service's watch
    loop counts it (``broker.runs.over_time``): ``max_hours`` of RUNNING in its run (the
    current cycle and the earlier ones recoveries added: ``broker.env.run_clock``).
    ``state``: ``none`` (no ``max_hours``), ``waiting`` (this cycle is not RUNNING yet),
    ``running`` (``left``, ``until``), ``reached`` (the service is stopping it) or ``ended``
    (this cycle is over); ``limit`` is ``max_hours`` for people."""
    from broker.env import max_hours_of, run_clock

    hours = max_hours_of(cluster)
    if hours is None:
        return {"state": "none", "limit": None}
    limit = age(hours * 3600)
    clock = run_clock(history, cluster.cycle)
    if cluster.status in (Status.PENDING, Status.QUEUED, Status.STARTING):
        ahead = max(0.0, hours * 3600 - clock.used_before)  # earlier cycles of the run used some
        return {"state": "waiting", "limit": limit, "left": age(ahead)}
    if cluster.status is not Status.RUNNING or clock.running_since is None:
        return {"state": "ended", "limit": limit}
    deadline = clock.running_since + hours * 3600 - clock.used_before
    if now >= deadline:
        return {"state": "reached", "limit": limit}
    return {
        "state": "running",
        "limit": limit,
        "left": age(deadline - now),
        "until": when(deadline),
    }


# -- the Artifacts panel ------------------------------------------------------------------------


def size(value: int) -> str:
    """Bytes for people: ``512 B``, ``4.0 KiB``, ``256.0 MiB``, ``1.2 GiB``."""
    if value < 1024:
        return f"{value} B"
    shown = value / 1024
    units = ["KiB", "MiB", "GiB", "TiB"]
    while shown >= 1024 and len(units) > 1:
        shown /= 1024
        units.pop(0)
    return f"{shown:.1f} {units[0]}"


def artifacts_panel(broker: Broker, cluster_id: str) -> dict[str, Any]:
    """The experiment's files (the first ARTIFACTS_SHOWN, by path) and their total, or why
    the store could not be read (the rest of the page still renders)."""
    from providers.storage.base import StorageError

    try:
        found = broker.artifacts(cluster_id)
    except StorageError as exc:
        return {"rows": [], "total": 0, "bytes": 0, "more": 0, "error": str(exc)}
    rows = [
        {
            "path": a.path,
            "kind": a.kind,
            "rank": a.rank,
            "size": a.size,
            "modified": when(a.modified),
            "href": f"/experiments/{quote(cluster_id)}/artifacts/download?"
            + urlencode({"path": a.path}),
        }
        for a in found[:ARTIFACTS_SHOWN]
    ]
    return {
        "rows": rows,
        "total": len(found),
        "bytes": sum(a.size for a in found),
        "more": max(0, len(found) - ARTIFACTS_SHOWN),
        "error": None,
    }


def sync_rows(syncs: Iterable[Mapping[str, Any]], *, live: bool) -> list[dict[str, Any]]:
    """The sync totals per cycle, rank and kind, each with its final sync's state: ``done``,
    ``failed`` (files the final sync could not send: shown loudly), ``pending`` (the
    experiment still runs) or ``missing`` (it ended without a final sync report)."""
    rows = []
    for s in syncs:
        if s["final"]:
            state = "failed" if s["failed"] else "done"
        else:
            state = "pending" if live else "missing"
        rows.append({**s, "state": state})
    return rows


def _linked(broker: Broker) -> Broker:
    """``broker`` whose file store signs links relative to the host the browser talks to
    (this service serves them at /v1/blobs); a cloud store's links are its own."""
    import copy

    from providers.storage.file import FileStore

    store = broker.artifact_store
    if not isinstance(store, FileStore):
        return broker
    view = copy.copy(broker)
    view.__dict__["artifact_store"] = store.with_base("")
    return view


@router.get("/experiments/{cluster_id}/artifacts/download")
def artifact_download(
    request: Request,
    cluster_id: str,
    path: Annotated[str, Query(min_length=1, max_length=1100)],
) -> Response:
    """A fresh signed link to one artifact, made at the click and answered as a redirect:
    the link lives LINK_SECONDS, is never in a page, and the redirect is not cached."""
    session = signed_in(request)
    link = _linked(session.broker).artifact_link(cluster_id, path, expires=LINK_SECONDS)
    return RedirectResponse(link.url, status_code=303)


@router.post("/experiments/{cluster_id}/cancel")
def cancel(request: Request, cluster_id: str, csrf: Annotated[str, Form()] = "") -> Response:
    session = checked(request, csrf)
    before = session.broker.get(cluster_id)  # another organisation's: NotFoundError
    if before.status in TERMINAL:
        notice = "finished"
    else:
        after = session.broker.stop(cluster_id, within=END_ANSWER_WITHIN)
        notice = "stopped" if after.status is Status.STOPPED else "stopping"
    return RedirectResponse(
        f"/experiments/{quote(before.id)}?" + urlencode({"notice": notice}), status_code=303
    )


LOG_LINES = 100  # the seed's "most recently printed 100 lines of the master node log"
ARTIFACTS_SHOWN = 200  # files listed on the page (the CLI lists them all)
LINK_SECONDS = 120.0  # how long a download link the console makes lives


def mount(app: FastAPI) -> None:
    """Add the console's routes and static files to ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


__all__ = ["CSP", "SESSION_COOKIE", "SIGNIN_COOKIE", "Session", "csrf_token", "mount", "router"]
