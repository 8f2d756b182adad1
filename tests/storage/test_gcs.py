"""GcsStore against the strict GCS stand-in (tests/storage/gcs_standin.py: V4 signatures checked
with the service account's public key, resumable sessions, the JSON API behind OAuth tokens),
with a throwaway RSA key; bytes moved with plain urllib (tests/storage/node.py)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from providers.errors import ConfigError
from providers.storage import gcs as gcs_module
from providers.storage.base import MiB, NotFound, SignedRequest, StorageError, parse_store_url
from providers.storage.gcs import GcsStore
from tests.conftest import CLOSED_LOOPBACK
from tests.storage import node
from tests.storage.gcs_standin import GcsServer, service_account


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsServer]:
    server = GcsServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def key_file(gcs: GcsServer, tmp_path: Path) -> Path:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(gcs.key_info))
    return path


@pytest.fixture
def store(gcs: GcsServer, key_file: Path) -> GcsStore:
    bucket = f"bb-{uuid.uuid4().hex[:12]}"
    gcs.app.buckets.add(bucket)
    gcs.app.clock = time.time
    gcs.app.page_size = 1000
    return GcsStore(
        parse_store_url(f"gs://{bucket}/runs"),
        endpoint=gcs.endpoint,
        credentials_file=str(key_file),
    )


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_small_object_round_trip(gcs: GcsServer, store: GcsStore) -> None:
    data = b"metrics\n" * 500
    plan = store.upload("org/exp/lossy/rank-1/m.json", len(data))
    assert plan.kind == "single" and plan.requests[0].method == "PUT"
    query = dict(parse_qsl(urlsplit(plan.requests[0].url).query))
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-SignedHeaders"] == "host" and query["X-Goog-Expires"] == "3600"
    assert query["X-Goog-Credential"].endswith("/auto/storage/goog4_request")
    node.upload(plan, data)
    assert node.fetch(store.download("org/exp/lossy/rank-1/m.json")) == data
    [info] = store.list("org/exp/")
    assert (info.key, info.size) == ("org/exp/lossy/rank-1/m.json", len(data))
    assert info.modified == pytest.approx(time.time(), abs=60) and info.etag
    assert (store.bucket, "runs/org/exp/lossy/rank-1/m.json") in gcs.app.objects


def test_resumable_upload_reads_back_identical(gcs: GcsServer, store: GcsStore) -> None:
    data = os.urandom(12 * MiB + 12345)
    plan = store.upload("ckpt/model.bin", len(data), part_size=5 * MiB + 1)
    assert plan.kind == "resumable" and len(plan.requests) == 1
    assert plan.part_size == 5 * MiB + 256 * 1024  # rounded up to a multiple of 256 KiB
    assert "upload_id=" in plan.requests[0].url and "X-Goog-Signature" not in plan.requests[0].url
    assert len(gcs.app.sessions) == 1  # the service opened the session itself
    node.upload(plan, data)
    assert gcs.app.sessions == {}
    assert node.fetch(store.download("ckpt/model.bin")) == data
    assert [(o.key, o.size) for o in store.list("ckpt/")] == [("ckpt/model.bin", len(data))]
    store.complete(plan, [])  # nothing to do


def test_resumable_chunks_out_of_order_are_refused(store: GcsStore) -> None:
    plan = store.upload("x/y", 6 * MiB, part_size=5 * MiB)
    status, _, _ = node.send(
        plan.requests[0], b"z" * MiB, {"Content-Range": f"bytes {5 * MiB}-{6 * MiB - 1}/{6 * MiB}"}
    )
    assert status == 400
    store.abort(plan)


def test_abort_cancels_the_session(gcs: GcsServer, store: GcsStore) -> None:
    plan = store.upload("big/aborted", 6 * MiB, part_size=5 * MiB)
    chunk = {"Content-Range": f"bytes 0-{5 * MiB - 1}/{6 * MiB}"}
    assert node.send(plan.requests[0], b"a" * 5 * MiB, chunk)[0] == 308
    store.abort(plan)
    assert gcs.app.sessions == {}
    store.abort(plan)  # idempotent: the session is gone (404)
    assert node.send(plan.requests[0], b"a" * 5 * MiB, chunk)[0] == 404
    assert store.list("") == []


def test_list_pages_prefix_and_order(gcs: GcsServer, store: GcsStore) -> None:
    gcs.app.page_size = 2
    for name in ("b/2", "a/1", "b/1", "c", "b/3"):
        node.upload(store.upload(name, len(name)), name.encode())
    assert [o.key for o in store.list("")] == ["a/1", "b/1", "b/2", "b/3", "c"]
    assert [o.key for o in store.list("b/")] == ["b/1", "b/2", "b/3"]
    assert store.list("zzz/") == []


def test_delete_by_prefix(gcs: GcsServer, store: GcsStore) -> None:
    gcs.app.page_size = 2
    for i in range(5):
        node.upload(store.upload(f"exp1/logs/{i}", 1), b"x")
    node.upload(store.upload("exp10/logs/0", 1), b"y")
    assert store.delete("exp1/") == 5
    assert [o.key for o in store.list("")] == ["exp10/logs/0"]
    assert store.delete("exp1/") == 0


def test_expired_url_is_refused(gcs: GcsServer, store: GcsStore) -> None:
    node.upload(store.upload("k", 3), b"abc")
    get = store.download("k", expires=60)
    put = store.upload("k2", 3, expires=60)
    assert node.send(get)[0] == 200
    gcs.app.clock = lambda: time.time() + 120
    status, _, body = node.send(get)
    assert status == 400 and b"ExpiredToken" in body
    assert node.send(put.requests[0], b"abc")[0] == 400
    assert "runs/k2" not in {n for _, n in gcs.app.objects}


def test_tampered_urls_are_refused(gcs: GcsServer, store: GcsStore, tmp_path: Path) -> None:
    node.upload(store.upload("mine/a", 3), b"abc")
    node.upload(store.upload("theirs/b", 3), b"xyz")
    get = store.download("mine/a")
    parts = urlsplit(get.url)
    other = urlunsplit(parts._replace(path=parts.path.replace("mine/a", "theirs/b")))
    longer = _with_query(get.url, **{"X-Goog-Expires": "604800"})
    unsigned = urlunsplit(parts._replace(query=""))
    for url in (other, longer, unsigned):
        status, _, body = node.send(SignedRequest("GET", url))
        assert status == 403, url
        assert b"xyz" not in body
    assert node.send(SignedRequest("PUT", get.url), b"evil")[0] == 403  # GET's, not PUT's
    # a key of the same name that is not the service account's own
    impostor_info, _ = service_account(gcs.app.token_uri)
    impostor_info["client_email"] = gcs.key_info["client_email"]
    impostor_file = tmp_path / "impostor.json"
    impostor_file.write_text(json.dumps(impostor_info))
    impostor = GcsStore(
        parse_store_url(store.url), endpoint=gcs.endpoint, credentials_file=str(impostor_file)
    )
    assert node.send(impostor.upload("mine/a", 4).requests[0], b"evil")[0] == 403
    assert node.fetch(store.download("mine/a")) == b"abc"
    assert (
        gcs.app.refused[-5:]
        == ["SignatureDoesNotMatch"] * 2 + ["AccessDenied"] + ["SignatureDoesNotMatch"] * 2
    )


def test_resumable_start_needs_its_signed_header(store: GcsStore) -> None:
    url = store.sign("POST", "runs/s", 60, {"x-goog-resumable": "start"})
    status, _, _ = node.send(SignedRequest("POST", url), b"")  # the header left out
    assert status == 403
    status, headers, _ = node.send(SignedRequest("POST", url, {"x-goog-resumable": "start"}), b"")
    assert status == 201 and "upload_id=" in headers["Location"]


def test_missing_object_and_bucket_are_not_found(gcs: GcsServer, store: GcsStore) -> None:
    with pytest.raises(NotFound, match="download 'nope'"):
        store.download("nope")
    gone = GcsStore(
        parse_store_url("gs://no-such-bucket/p"),
        endpoint=gcs.endpoint,
        credentials=store.credentials(),
    )
    with pytest.raises(NotFound, match="bucket does not exist"):
        gone.list("")
    with pytest.raises(NotFound):
        gone.upload("big", 6 * MiB, part_size=5 * MiB)


def test_token_is_fetched_once_and_refusals_are_named(gcs: GcsServer, store: GcsStore) -> None:
    before = len(gcs.app.tokens)
    store.list("")
    store.list("")
    assert len(gcs.app.tokens) == before + 1
    gcs.app.tokens.clear()  # the service forgot it: a plain 401, named
    with pytest.raises(StorageError, match=r"list '': .*\(HTTP 401\)") as caught:
        store.list("")
    assert not caught.value.transient


def test_credentials_are_a_service_account_key(
    gcs: GcsServer, key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from providers.storage.base import ArtifactStore
    from providers.storage.factory import open_store

    def opened(env: dict[str, str]) -> ArtifactStore:  # the variables broker.settings read
        return open_store("gs://b/p", options={"endpoint": gcs.endpoint}, environ=env)

    with pytest.raises(ConfigError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        opened({}).upload("a", 1)
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"type": "authorized_user", "refresh_token": "r"}))
    with pytest.raises(ConfigError, match="not a service account's key file"):
        opened({"GOOGLE_APPLICATION_CREDENTIALS": str(user)}).upload("a", 1)
    with pytest.raises(ConfigError, match="cannot read the key file"):
        opened({"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json")}).upload("a", 1)
    from_env = opened({"GOOGLE_APPLICATION_CREDENTIALS": str(key_file)})
    assert "X-Goog-Signature" in from_env.upload("a", 1).requests[0].url
    assert "PRIVATE" not in repr(from_env) and repr(from_env).startswith("GcsStore('gs://b/p'")


def test_unreachable_endpoint_is_transient(key_file: Path) -> None:
    store = GcsStore(
        parse_store_url("gs://b/p"),
        endpoint=f"http://{CLOSED_LOOPBACK}",
        credentials_file=str(key_file),
    )
    with pytest.raises(StorageError, match="cannot reach the store") as caught:
        store.upload("big", 6 * MiB, part_size=5 * MiB)
    assert caught.value.transient


def test_signed_url_is_hidden_from_reprs(store: GcsStore) -> None:
    plan = store.upload("a", 1)
    assert "X-Goog-Signature" not in repr(plan) and "X-Goog-Signature" in plan.requests[0].url
    assert gcs_module.CHUNK_QUANTUM == 256 * 1024
