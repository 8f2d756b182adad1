"""A Python client of the broker service (``broker serve``): the ``Broker``'s methods over HTTP.

A scheduler switches between in-process and remote by one line::

    broker = Broker(Settings.from_env(), backend="sim")         # in-process, a local store
    broker = Client("http://broker:8080", token, backend="sim")   # the service's /v1 API

    cluster = broker.provision(QuoteRequest(rank=RankRequest(gpus=16)))   # RUNNING
    env = broker.env(cluster.id, rank=0)
    broker.release(cluster.id)

The methods a scheduler uses have the Broker's names and return the same types, built from
the service's JSON documents (:mod:`broker.views`) by the ``*_from_document`` functions
below. Where they differ, it is said at the method:

- ``submit`` returns at once (PENDING) as the Broker's does; a worker of the service
  provisions the cluster. ``run``/``wait`` poll until it is RUNNING or ended, and raise what
  ``Broker.run`` raises: ProvisionFailed (CleanupFailed) when it ends FAILED, Cancelled when
  someone else stopped it. ``provision`` is ``submit`` then ``wait``; ``restart`` is
  ``requeue`` then ``wait``.
- ``quote`` returns the quote *document* (``broker quote --json``), not a ``Quote``.
- The service decides ``burst_max_gpus``, the catalog and, unless ``backend="sim"`` asks
  for the simulated cloud, the clouds (a server started with ``--sim`` simulates every one).
- ``blocks``, ``unblock`` and ``reconcile`` are the service's own chores: not here.

Records the documents do not fully describe get neutral values (see
:func:`cluster_from_document` and :func:`attempt_from_document`).

HTTP is the standard library's (``urllib.request``), one connection per call. Errors come
back as the broker's own classes (:mod:`broker.errors`), by the ``error`` kind of the
service's errors document and its HTTP status: 404 NotFoundError, 409 ConflictError (or
StateError, EnvError), 422 InvalidRequest with the service's diagnostics (or NoShape), 401
Unauthorized, 403 Forbidden, 503 StoreError; a service that cannot be reached is
ServiceUnavailable (exit 6) naming the URL; anything else is ServiceError. GETs (and the
idempotent ``stop``/``release``) are retried on a connection error; a submission carries an
``Idempotency-Key`` (one per call unless given), so its retry returns the same cluster.

The token is sent only in the ``Authorization`` header of requests to the service's own
origin (never on a redirect, which is refused), and never appears in a repr, a message or
a log.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from broker import __version__
from broker.api import ClusterPage, ClusterReport, LogPage, Usage
from broker.diagnostics import Diagnostic
from broker.errors import (
    BrokerError,
    Cancelled,
    CatalogError,
    CleanupFailed,
    ConfigError,
    ConflictError,
    CreditsExhausted,
    EnvError,
    Forbidden,
    InvalidRequest,
    NoShape,
    NotFoundError,
    ProvisionFailed,
    ServerExtraMissing,
    ServiceError,
    ServiceUnavailable,
    StateError,
    StoreError,
    TeardownFailed,
    Unauthorized,
    WaitTimeout,
)
from broker.lifecycle import TERMINAL, FailReason, Status
from broker.state import (
    AttemptOutcome,
    AttemptRecord,
    ClusterRecord,
    LogLine,
    NodeRecord,
    TokenRecord,
    TransitionRecord,
)

if TYPE_CHECKING:
    from pathlib import Path

    from broker.artifacts import Artifact
    from broker.credits import CreditsSummary
    from broker.quote import QuoteRequest

Progress = Callable[[str], None]
Document = dict[str, Any]
SIMULATED = "sim"
RETRIES = 3  # calls in all for a retried request (the first and two retries)
MAX_PAGE = 500  # the service's largest page of clusters
USER_AGENT = f"burst-broker-client/{__version__}"

# error kind (the class name the service reports) -> the class, for those built from a message
_BY_KIND: dict[str, type[BrokerError]] = {
    cls.__name__: cls
    for cls in (
        NotFoundError,
        ConflictError,
        StateError,
        EnvError,
        StoreError,
        NoShape,
        TeardownFailed,
        Unauthorized,
        Forbidden,
        ConfigError,
        CatalogError,
        ServerExtraMissing,
        ServiceUnavailable,
        CreditsExhausted,
    )
}
# HTTP status -> the class when the kind names none of the above
_BY_STATUS: dict[int, type[BrokerError]] = {
    401: Unauthorized,
    402: CreditsExhausted,
    403: Forbidden,
    404: NotFoundError,
    409: ConflictError,
    503: StoreError,
}


# -- the service's documents as the Broker's records ------------------------------------------


def _time(value: object) -> float | None:
    """An ISO 8601 time of a document (``2026-12-01T21:14:09Z``) as epoch seconds."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def node_from_document(doc: Mapping[str, Any], region: str | None = None) -> NodeRecord:
    """A node of a cluster document. The document has no ``region``: the cluster's is used
    (every node of a gang is in one zone of one region), "" when it has none."""
    return NodeRecord(
        rank=int(doc["rank"]),
        provider_id=str(doc["provider_id"]),
        private_ip=str(doc["private_ip"]),
        zone=str(doc["zone"]),
        region=str(doc.get("region") or region or ""),
    )


def cluster_from_document(doc: Mapping[str, Any]) -> ClusterRecord:
    """A cluster document (``cluster_document``, or the ``describe`` document) as a record.

    The document leaves out what is internal to the store; those fields get neutral values:
    ``request`` holds only ``rank.gpus`` and ``experiment_name`` (so ``.gpus`` and ``.name``
    work), ``experiment`` is None, ``nodes_count`` is the number of nodes (None without any),
    ``owner``, ``lease_until``, ``ending`` and ``idempotency_key`` are None and ``version`` is
    0. Times have the document's resolution (whole seconds)."""
    region = _opt_str(doc.get("region"))
    nodes = tuple(node_from_document(n, region) for n in doc.get("nodes") or ())
    request: dict[str, Any] = {"rank": {"gpus": doc.get("gpus")}}
    if doc.get("name") is not None:
        request["experiment_name"] = doc["name"]
    created = _time(doc.get("created_at")) or 0.0
    return ClusterRecord(
        id=str(doc["cluster_id"]),
        created_at=created,
        updated_at=_time(doc.get("updated_at")) or created,
        status=Status(doc["status"]),
        reason=_opt_str(doc.get("reason")),
        detail=_opt_str(doc.get("detail")),
        cycle=int(doc.get("cycle") or 1),
        request=request,
        experiment=None,
        backend=_opt_str(doc.get("backend")),
        shape_id=_opt_str(doc.get("shape_id")),
        provider=_opt_str(doc.get("provider")),
        region=region,
        zone=_opt_str(doc.get("zone")),
        nodes_count=len(nodes) or None,
        procs_per_node=_opt_int(doc.get("procs_per_node")),
        gpus_billed=_opt_int(doc.get("gpus_billed")),
        price_per_hour=_opt_float(doc.get("price_per_hour")),
        nodes=nodes,
        owner=None,
        lease_until=None,
        ending=None,
        version=0,
        org=_opt_str(doc.get("org")),
        mode=str(doc.get("mode") or "burst"),
        idempotency_key=None,
    )


def attempt_from_document(doc: Mapping[str, Any], backend: str | None = None) -> AttemptRecord:
    """An attempt document as a record. The document has no times, no idempotency token and
    no store id: ``started_at`` is 0.0 and ``ended_at`` the duration (None while in flight),
    so ``.duration`` is exact; ``token`` is "" and ``id`` the attempt number. ``provider`` and
    ``region`` are read from the shape id, ``backend`` is the cluster's (else the provider)."""
    shape_id = str(doc["shape_id"])
    parts = shape_id.split(":")
    provider = parts[0]
    duration = _opt_float(doc.get("duration_s"))
    return AttemptRecord(
        id=int(doc["attempt"]),
        cycle=int(doc["cycle"]),
        attempt_no=int(doc["attempt"]),
        shape_id=shape_id,
        provider=provider,
        backend=backend or provider,
        region=parts[1] if len(parts) > 1 else "",
        zone=str(doc["zone"]),
        nodes=int(doc["nodes"]),
        token="",
        started_at=0.0,
        ended_at=duration,
        outcome=AttemptOutcome(doc["outcome"]),
        error_code=_opt_str(doc.get("error_code")),
        reach=_opt_str(doc.get("reach")),
        reason=_opt_str(doc.get("reason")),
        message=_opt_str(doc.get("message")),
        retries=int(doc.get("retries") or 0),
        nodes_created=int(doc.get("nodes_created") or 0),
        nodes_cleaned=int(doc.get("nodes_cleaned") or 0),
    )


def transition_from_document(doc: Mapping[str, Any]) -> TransitionRecord:
    """A lifecycle entry of the ``describe`` document; its ``price_per_hour`` and
    ``gpus_billed`` are not in the document (None: the report's usage is the service's)."""
    return TransitionRecord(
        cycle=int(doc["cycle"]),
        status=Status(doc["status"]),
        at=_time(doc["at"]) or 0.0,
        reason=_opt_str(doc.get("reason")),
        detail=_opt_str(doc.get("detail")),
        price_per_hour=None,
        gpus_billed=None,
    )


def report_from_document(doc: Mapping[str, Any]) -> ClusterReport:
    """The ``describe`` document (``GET /v1/clusters/{id}``) as a ClusterReport; the usage
    is the service's (accrued when it answered)."""
    cluster = cluster_from_document(doc)
    return ClusterReport(
        cluster=cluster,
        transitions=[transition_from_document(t) for t in doc.get("transitions") or ()],
        attempts=[attempt_from_document(a, cluster.backend) for a in doc.get("attempts") or ()],
        usage=Usage(float(doc.get("gpu_hours") or 0.0), float(doc.get("cost") or 0.0)),
        syncs=[dict(x) for x in doc.get("artifact_syncs") or ()],
    )


def token_from_document(doc: Mapping[str, Any]) -> TokenRecord:
    return TokenRecord(
        id=str(doc["token_id"]),
        org=str(doc["org"]),
        name=str(doc["name"]),
        role=str(doc["role"]),
        created_at=_time(doc.get("created_at")) or 0.0,
        revoked_at=_time(doc.get("revoked_at")),
    )


# -- requests as the API's bodies ---------------------------------------------------------------


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise InvalidRequest(
        [Diagnostic(field="experiment", message=f"a launch file has no value like {value!r}")]
    )


def launch_text(experiment: Mapping[str, Any], request: QuoteRequest | None = None) -> str:
    """A launch file (TOML) for an experiment (a launch file's ``Experiment`` as JSON, as
    ``broker.inputs.build_request`` returns it). With ``request``, its GPUs and priority list
    are the file's, so the service builds the same request."""
    values = dict(experiment)
    if request is not None:
        values["gpus"] = request.rank.gpus
        values["burst_shape_priority_list"] = (
            None if request.rank.priority is None else list(request.rank.priority)
        )
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if v is not None)


def request_body(
    request: QuoteRequest,
    *,
    experiment: Mapping[str, Any] | None = None,
    backend: str | None = None,
) -> Document:
    """A QuoteRequest as the fields of ``POST /v1/clusters`` and ``POST /v1/quote``: gpus,
    priority, strict_priority, gpu, provider, region, provisioning, max_price_per_hour and
    hours (the service applies its own ``burst_max_gpus``). With ``experiment`` the body
    carries it as ``launch_file`` text instead of ``gpus`` and ``priority``.
    ``backend="sim"`` adds ``"sim"`` to the providers: the simulated cloud serves it."""
    r = request.rank
    flt = r.filter
    providers = list(flt.providers)
    if backend is not None and backend not in providers:
        providers.append(backend)
    body: Document = {
        "gpus": r.gpus,
        "priority": list(r.priority or ()),
        "strict_priority": r.strict_priority,
        "gpu": list(flt.gpus),
        "provider": providers,
        "region": list(flt.regions),
        "provisioning": flt.provisioning.value if flt.provisioning else None,
        "max_price_per_hour": r.max_price_per_hour,
        "hours": request.hours,
    }
    if experiment is not None:
        values = dict(experiment)
        image = values.pop("image", None)  # a request field, not a launch-file key
        max_hours = values.pop("max_hours", None)  # the same
        max_recoveries = values.pop("max_recoveries", None)  # the same
        body["launch_file"] = launch_text(values, request)
        if image is not None:
            body["image"] = image
        if max_hours is not None:
            body["max_hours"] = max_hours
        if max_recoveries is not None:
            body["max_recoveries"] = max_recoveries
        del body["gpus"], body["priority"]
    return {k: v for k, v in body.items() if v not in (None, [], False)}


# -- the client ---------------------------------------------------------------------------------


class _Unreachable(Exception):
    """A connection-level failure (nothing or no answer came back): may be retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect (the token must reach only the service it was made for)."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a service's base URL (None when it can). Never echoes
    credentials a URL may carry."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # a malformed port raises ValueError
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be http://HOST[:PORT] or https://HOST[:PORT] (the service's base URL)"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (the token is given separately)"
    if parts.query or parts.fragment:
        return "must not have a query or a fragment"
    return None


def _token_problem(token: object) -> str | None:
    if not isinstance(token, str) or not token:
        return "an API token is required (`broker token create` makes one)"
    if not all(33 <= ord(ch) < 127 for ch in token):
        return "has characters no API token has (spaces, control or non-ASCII characters)"
    return None


class Client:
    """The Broker's methods over the service's ``/v1`` API (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        backend: str | None = None,
        progress: Progress | None = None,
        retries: int = RETRIES,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``url`` is the service's base URL (``http://host:8080``); ``token`` an API token
        of an organisation; ``timeout`` seconds per HTTP call; ``backend="sim"`` asks for
        the simulated cloud (as ``Broker(backend="sim")``); ``progress`` hears what
        ``wait`` sees; ``retries`` is how many calls a retried request makes in all."""
        errors = []
        why = check_url(url) if isinstance(url, str) else "must be a string"
        if why is not None:
            errors.append(Diagnostic(field="url", message=why))
        why = _token_problem(token)
        if why is not None:
            errors.append(Diagnostic(field="token", message=why))
        if backend is not None and backend != SIMULATED:
            errors.append(
                Diagnostic(
                    field="backend", message=f"must be None or {SIMULATED!r}, got {backend!r}"
                )
            )
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            errors.append(Diagnostic(field="timeout", message="must be a number of seconds > 0"))
        if errors:
            raise InvalidRequest(errors)
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.backend = backend
        self.progress = progress
        self.retries = max(1, int(retries))
        self.sleep = sleep
        self.clock = clock
        self.__token = token  # name-mangled, kept out of repr and of every message
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- HTTP -----------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self.__token, "***") if self.__token else text

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = False,
    ) -> Any:
        """One API call: the JSON document it answers (None for 204), or the broker's error.
        With ``retry``, connection failures are retried (tenacity) before giving up."""
        where = self.url + path
        if query:
            where += "?" + urllib.parse.urlencode(
                {k: v for k, v in query.items() if v is not None}, doseq=True
            )
        data = None if body is None else json.dumps(body).encode()
        attempts = self.retries if retry else 1
        try:
            if attempts == 1:
                return self._once(method, where, path, data, headers)
            from tenacity import (
                Retrying,
                retry_if_exception_type,
                stop_after_attempt,
                wait_exponential,
            )

            retrying = Retrying(
                stop=stop_after_attempt(attempts),
                wait=wait_exponential(multiplier=0.2, max=2.0),
                retry=retry_if_exception_type(_Unreachable),
                sleep=self.sleep,
                reraise=True,
            )
            return retrying(self._once, method, where, path, data, headers)
        except _Unreachable as exc:
            tries = f"; {attempts} tries" if attempts > 1 else ""
            raise ServiceUnavailable(
                self._scrub(
                    f"the broker service at {self.url} cannot be reached "
                    f"({method} {path}: {exc.reason}{tries})"
                )
            ) from None

    def _once(
        self,
        method: str,
        where: str,
        path: str,
        data: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> Any:
        req = urllib.request.Request(where, data=data, method=method)
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", USER_AGENT)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        # unredirected: never copied onto another request, whatever handler runs
        req.add_unredirected_header("Authorization", f"Bearer {self.__token}")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            try:
                raw = exc.read()
            except OSError:
                raw = b""
            raise self._error(exc.code, raw, method, path, exc.headers) from None
        except urllib.error.URLError as exc:
            raise _Unreachable(self._reason(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:  # a reset, a timeout, a bad line
            raise _Unreachable(self._reason(exc)) from None
        if status == 204 or not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ServiceError(
                f"{method} {path} answered {status} with a body that is not JSON "
                "(is the URL the broker service's?)",
                status,
            ) from None

    def _reason(self, exc: object) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.timeout:g} s"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return self._scrub(str(text))

    def _error(self, status: int, raw: bytes, method: str, path: str, headers: Any) -> BrokerError:
        """The service's errors document (``{"errors": [...], "error": kind}``) as the
        broker's error: by its kind when the tree has that class for this status, else by
        the status."""
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
            if status in (502, 503, 504):
                return ServiceUnavailable(
                    f"the broker service at {self.url} is unavailable "
                    f"({method} {path}: HTTP {status})"
                )
            if 300 <= status < 400:
                where = headers.get("Location", "elsewhere") if headers is not None else ""
                return ServiceError(
                    self._scrub(
                        f"{method} {path} was redirected ({status}) to {where}: give the "
                        "service's own base URL (redirects are not followed)"
                    ),
                    status,
                )
            return ServiceError(
                f"{method} {path} answered HTTP {status} without the broker's errors "
                "document (is the URL the broker service's?)",
                status,
            )
        errors = _diagnostics(doc.get("errors"), self._scrub)
        warnings = _diagnostics(doc.get("warnings"), self._scrub)
        kind = doc.get("error")
        message = "; ".join(d.message if d.field is None else d.render() for d in errors)
        message = message or f"HTTP {status}"
        if kind == "InvalidRequest" or (kind is None and status in (400, 413, 422)):
            return InvalidRequest(errors or [Diagnostic(field=None, message=message)], warnings)
        if kind == "PayloadTooLarge":
            return InvalidRequest(errors, warnings)
        if kind == "Cancelled":
            return Cancelled(message)
        cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
        if cls is not None and cls.http_status == status:
            return cls(message)
        if status == 404 and kind is None:
            return ServiceError(
                f"{method} {path}: the service has no such route (HTTP 404: {message}); is "
                "the URL the broker service's base URL?",
                status,
            )
        fallback = _BY_STATUS.get(status)
        if fallback is not None:
            return fallback(message)
        return ServiceError(f"{method} {path}: HTTP {status}: {message}", status)

    def _get(self, path: str, **query: Any) -> Any:
        return self._call("GET", path, query=query, retry=True)

    @staticmethod
    def _path(*parts: str) -> str:
        return "/v1/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)

    def _cluster_path(self, cluster_id: str, *rest: str) -> str:
        if not isinstance(cluster_id, str) or not cluster_id:
            raise NotFoundError("no cluster id given")
        return self._path("clusters", cluster_id, *rest)

    def _read(self, build: Callable[[Any], Any], doc: Any, what: str) -> Any:
        try:
            return build(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ServiceError(
                f"the service's {what} document cannot be read by this client "
                f"({type(exc).__name__}: {exc}); are the client and the service the same "
                "version?"
            ) from None

    def _cluster(self, doc: Any) -> ClusterRecord:
        cluster: ClusterRecord = self._read(cluster_from_document, doc, "cluster")
        return cluster

    # -- who --------------------------------------------------------------------------------------

    def whoami(self) -> Document:
        """``{"org", "role", "token_id", "name"}`` of this client's token."""
        doc: Document = self._get("/v1/whoami")
        return doc

    # -- quoting ----------------------------------------------------------------------------------

    def quote(
        self,
        request: QuoteRequest | Mapping[str, Any],
        *,
        explain: bool = False,
        backend: str | None = None,
        limit: int | None = None,
    ) -> Document:
        """``POST /v1/quote``: the quote **document** (as ``broker quote --json``; the
        Broker returns a ``Quote``). ``request`` is a QuoteRequest or the API's fields."""
        body = self._body(request, backend=backend)
        body["explain"] = explain
        if limit is not None:
            body["limit"] = limit
        doc: Document = self._call("POST", "/v1/quote", body=body, retry=True)
        return doc

    def _body(
        self,
        request: QuoteRequest | Mapping[str, Any],
        *,
        experiment: Mapping[str, Any] | None = None,
        backend: str | None = None,
    ) -> Document:
        chosen = backend if backend is not None else self.backend
        if isinstance(request, Mapping):
            if experiment is not None:
                raise InvalidRequest(
                    [
                        Diagnostic(
                            field="experiment",
                            message="give the launch file as the body's launch_file text",
                        )
                    ]
                )
            body = dict(request)
            if chosen is not None:
                providers = body.get("provider") or []
                providers = [providers] if isinstance(providers, str) else list(providers)
                if chosen not in providers:
                    body["provider"] = [*providers, chosen]
            return body
        return request_body(request, experiment=experiment, backend=chosen)

    # -- provisioning -----------------------------------------------------------------------------

    def submit(
        self,
        request: QuoteRequest | Mapping[str, Any],
        *,
        experiment: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ClusterRecord:
        """``POST /v1/clusters``: validated and recorded PENDING by the service, at once
        (202); a worker of the service provisions it. ``request`` is a QuoteRequest (sent
        as the API's fields, :func:`request_body`) or those fields as a mapping (e.g.
        ``{"launch_file": text, "priority": [...]}``). ``experiment`` (a launch file's
        experiment, as ``build_request`` returns it) travels as launch-file text. Every call
        sends an ``Idempotency-Key`` (a new one unless given), so the retries this client
        makes after a dropped connection return the one cluster the first made."""
        body = self._body(request, experiment=experiment)
        key = idempotency_key or uuid.uuid4().hex
        doc = self._call(
            "POST", "/v1/clusters", body=body, headers={"Idempotency-Key": key}, retry=True
        )
        return self._cluster(doc)

    def wait(
        self, cluster_id: str, *, poll: float = 1.0, timeout: float | None = None
    ) -> ClusterRecord:
        """Poll ``GET /v1/clusters/{id}`` until the cluster is RUNNING (returned) or ends:
        FAILED raises ProvisionFailed (CleanupFailed for reason CleanupFailed) with its
        attempts, STOPPED or COMPLETED raises Cancelled (someone stopped it), as
        ``Broker.run`` does. Polls start at 0.1 s and slow to every ``poll`` seconds. After
        ``timeout`` seconds (None: no limit; the service's own deadline fails it) it raises
        WaitTimeout; the service keeps provisioning it."""
        start = self.clock()
        delay = min(0.1, poll)
        seen = _Seen()
        while True:
            report: ClusterReport = self.describe(cluster_id)
            cluster = report.cluster
            self._tell(seen, report)
            if cluster.status is Status.RUNNING:
                return cluster
            if cluster.status is Status.FAILED:
                if cluster.reason == FailReason.CLEANUP_FAILED.value:
                    raise CleanupFailed(cluster, report.attempts)
                raise ProvisionFailed(cluster, report.attempts)
            if cluster.status in TERMINAL:
                raise Cancelled(
                    f"cluster {cluster.id} was moved by someone else while it was being "
                    f"provisioned: it is {cluster.status.value} now",
                    cluster,
                )
            waited = self.clock() - start
            if timeout is not None and waited >= timeout:
                raise WaitTimeout(
                    f"cluster {cluster.id} is still {cluster.status.value} after {waited:.0f} s "
                    "(the service is still provisioning it)",
                    cluster,
                )
            pause = delay if timeout is None else max(0.0, min(delay, timeout - waited))
            self.sleep(pause)
            delay = min(poll, delay * 1.5)

    def run(self, cluster_id: str) -> ClusterRecord:
        """As ``Broker.run``: the cluster RUNNING, or its error (the service's workers
        provision it; this waits for them, see :meth:`wait`)."""
        return self.wait(cluster_id)

    def provision(
        self,
        request: QuoteRequest | Mapping[str, Any],
        *,
        experiment: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        poll: float = 1.0,
        timeout: float | None = None,
    ) -> ClusterRecord:
        """``submit`` then ``wait``: the cluster RUNNING, or ProvisionFailed / Cancelled /
        WaitTimeout."""
        cluster = self.submit(request, experiment=experiment, idempotency_key=idempotency_key)
        return self.wait(cluster.id, poll=poll, timeout=timeout)

    def requeue(self, cluster_id: str) -> ClusterRecord:
        """``POST /v1/clusters/{id}/restart``: a finished cluster PENDING again, as a new
        cycle (a worker provisions it)."""
        return self._cluster(self._call("POST", self._cluster_path(cluster_id, "restart")))

    def restart(
        self, cluster_id: str, *, poll: float = 1.0, timeout: float | None = None
    ) -> ClusterRecord:
        """As ``Broker.restart``: ``requeue`` then ``wait`` (RUNNING, or its error)."""
        cluster = self.requeue(cluster_id)
        return self.wait(cluster.id, poll=poll, timeout=timeout)

    def _tell(self, seen: _Seen, report: ClusterReport) -> None:
        """Progress as the service records it: the lifecycle, then each attempt of this
        cycle as it starts and ends, then RUNNING or FAILED."""
        say = self.progress
        if say is None:
            return
        cluster = report.cluster
        state = (cluster.status, cluster.cycle)
        changed = state != seen.state
        seen.state = state
        final = cluster.status in (Status.RUNNING, Status.FAILED)
        if changed and not final and cluster.status is not Status.PENDING:
            say(f"cluster {cluster.id}: {cluster.status.value}")
        for a in report.attempts:
            key = (a.cycle, a.attempt_no)
            if a.cycle != cluster.cycle:
                continue
            if key not in seen.started:
                seen.started.add(key)
                say(f"attempt {a.attempt_no}: {a.nodes} x {a.shape_id} in {a.zone}")
            done = a.outcome not in (AttemptOutcome.INTENT, AttemptOutcome.RUNNING)
            if done and key not in seen.ended:
                seen.ended.add(key)
                why = f"{a.error_code} ({a.reason})" if a.error_code else str(a.outcome)
                tail = f": {a.message}" if a.message else ""
                say(f"attempt {a.attempt_no} {a.outcome}: {why}{tail}")
        if changed and cluster.status is Status.RUNNING:
            nodes = len(cluster.nodes)
            say(f"RUNNING {cluster.id}: {nodes} x {cluster.shape_id} in {cluster.zone}")
        elif changed and cluster.status is Status.FAILED:
            say(f"FAILED {cluster.id}: {cluster.reason}: {cluster.detail}")

    # -- tracking ---------------------------------------------------------------------------------

    def get(self, cluster_id: str) -> ClusterRecord:
        """``GET /v1/clusters/{id}``; an id prefix works as locally."""
        return self._cluster(self._get(self._cluster_path(cluster_id)))

    def describe(self, cluster_id: str) -> ClusterReport:
        """``GET /v1/clusters/{id}``: lifecycle, attempts, usage (the service's)."""
        doc = self._get(self._cluster_path(cluster_id))
        report: ClusterReport = self._read(report_from_document, doc, "describe")
        return report

    def attempts(self, cluster_id: str) -> list[AttemptRecord]:
        return self.describe(cluster_id).attempts

    def page_clusters(
        self,
        statuses: Collection[Status] | None = None,
        *,
        mode: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ClusterPage:
        """``GET /v1/clusters``: one page, newest first, and the next page's cursor."""
        doc = self._get(
            "/v1/clusters",
            status=sorted(s.value for s in statuses) if statuses else None,
            mode=mode,
            limit=limit,
            cursor=cursor,
        )

        def build(d: Any) -> ClusterPage:
            return ClusterPage(
                [cluster_from_document(c) for c in d["clusters"]], d.get("next_cursor")
            )

        page: ClusterPage = self._read(build, doc, "clusters")
        return page

    def list_clusters(
        self, statuses: Collection[Status] | None = None, *, limit: int | None = 50
    ) -> list[ClusterRecord]:
        """The newest ``limit`` clusters in these statuses (None: all), oldest first, as
        ``Broker.list_clusters`` (pages of ``GET /v1/clusters`` until enough)."""
        if statuses is not None and not statuses:
            return []
        found: list[ClusterRecord] = []
        cursor: str | None = None
        while limit is None or len(found) < limit:
            size = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(found))
            page = self.page_clusters(statuses, limit=size, cursor=cursor)
            found.extend(page.clusters)
            cursor = page.next_cursor
            if cursor is None:
                break
        return found[::-1]

    def env(self, cluster_id: str, rank: int) -> dict[str, str]:
        """``GET /v1/clusters/{id}/env?rank=R``: node R's variables."""
        doc = self._get(self._cluster_path(cluster_id, "env"), rank=rank)
        if not isinstance(doc, dict):
            raise ServiceError("the service's env document is not an object")
        return {str(k): str(v) for k, v in doc.items()}

    def artifacts(self, cluster_id: str, kind: str | None = None) -> list[Artifact]:
        """``GET /v1/clusters/{id}/artifacts``: the files the experiment wrote."""
        from broker.artifacts import Artifact

        query = {} if kind is None else {"kind": kind}
        doc = self._get(self._cluster_path(cluster_id, "artifacts"), **query)

        def build(d: Any) -> list[Artifact]:
            return [
                Artifact(
                    str(a["path"]),
                    str(a["kind"]),
                    int(a["rank"]),
                    int(a["size"]),
                    float(a["modified"]),
                )
                for a in d["artifacts"]
            ]

        found: list[Artifact] = self._read(build, doc, "artifacts")
        return found

    def fetch_artifact(self, cluster_id: str, path: str, dest: Path) -> int:
        """Download one artifact (``<kind>/rank-<r>/<file>``) to ``dest`` through a
        short-lived link from the service; the bytes written."""
        import shutil
        import urllib.request

        where = self._cluster_path(cluster_id, "artifacts", "link")
        doc = self._call("GET", where, query={"path": path}, retry=True)
        url, headers = str(doc["url"]), {str(k): str(v) for k, v in doc["headers"].items()}
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=60) as answer, tmp.open("wb") as out:
                shutil.copyfileobj(answer, out, 1024 * 1024)
        except OSError as exc:  # the link's URL carries a signature: never shown
            tmp.unlink(missing_ok=True)
            why = exc.__class__.__name__
            raise ServiceUnavailable(f"downloading {path} failed: {why}") from None
        os.replace(tmp, dest)
        return dest.stat().st_size

    def logs(
        self,
        cluster_id: str,
        rank: int = 0,
        *,
        tail: int | None = 100,
        after: int | None = None,
        wait: float = 0.0,
    ) -> LogPage:
        """``GET /v1/clusters/{id}/logs``: as ``Broker.logs``; with ``after`` and ``wait``
        the service holds the call up to ``wait`` seconds for a new line (following)."""
        query: dict[str, Any] = {"rank": rank, "tail": tail or 10_000}
        if after is not None:
            query["after"] = after
        if wait:
            query["wait"] = wait
        doc = self._get(self._cluster_path(cluster_id, "logs"), **query)

        def build(d: Any) -> LogPage:
            lines = [
                LogLine(int(x["id"]), int(x["cycle"]), int(x["seq"]), str(x["line"]))
                for x in d["lines"]
            ]
            cluster = self.get(str(d["cluster_id"]))
            return LogPage(cluster, int(d["rank"]), lines, int(d["dropped"]))

        page: LogPage = self._read(build, doc, "logs")
        return page

    def util(self) -> dict[str, dict[str, float]]:
        """``GET /v1/util``: GPUs starting and running, spend per hour, per provider."""
        doc = self._get("/v1/util")

        def build(d: Any) -> dict[str, dict[str, float]]:
            rows = d["providers"].items()
            return {str(k): {str(f): float(v) for f, v in row.items()} for k, row in rows}

        util: dict[str, dict[str, float]] = self._read(build, doc, "util")
        return util

    def util_credits(self) -> CreditsSummary:
        """``GET /v1/util``'s credits: the organisation's credits left and burn rate."""
        from broker.credits import CreditsSummary, OrgCredits

        doc = self._get("/v1/util")

        def build(d: Any) -> CreditsSummary:
            orgs = tuple(OrgCredits.from_json_dict(c) for c in d["credits"])
            return CreditsSummary(orgs, int(d["credits_more"]))

        credits: CreditsSummary = self._read(build, doc, "util")
        return credits

    # -- ending clusters --------------------------------------------------------------------------

    def release(self, cluster_id: str) -> ClusterRecord:
        """``POST .../release``: COMPLETED (a finished cluster is returned as it is, so a
        retry after a dropped connection is harmless)."""
        path = self._cluster_path(cluster_id, "release")
        return self._cluster(self._call("POST", path, retry=True))

    def stop(self, cluster_id: str) -> ClusterRecord:
        """``POST .../stop``: STOPPED, also a cluster being provisioned (retried like
        ``release``). The service answers within a few seconds: TERMINATING while the
        commands' stop and final sync go on (``broker stop`` then polls for the end)."""
        path = self._cluster_path(cluster_id, "stop")
        return self._cluster(self._call("POST", path, retry=True))

    def delete(self, cluster_id: str) -> None:
        """``DELETE /v1/clusters/{id}``: forget a COMPLETED, STOPPED or FAILED cluster."""
        self._call("DELETE", self._cluster_path(cluster_id))

    # -- API tokens (an admin token of the organisation) ------------------------------------------

    def create_token(
        self, org: str, *, name: str = "token", role: str = "member"
    ) -> tuple[str, TokenRecord]:
        """``POST /v1/tokens``: (the new secret, its record). The service makes tokens only
        for this token's own organisation: another ``org`` is NotFoundError, as for a
        scoped Broker."""
        mine = self.whoami().get("org")
        if org != mine:
            raise NotFoundError(f"no organisation {org!r}")
        doc = self._call("POST", "/v1/tokens", body={"name": name, "role": role})
        secret = doc.get("token") if isinstance(doc, dict) else None
        if not isinstance(secret, str):
            raise ServiceError("the service's token document has no token")
        record: TokenRecord = self._read(token_from_document, doc, "token")
        return secret, record

    def list_tokens(self) -> list[TokenRecord]:
        """``GET /v1/tokens``: the organisation's tokens, revoked ones included."""
        doc = self._get("/v1/tokens")

        def build(d: Any) -> list[TokenRecord]:
            return [token_from_document(t) for t in d["tokens"]]

        tokens: list[TokenRecord] = self._read(build, doc, "tokens")
        return tokens

    def revoke_token(self, token_id: str) -> TokenRecord:
        """``DELETE /v1/tokens/{id}``: revoked (revoking twice is no error)."""
        doc = self._call("DELETE", self._path("tokens", token_id), retry=True)
        record: TokenRecord = self._read(token_from_document, doc, "token")
        return record


class _Seen:
    """What ``wait`` has already reported."""

    def __init__(self) -> None:
        self.started: set[tuple[int, int]] = set()
        self.ended: set[tuple[int, int]] = set()
        self.state: tuple[Status, int] | None = None


def _diagnostics(items: object, scrub: Callable[[str], str]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        field = item.get("field")
        line = item.get("line")
        out.append(
            Diagnostic(
                field=field if isinstance(field, str) else None,
                message=scrub(str(item.get("message") or "")),
                line=line if isinstance(line, int) and not isinstance(line, bool) else None,
            )
        )
    return out


__all__ = [
    "Client",
    "attempt_from_document",
    "check_url",
    "cluster_from_document",
    "launch_text",
    "node_from_document",
    "report_from_document",
    "request_body",
    "token_from_document",
    "transition_from_document",
]
