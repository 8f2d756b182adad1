"""AzureStore against Azurite (the official emulator, a subprocess on 127.0.0.1), which checks
every SAS signature with the account key; bytes moved with plain urllib (tests/storage/node.py).
Skipped only when Azurite cannot be installed and CI is unset."""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from providers.errors import ConfigError
from providers.storage import azure as azure_module
from providers.storage.azure import AzureStore
from providers.storage.base import MiB, NotFound, SignedRequest, StorageError, parse_store_url
from tests.conftest import CLOSED_LOOPBACK
from tests.storage import node
from tests.storage.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, start_or_skip


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = start_or_skip(tmp_path_factory.mktemp("azurite"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(azurite: Azurite) -> AzureStore:
    container = f"bb-{uuid.uuid4().hex[:12]}"
    azurite.create_container(container)
    return AzureStore(
        parse_store_url(f"az://{ACCOUNT}/{container}/runs"),
        endpoint=azurite.endpoint,
        account_key=ACCOUNT_KEY,
    )


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_small_object_round_trip(store: AzureStore) -> None:
    data = b"loss=0.25\n" * 300
    plan = store.upload("org/exp/logs/rank-0/train.log", len(data))
    assert plan.kind == "single"
    assert plan.requests[0].headers["x-ms-blob-type"] == "BlockBlob"
    node.upload(plan, data)
    assert node.fetch(store.download("org/exp/logs/rank-0/train.log")) == data
    [info] = store.list("org/")
    assert (info.key, info.size) == ("org/exp/logs/rank-0/train.log", len(data))
    assert info.modified == pytest.approx(time.time(), abs=60) and info.etag


def test_block_blob_in_parts_reads_back_identical(store: AzureStore) -> None:
    data = os.urandom(12 * MiB)
    plan = store.upload("ckpt/model.bin", len(data), part_size=5 * MiB)
    assert plan.kind == "parts" and len(plan.requests) == 3 and plan.part_size == 5 * MiB
    for i in (1, 2, 0):  # blocks in any order: the block list puts them in part order
        status, _, body = node.send(
            plan.requests[i], data[i * plan.part_size : (i + 1) * plan.part_size]
        )
        assert status == 201, body
    assert store.list("ckpt/") == []  # uncommitted blocks are no blob yet
    store.complete(plan, [])
    assert node.fetch(store.download("ckpt/model.bin")) == data
    assert [(o.key, o.size) for o in store.list("ckpt/")] == [("ckpt/model.bin", len(data))]
    store.abort(plan)  # nothing to do, and harmless


def test_list_pages_prefix_and_order(store: AzureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(azure_module, "LIST_PAGE", 2)
    for name in ("b/2", "a/1", "b/1", "c", "b/3"):
        node.upload(store.upload(name, len(name)), name.encode())
    assert [o.key for o in store.list("")] == ["a/1", "b/1", "b/2", "b/3", "c"]
    assert [o.key for o in store.list("b/")] == ["b/1", "b/2", "b/3"]
    assert store.list("zzz/") == []


def test_delete_by_prefix(store: AzureStore) -> None:
    for i in range(4):
        node.upload(store.upload(f"exp1/crud/{i}", 1), b"x")
    node.upload(store.upload("exp10/crud/0", 1), b"y")
    assert store.delete("exp1/") == 4
    assert [o.key for o in store.list("")] == ["exp10/crud/0"]
    assert store.delete("exp1/") == 0


def test_expired_sas_is_refused(azurite: Azurite, store: AzureStore) -> None:
    node.upload(store.upload("k", 3), b"abc")
    past = AzureStore(
        parse_store_url(store.url),
        endpoint=azurite.endpoint,
        account_key=ACCOUNT_KEY,
        clock=lambda: time.time() - 7200,
    )
    assert node.send(store.download("k"))[0] == 200
    # signed two hours ago for a minute: the same blob, the same key, expired
    stale = SignedRequest("GET", past._blob_url("runs/k", past.sas("r", 60, "runs/k")))
    status, _, body = node.send(stale)
    assert status == 403 and b"AuthorizationFailure" in body
    # the same signer's SAS that lives three hours is still good: the refusal was the expiry
    alive = SignedRequest("GET", past._blob_url("runs/k", past.sas("r", 3 * 3600, "runs/k")))
    assert node.fetch(alive) == b"abc"
    put = past.upload("k2", 3, expires=60)
    assert node.send(put.requests[0], b"abc")[0] == 403
    with pytest.raises(NotFound):
        store.download("k2")


def test_tampered_sas_is_refused(store: AzureStore) -> None:
    node.upload(store.upload("mine/a", 3), b"abc")
    node.upload(store.upload("theirs/b", 3), b"xyz")
    get = store.download("mine/a")
    parts = urlsplit(get.url)
    other = urlunsplit(parts._replace(path=parts.path.replace("mine/a", "theirs/b")))
    later = _with_query(get.url, se="2099-01-01T00:00:00Z")
    more = _with_query(get.url, sp="rwd")
    for url in (other, later, more):
        status, _, body = node.send(SignedRequest("GET", url))
        assert status == 403, url
        assert b"xyz" not in body
    # a read SAS does not write
    overwrite = SignedRequest("PUT", get.url, {"x-ms-blob-type": "BlockBlob"})
    assert node.send(overwrite, b"evil")[0] == 403
    assert node.fetch(store.download("mine/a")) == b"abc"


def test_wrong_key_is_refused(azurite: Azurite, store: AzureStore) -> None:
    wrong = AzureStore(
        parse_store_url(store.url),
        endpoint=azurite.endpoint,
        account_key=base64.b64encode(b"not the key").decode(),
    )
    with pytest.raises(
        StorageError, match=r"list '': (AuthorizationFailure|AuthenticationFailed) \(HTTP 403\)"
    ) as e:
        wrong.list("")
    assert not e.value.transient


def test_missing_blob_and_container_are_not_found(azurite: Azurite, store: AzureStore) -> None:
    with pytest.raises(NotFound, match="download 'nope'"):
        store.download("nope")
    gone = AzureStore(
        parse_store_url(f"az://{ACCOUNT}/no-such-container"),
        endpoint=azurite.endpoint,
        account_key=ACCOUNT_KEY,
    )
    with pytest.raises(NotFound, match="ContainerNotFound"):
        gone.list("")


def test_unreachable_endpoint_is_transient() -> None:
    store = AzureStore(
        parse_store_url("az://acct/c/p"),
        endpoint=f"http://{CLOSED_LOOPBACK}/acct",
        account_key=ACCOUNT_KEY,
    )
    with pytest.raises(StorageError, match="cannot reach the store") as caught:
        store.list("")
    assert caught.value.transient


# -- the key and where it comes from (no server needed) ---------------------------------------


def test_key_sources_and_no_secret_in_repr() -> None:
    url = parse_store_url("az://acct/c/p")
    with pytest.raises(ConfigError, match="AZURE_STORAGE_KEY or AZURE_STORAGE_CONNECTION_STRING"):
        AzureStore(url, environ={})
    with pytest.raises(ConfigError, match="not base64"):
        AzureStore(url, environ={"AZURE_STORAGE_KEY": "!!not base64!!"})
    fixed = 1_800_000_000.0
    from_env = AzureStore(url, environ={"AZURE_STORAGE_KEY": ACCOUNT_KEY}, clock=lambda: fixed)
    assert from_env.endpoint == "https://acct.blob.core.windows.net"
    assert ACCOUNT_KEY not in repr(from_env) and "spr=https" in from_env.sas("r", 60, "x")
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=acct;"
        f"AccountKey={ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:10000/acct;"
    )
    from_string = AzureStore(
        url, environ={"AZURE_STORAGE_CONNECTION_STRING": conn}, clock=lambda: fixed
    )
    assert from_string.endpoint == "http://127.0.0.1:10000/acct"
    over_http = dict(parse_qsl(from_string.sas("r", 60, "x")))
    over_https = dict(parse_qsl(from_env.sas("r", 60, "x")))
    assert over_https.pop("spr") == "https" and "spr" not in over_http
    assert over_http.pop("sig") != over_https.pop("sig")  # the protocol is signed
    assert over_http == over_https  # and the same key: the same SAS otherwise
    with pytest.raises(ConfigError, match="another account"):
        AzureStore(
            parse_store_url("az://other/c"), environ={"AZURE_STORAGE_CONNECTION_STRING": conn}
        )
    signed = from_env.upload("x", 1).requests[0]
    assert "sig=" in signed.url and "sig" not in repr(signed)


def test_sas_covers_exactly_what_it_names(store: AzureStore) -> None:
    query = dict(parse_qsl(store.sas("w", 60, "runs/a")))
    assert (query["sr"], query["sp"], query["sv"]) == ("b", "w", azure_module.SAS_VERSION)
    assert "spr" not in query  # the emulator is plain http
    container = dict(parse_qsl(store.sas("l", 60)))
    assert container["sr"] == "c" and container["sig"] != query["sig"]
    assert Path(urlsplit(store.upload("a", 1).requests[0].url).path).name == "a"
