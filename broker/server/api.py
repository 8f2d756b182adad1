"""The ``/v1`` API: the same documents as the CLI's ``--json``, for the caller's organisation.

Every route is a thin call into the Broker scoped to the token's organisation: another
organisation's cluster is simply not found (404), never "forbidden", so its existence is not
revealed. Provisioning never blocks a request: ``POST /v1/clusters`` records the cluster and
answers 202; a worker provisions it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from broker.api import Broker
from broker.diagnostics import Diagnostic
from broker.errors import InvalidRequest
from broker.inputs import build_request, split_backend
from broker.lifecycle import Status
from broker.server.auth import admin, org_broker, principal, service_of
from broker.server.schemas import QuoteBody, RequestBody, TokenBody
from broker.tokens import Principal
from broker.views import (
    Document,
    catalog_document,
    cluster_document,
    env_document,
    quote_document,
    report_document,
    shape_document,
    token_document,
    util_document,
)

router = APIRouter(prefix="/v1", tags=["v1"])
OrgBroker = Annotated[Broker, Depends(org_broker)]
Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
MAX_IDEMPOTENCY_KEY = 255


def _statuses(values: list[str] | None) -> set[Status] | None:
    if not values:
        return None
    wanted: set[Status] = set()
    for value in (v.strip().upper() for item in values for v in item.split(",")):
        if not value:
            continue
        try:
            wanted.add(Status(value))
        except ValueError:
            known = ", ".join(s.value for s in Status)
            raise InvalidRequest(
                [Diagnostic(field="status", message=f"unknown status {value!r} (known: {known})")]
            ) from None
    return wanted or None


@router.get("/whoami", summary="The caller's organisation and role")
def whoami(who: Caller) -> Document:
    return {
        "org": who.org,
        "role": who.role.value,
        "token_id": who.token_id,
        "name": who.token_name,
    }


@router.get("/shapes", summary="The shape catalog, filtered like `broker shapes`")
def shapes(
    broker: OrgBroker,
    gpu: Annotated[list[str] | None, Query()] = None,
    provider: Annotated[list[str] | None, Query()] = None,
    region: Annotated[list[str] | None, Query()] = None,
    provisioning: str | None = None,
    max_price_per_hour: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
) -> Document:
    from broker.inputs import RequestInputs, shape_filter

    inputs = RequestInputs(
        gpu=tuple(gpu or ()),
        provider=tuple(provider or ()),
        region=tuple(region or ()),
        provisioning=provisioning,
    )
    flt = shape_filter(inputs, broker.catalog)
    cap = max_price_per_hour
    found = [
        s for s in flt.apply(broker.catalog.shapes) if cap is None or s.price_per_node_hour <= cap
    ]
    return {
        "shapes": [shape_document(s) for s in found],
        "total": len(found),
        "catalog": catalog_document(broker.catalog),
    }


@router.post("/quote", summary="Rank and price plans (a dry run), as `broker quote --json`")
def post_quote(body: QuoteBody, broker: OrgBroker) -> Document:
    backend, providers = split_backend(body.provider)
    request, _ = build_request(
        body.inputs(providers),
        burst_max_gpus=broker.settings.burst_max_gpus,
        catalog=broker.catalog,
    )
    result = broker.quote(request, explain=body.explain, backend=backend)
    return quote_document(result, limit=body.limit or None)


@router.post(
    "/clusters",
    status_code=202,
    summary="Submit a cluster: validated and stored at once (PENDING); a worker provisions it",
)
def submit(
    body: RequestBody,
    request: Request,
    broker: OrgBroker,
    idempotency_key: Annotated[str | None, Header(max_length=MAX_IDEMPOTENCY_KEY)] = None,
) -> Document:
    backend, providers = split_backend(body.provider)
    quote_request, experiment = build_request(
        body.inputs(providers),
        burst_max_gpus=broker.settings.burst_max_gpus,
        catalog=broker.catalog,
    )
    backend = backend or broker.backend  # a server started with --sim simulates everything
    if (experiment or {}).get("command") and backend is None and not broker.service_public:
        raise InvalidRequest(
            [
                Diagnostic(
                    field="command",
                    message="this service cannot run a command on a real cloud: its nodes "
                    "could not reach it. Start `broker serve --public-url URL` with a URL the "
                    'nodes reach, or submit to the simulated cloud ("provider": "sim")',
                )
            ]
        )
    target = broker if backend == broker.backend else _view(broker, backend=backend)
    cluster = target.submit(quote_request, experiment=experiment, idempotency_key=idempotency_key)
    service_of(request).wake()
    doc = cluster_document(cluster)
    doc["warnings"] = [w.to_json_dict() for w in quote_request.warnings]
    return doc


def _view(broker: Broker, **fields: object) -> Broker:
    """A shallow copy of the request's Broker with some fields replaced (its backend, its
    artifact store): it shares the store and the catalog, never opening a second engine."""
    import copy

    view = copy.copy(broker)
    view.__dict__.update(fields)  # plain attributes and cached properties alike
    return view


@router.get("/clusters", summary="The organisation's clusters, newest first, paginated")
def list_clusters(
    broker: OrgBroker,
    status: Annotated[list[str] | None, Query()] = None,
    mode: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Document:
    page = broker.page_clusters(_statuses(status), mode=mode, limit=limit, cursor=cursor)
    return {
        "clusters": [cluster_document(c) for c in page.clusters],
        "next_cursor": page.next_cursor,
    }


@router.get("/clusters/{cluster_id}", summary="A cluster: lifecycle, attempts, GPU-hours, cost")
def describe(cluster_id: str, broker: OrgBroker) -> Document:
    return report_document(broker.describe(cluster_id))


@router.get("/clusters/{cluster_id}/env", summary="The environment of the node of rank R")
def env(cluster_id: str, broker: OrgBroker, rank: Annotated[int, Query(ge=0)] = 0) -> Document:
    return env_document(broker.env(cluster_id, rank))


@router.get(
    "/clusters/{cluster_id}/logs",
    summary="A rank's output (rank 0, the master node, by default); follow with after= and wait=",
)
def cluster_logs(
    cluster_id: str,
    broker: OrgBroker,
    rank: Annotated[int, Query(ge=0)] = 0,
    tail: Annotated[int, Query(ge=1, le=10_000)] = 100,
    after: Annotated[int | None, Query(ge=0)] = None,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
) -> Document:
    """The last ``tail`` lines, or (with ``after``, the previous answer's ``next_after``)
    up to ``tail`` lines after it, waiting up to ``wait`` seconds for one to arrive while
    the cluster is live: a client follows a log by calling again with the new ``after``."""
    from broker.views import logs_document

    return logs_document(broker.logs(cluster_id, rank, tail=tail, after=after, wait=wait))


@router.get(
    "/clusters/{cluster_id}/artifacts",
    summary="The files the experiment wrote (its nodes' syncs), and each rank's sync totals",
)
def cluster_artifacts(cluster_id: str, broker: OrgBroker, kind: str | None = None) -> Document:
    found = broker.artifacts(cluster_id, kind)
    return {
        "cluster_id": cluster_id,
        "artifacts": [a.to_json_dict() for a in found],
        "total_bytes": sum(a.size for a in found),
        "syncs": broker.store.syncs(cluster_id),
    }


@router.get(
    "/clusters/{cluster_id}/artifacts/link",
    summary="A short-lived download link of one artifact (path: <kind>/rank-<r>/<file>)",
)
def artifact_link(
    cluster_id: str,
    request: Request,
    broker: OrgBroker,
    path: Annotated[str, Query(min_length=1, max_length=1100)],
) -> Document:
    from providers.storage.file import FileStore

    store = broker.artifact_store
    if isinstance(store, FileStore):  # served here: on the host the caller reached
        view = _view(broker, artifact_store=store.with_base(str(request.base_url).rstrip("/")))
        link = view.artifact_link(cluster_id, path)
    else:
        link = broker.artifact_link(cluster_id, path)
    return {
        "path": path,
        "url": link.url,
        "headers": dict(link.headers),
        "expires_at": link.expires_at,
    }


# A stop's wind-down (the commands' stop and final sync, then the nodes' termination) may
# take minutes; the answer waits this long for it, then says TERMINATING while it goes on.
END_ANSWER_WITHIN = 5.0


@router.post(
    "/clusters/{cluster_id}/stop",
    summary="Stop (or cancel) a cluster: STOPPED",
    description="Answers once the cluster is STOPPED, or TERMINATING after "
    f"{END_ANSWER_WITHIN:g} s while its wind-down goes on (poll the cluster).",
)
def stop(cluster_id: str, broker: OrgBroker) -> Document:
    return cluster_document(broker.stop(cluster_id, within=END_ANSWER_WITHIN))


@router.post(
    "/clusters/{cluster_id}/release",
    summary="Release a RUNNING cluster: COMPLETED",
    description="Answers once the cluster is COMPLETED, or TERMINATING after "
    f"{END_ANSWER_WITHIN:g} s while its wind-down goes on (poll the cluster).",
)
def release(cluster_id: str, broker: OrgBroker) -> Document:
    return cluster_document(broker.release(cluster_id, within=END_ANSWER_WITHIN))


@router.post(
    "/clusters/{cluster_id}/restart",
    status_code=202,
    summary="Run a finished cluster again as a new cycle (PENDING; a worker provisions it)",
)
def restart(cluster_id: str, request: Request, broker: OrgBroker) -> Document:
    cluster = broker.requeue(cluster_id)
    service_of(request).wake()
    return cluster_document(cluster)


@router.delete("/clusters/{cluster_id}", status_code=204, summary="Forget a finished cluster")
def delete(cluster_id: str, broker: OrgBroker) -> Response:
    broker.delete(cluster_id)
    return Response(status_code=204)


@router.get("/credits", summary="The organisation's credits: granted, spent, left, burn rate")
def get_credits(broker: OrgBroker) -> Document:
    found = broker.credit_status()
    return {"credits": found[0].to_json_dict() if found else None}


@router.get(
    "/util",
    summary="GPUs starting and running and spend per hour, per provider; the organisation's "
    "credits left and burn rate",
)
def util(broker: OrgBroker) -> Document:
    return util_document(broker.util(), broker.util_credits())


@router.get("/tokens", summary="The organisation's tokens (admin)")
def list_tokens(who: Admin, request: Request) -> Document:
    broker = service_of(request).broker.scoped(who.org)
    return {"tokens": [token_document(t) for t in broker.list_tokens()]}


@router.post("/tokens", status_code=201, summary="A new token of the organisation (admin)")
def create_token(body: TokenBody, who: Admin, request: Request) -> Any:
    broker = service_of(request).broker.scoped(who.org)
    secret, record = broker.create_token(who.org, name=body.name, role=body.role)
    return JSONResponse(
        token_document(record, secret), status_code=201, headers={"Cache-Control": "no-store"}
    )


@router.delete("/tokens/{token_id}", summary="Revoke a token of the organisation (admin)")
def revoke_token(token_id: str, who: Admin, request: Request) -> Document:
    broker = service_of(request).broker.scoped(who.org)
    return token_document(broker.revoke_token(token_id))


__all__ = ["router"]
