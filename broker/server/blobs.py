"""``/v1/blobs/<token>``: the signed URLs of a ``file://`` artifact store, served here (nodes
and browsers reach this service; the files are on its host). The token is the whole
credential: it names one object (or one part of an upload), one method, the size signed for
and an expiry, under the service's HMAC key (providers.storage.file). No other header is
needed or read; a bad, expired or tampered token is 403 and nothing is written."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from broker.errors import NotFoundError
from broker.server.auth import service_of
from providers.storage.file import FileStore, Forbidden

router = APIRouter(prefix="/v1/blobs", tags=["blobs"], include_in_schema=False)


def _store(request: Request) -> FileStore:
    store = service_of(request).broker.artifact_store
    if not isinstance(store, FileStore):
        raise NotFoundError("this service's artifact store is not a file store")
    return store


@router.put("/{token}")
async def put_blob(token: str, request: Request) -> Response:
    store = _store(request)
    claims = store.verify(token, "PUT")
    receiver = store.receiver(claims)
    try:
        async for chunk in request.stream():
            receiver.write(chunk)  # a local disk write: short enough for the event loop
        written = receiver.commit()
    finally:
        receiver.discard()
    digest = f'"{claims.get("u", "o")}-{claims.get("p", 0)}-{written}"'
    return Response(status_code=200, headers={"ETag": digest})


@router.get("/{token}")
def get_blob(token: str, request: Request) -> Response:
    store = _store(request)
    claims = store.verify(token, "GET")
    path = store.path_for(str(claims["k"]))
    if not path.is_file():
        raise NotFoundError("no such object")
    return FileResponse(path, filename=path.name)


__all__ = ["Forbidden", "router"]
