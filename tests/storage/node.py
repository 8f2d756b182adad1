"""What a node does with a plan, in plain ``urllib.request`` (as the node agent does): each
request with exactly the headers it lists, nothing else of ours."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping

from providers.storage.base import SignedRequest, UploadPlan


def send(
    request: SignedRequest, body: bytes | None = None, extra: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one signed request; HTTP errors are answers too."""
    headers = {**request.headers, **(extra or {})}
    http = urllib.request.Request(request.url, data=body, method=request.method, headers=headers)
    try:
        with urllib.request.urlopen(http, timeout=30) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def upload(plan: UploadPlan, data: bytes) -> list[str]:
    """Send ``data`` by ``plan``; the ETag of each part (for ``complete``), in order."""
    assert len(data) == plan.size
    if plan.kind == "single":
        status, headers, body = send(plan.requests[0], data)
        assert status in (200, 201), (status, body[:300])
        return [headers.get("ETag", "")]
    if plan.kind == "parts":
        etags = []
        for i, request in enumerate(plan.requests):
            status, headers, body = send(
                request, data[i * plan.part_size : (i + 1) * plan.part_size]
            )
            assert status in (200, 201), (i, status, body[:300])
            etags.append(headers["ETag"])
        return etags
    # resumable: consecutive chunks to one session URI; 308 until the last
    total = len(data)
    for start in range(0, max(total, 1), plan.part_size):
        chunk = data[start : start + plan.part_size]
        end = start + len(chunk) - 1
        status, _, body = send(
            plan.requests[0], chunk, {"Content-Range": f"bytes {start}-{end}/{total}"}
        )
        last = end == total - 1
        assert status == (200 if last else 308) or (last and status == 201), (status, body)
    return []


def fetch(request: SignedRequest) -> bytes:
    status, _, body = send(request)
    assert status == 200, (status, body[:300])
    return body
