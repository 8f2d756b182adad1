"""S3Store against moto's S3 server on 127.0.0.1 (presigned URLs checked in front of it, see
s3_server.py); every byte a node would move goes through plain urllib (tests/storage/node.py)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from providers.storage import s3 as s3_module
from providers.storage.base import MiB, NotFound, StorageError, parse_store_url
from providers.storage.s3 import S3Store, _classify
from tests.conftest import CLOSED_LOOPBACK
from tests.storage import node
from tests.storage.s3_server import ACCESS_KEY, SECRET_KEY, CheckedMotoServer


@pytest.fixture(scope="module")
def server() -> Iterator[CheckedMotoServer]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        moto = CheckedMotoServer().start()
        try:
            yield moto
        finally:
            moto.stop()


@pytest.fixture
def store(server: CheckedMotoServer) -> S3Store:
    """A store on a fresh bucket, under a prefix."""
    bucket = f"bb-{uuid.uuid4().hex[:12]}"
    made = S3Store(parse_store_url(f"s3://{bucket}/runs"), endpoint_url=server.endpoint)
    made.client().create_bucket(Bucket=bucket)
    server.check.clock = time.time
    return made


def _tamper(url: str, *, path: str | None = None, query: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=path or parts.path, query=query or parts.query))


def test_small_object_round_trip(store: S3Store) -> None:
    data = b"checkpoint step 7\n" * 100
    plan = store.upload("org/exp/checkpoints/rank-0/step7.pt", len(data))
    assert plan.kind == "single" and len(plan.requests) == 1 and plan.requests[0].method == "PUT"
    assert plan.requests[0].expires_at > time.time() + 3000
    node.upload(plan, data)
    got = node.fetch(store.download("org/exp/checkpoints/rank-0/step7.pt"))
    assert got == data
    [info] = store.list("org/exp/")
    assert (info.key, info.size) == ("org/exp/checkpoints/rank-0/step7.pt", len(data))
    assert info.modified == pytest.approx(time.time(), abs=60)
    # the object sits under the store's prefix in the bucket
    raw = store.client().list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [o["Key"] for o in raw] == ["runs/org/exp/checkpoints/rank-0/step7.pt"]


def test_empty_object(store: S3Store) -> None:
    plan = store.upload("empty", 0)
    assert plan.kind == "single"
    node.upload(plan, b"")
    assert node.fetch(store.download("empty")) == b""
    assert [(o.key, o.size) for o in store.list("")] == [("empty", 0)]


def test_multipart_object_reads_back_identical(store: S3Store) -> None:
    data = os.urandom(12 * MiB)
    plan = store.upload("big/model.bin", len(data), part_size=5 * MiB)
    assert plan.kind == "parts" and plan.part_size == 5 * MiB and plan.upload_id
    assert len(plan.requests) == 3
    # parts may go in any order; the ETags are handed back in part order
    etags: list[str] = [""] * 3
    for i in (2, 0, 1):
        status, headers, body = node.send(
            plan.requests[i], data[i * plan.part_size : (i + 1) * plan.part_size]
        )
        assert status == 200, body
        etags[i] = headers["ETag"]
    assert store.list("big/") == []  # nothing visible before complete
    store.complete(plan, etags)
    assert node.fetch(store.download("big/model.bin")) == data
    assert [(o.key, o.size) for o in store.list("big/")] == [("big/model.bin", len(data))]


def test_complete_refuses_missing_etags(store: S3Store) -> None:
    plan = store.upload("big/x", 11 * MiB, part_size=5 * MiB)
    with pytest.raises(StorageError, match="3 parts were sent, 2 ETags given"):
        store.complete(plan, ["a", "b"])
    store.abort(plan)


def test_abort_is_idempotent_and_leaves_nothing(store: S3Store) -> None:
    data = os.urandom(6 * MiB)
    plan = store.upload("big/aborted.bin", len(data), part_size=5 * MiB)
    assert node.send(plan.requests[0], data[: 5 * MiB])[0] == 200
    uploads = store.client().list_multipart_uploads(Bucket=store.bucket)
    assert [u["UploadId"] for u in uploads["Uploads"]] == [plan.upload_id]
    store.abort(plan)
    store.abort(plan)  # the second one is answered NoSuchUpload: not an error
    uploads = store.client().list_multipart_uploads(Bucket=store.bucket)
    assert uploads.get("Uploads", []) == []
    assert store.list("") == []


def test_list_pages_and_sorts(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("b/2", "a/1", "b/1", "c", "b/3"):
        node.upload(store.upload(name, len(name)), name.encode())
    calls: list[dict[str, object]] = []
    real = store.client().list_objects_v2

    def counting(**kwargs: object) -> object:
        calls.append(kwargs)
        return real(**kwargs, MaxKeys=2)

    monkeypatch.setattr(store.client(), "list_objects_v2", counting)
    assert [o.key for o in store.list("")] == ["a/1", "b/1", "b/2", "b/3", "c"]
    assert len(calls) == 3  # 2 + 2 + 1: the continuation token was followed
    assert [o.key for o in store.list("b/")] == ["b/1", "b/2", "b/3"]
    assert [o.key for o in store.list("b/2")] == ["b/2"]
    assert store.list("nothing/") == []


def test_delete_by_prefix_in_batches(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 2)
    for i in range(5):
        node.upload(store.upload(f"exp1/logs/{i}", 1), b"x")
    node.upload(store.upload("exp2/logs/0", 1), b"y")
    assert store.delete("exp1/") == 5
    assert [o.key for o in store.list("")] == ["exp2/logs/0"]
    assert store.delete("exp1/") == 0


def test_expired_url_is_refused(server: CheckedMotoServer, store: S3Store) -> None:
    node.upload(store.upload("k", 3), b"abc")
    get = store.download("k", expires=60)
    assert node.send(get)[0] == 200
    server.check.clock = lambda: time.time() + 120
    status, _, body = node.send(get)
    assert status == 403 and b"Request has expired" in body
    put = store.upload("k2", 3, expires=60)
    assert node.send(put.requests[0], b"abc")[0] == 403
    server.check.clock = time.time
    with pytest.raises(NotFound):
        store.download("k2")


def test_tampered_urls_are_refused(server: CheckedMotoServer, store: S3Store) -> None:
    node.upload(store.upload("mine/a", 3), b"abc")
    node.upload(store.upload("theirs/b", 3), b"xyz")
    get = store.download("mine/a")
    parts = urlsplit(get.url)
    other = _tamper(get.url, path=parts.path.replace("mine/a", "theirs/b"))
    longer = _tamper(get.url, query=parts.query.replace("X-Amz-Expires=3600", "X-Amz-Expires=9999"))
    unsigned = _tamper(get.url, query="x=1")
    for url in (other, longer, unsigned):
        status, _, body = node.send(type(get)("GET", url))
        assert status == 403, url
        assert b"xyz" not in body
    # a GET's signature does not allow a PUT over the object
    assert node.send(type(get)("PUT", get.url), b"evil")[0] == 403
    assert node.fetch(store.download("mine/a")) == b"abc"
    assert server.check.refused[-4:] == [
        "SignatureDoesNotMatch",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "SignatureDoesNotMatch",
    ]


def test_missing_key_and_bucket_are_not_found(server: CheckedMotoServer, store: S3Store) -> None:
    with pytest.raises(NotFound, match=r"download 'nope/x'"):
        store.download("nope/x")
    gone = S3Store(parse_store_url("s3://no-such-bucket-here/p"), endpoint_url=server.endpoint)
    with pytest.raises(NotFound):
        gone.list("")
    with pytest.raises(NotFound):
        gone.upload("a", 10 * MiB, part_size=5 * MiB)


def test_bad_keys_are_refused_before_any_call(store: S3Store) -> None:
    for key in ("", "/abs", "a/../b", "a//b", "./a"):
        with pytest.raises(StorageError, match="is not an object key"):
            store.upload(key, 1)
    with pytest.raises(StorageError):
        store.list("../")


def test_unreachable_endpoint_is_transient() -> None:
    store = S3Store(parse_store_url("s3://b/p"), endpoint_url=f"http://{CLOSED_LOOPBACK}")
    with pytest.raises(StorageError) as caught:
        store.list("")
    assert caught.value.transient and "cannot reach S3" in str(caught.value)


def test_no_credentials_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store(parse_store_url("s3://b/p"), endpoint_url=f"http://{CLOSED_LOOPBACK}")
    with pytest.raises(StorageError, match="no AWS credentials") as caught:
        store.list("")
    assert not caught.value.transient


def test_errors_are_classified() -> None:
    from botocore.exceptions import ClientError

    def error(code: str, status: int) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": code, "Message": "m"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "PutObject",
        )

    assert _classify(error("SlowDown", 503), "w").transient
    assert _classify(error("InternalError", 500), "w").transient
    assert _classify(error("Whatever", 502), "w").transient
    denied = _classify(error("AccessDenied", 403), "s3://b: upload 'k'")
    assert not denied.transient and not isinstance(denied, NotFound)
    assert str(denied) == "s3://b: upload 'k': AccessDenied (HTTP 403)"
    assert isinstance(_classify(error("NoSuchKey", 404), "w"), NotFound)
    assert str(_classify(error("403", 403), "w")) == "w: Forbidden (HTTP 403)"  # a HEAD's
    assert isinstance(_classify(error("NoSuchUpload", 404), "w"), NotFound)
    with pytest.raises(KeyError):
        _classify(KeyError("not ours"), "w")


def test_reprs_hold_no_signature(store: S3Store) -> None:
    node.upload(store.upload("k", 1), b"x")
    get = store.download("k")
    assert "X-Amz-Signature" in get.url
    assert "Signature" not in repr(get) and "Signature" not in repr(store)
    assert repr(store).startswith("S3Store('s3://")
