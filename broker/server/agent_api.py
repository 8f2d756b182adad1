"""``/v1/agent/...``: the calls of the node agents (docs/agent-protocol.md).

Only a node token gets in, and only for its own cluster (anything else is 401/404); a user
token gets 401 here, as a node token does everywhere else. An exit that decides the
cluster's end (every rank done, or one failed) hands the wind-down to the service, which
ends the cluster in the background: the agent's call returns at once.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response

from broker.agent.bootstrap import agent_sha256, packaged_agent
from broker.runs import (
    artifact_complete,
    artifact_report,
    artifact_upload,
    exited,
    heartbeat,
    inputs,
    logs,
    preempted,
    register,
    started,
)
from broker.server.auth import node, service_of
from broker.tokens import Principal

router = APIRouter(prefix="/v1/agent", tags=["agent"])
Node = Annotated[Principal, Depends(node)]
Doc = Annotated[dict[str, Any], Body()]


@router.get("/agent.py", summary="The node agent's code, for a node's boot script")
def agent_code(who: Node) -> Response:
    """The exact bytes of the packaged agent (broker/agent/agent.py), whose SHA-256 every
    boot script this service writes pins; a node token only (the code is not secret, but
    only nodes need it)."""
    code = packaged_agent()
    digest = agent_sha256(code)
    headers = {"ETag": f'"{digest}"', "X-Agent-SHA256": digest, "Cache-Control": "no-cache"}
    return Response(content=code, media_type="text/x-python", headers=headers)


@router.post("/register", summary="An agent names its node; its rank, env and command")
def agent_register(body: Doc, who: Node, request: Request) -> dict[str, Any]:
    service = service_of(request)
    return register(service.broker, who, body, service.broker.run_policy)


@router.post("/started", summary="The command started on this rank")
def agent_started(body: Doc, who: Node, request: Request) -> dict[str, Any]:
    return started(service_of(request).broker, who, body)


@router.post("/heartbeat", summary="The command still runs on this rank")
def agent_heartbeat(body: Doc, who: Node, request: Request) -> dict[str, Any]:
    return heartbeat(service_of(request).broker, who, body)


@router.post("/logs", summary="A batch of this rank's output lines")
def agent_logs(body: Doc, who: Node, request: Request) -> dict[str, Any]:
    service = service_of(request)
    return logs(service.broker, who, body, service.broker.run_policy)


@router.post("/exit", summary="The command ended on this rank")
def agent_exit(body: Doc, who: Node, request: Request) -> dict[str, Any]:
    service = service_of(request)
    answer, ending = exited(service.broker, who, body)
    if ending is not None:
        service.finish(ending)
    return answer


@router.post("/preempted", summary="This rank's cloud gave its preemption notice")
def agent_preempted(body: Doc, who: Node, request: Request) -> dict[str, Any]:
    service = service_of(request)
    ending = preempted(service.broker, who, body)
    if ending is not None:
        service.finish(ending)  # agents hear "stop" and sync within the notice window
    return {"state": "stop"}  # the gang ends either way (already ending: the same)


@router.post("/inputs", summary="Signed GETs of the files to download before the command")
def agent_inputs(body: Doc, who: Node, request: Request) -> dict[str, Any]:
    service = service_of(request)
    return inputs(service.broker, who, body, service.broker.run_policy)


@router.post("/artifact_upload", summary="How to send one file of this rank's artifacts")
def agent_artifact_upload(body: Doc, who: Node, request: Request) -> dict[str, Any]:
    service = service_of(request)
    return artifact_upload(service.broker, who, body, service.broker.run_policy)


@router.post("/artifact_complete", summary="Finish a multi-part upload")
def agent_artifact_complete(body: Doc, who: Node, request: Request) -> dict[str, Any]:
    return artifact_complete(service_of(request).broker, who, body)


@router.post("/artifact_report", summary="What one sync of a kind sent")
def agent_artifact_report(body: Doc, who: Node, request: Request) -> dict[str, Any]:
    return artifact_report(service_of(request).broker, who, body)


__all__ = ["router"]
