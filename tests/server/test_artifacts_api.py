"""The service's side of artifacts, in-process, on the default ``file://`` store: what a node
may upload (only its own experiment's keys, through signed URLs served at /v1/blobs), what a
user lists and downloads, inputs before the command, and the checks at submit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from broker.api import Broker
from broker.lifecycle import Status
from broker.runs import RunPolicy
from broker.server.app import create_app
from broker.server.service import Service, ServiceOptions
from broker.tokens import create_node_token
from providers.storage.base import StoreURL
from providers.storage.file import FileStore, Forbidden, signing_key
from shapes.catalog import load_bundled_catalog

CATALOG = load_bundled_catalog()
BASE = "http://testserver"


def launch_file(gpus: int = 8, **extra: list[str]) -> str:
    lists = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return (
        f'isc_project_id = "p"\nexperiment_name = "e"\ngpus = {gpus}\n'
        f'compute_mode = "burst"\ncommand = "python train.py"\n{lists}'
    )


class Service_:
    def __init__(self, tmp_path: Path) -> None:
        self.broker = Broker(
            state_dir=tmp_path / "state",
            backend="sim",
            catalog=CATALOG,
            run_policy=RunPolicy(
                stop_grace=0.3, heartbeat_every=0.1, upload_part_size=5 * 1024 * 1024
            ),
        )
        # No agents here (no service_url: the test plays them); the store's signed URLs are
        # served by this app, as `broker serve` does.
        state = tmp_path / "state"
        self.broker.__dict__["artifact_store"] = FileStore(
            StoreURL("file", "", "", str(state / "artifacts")),
            public_url=BASE,
            secret=signing_key(state),
        )
        self.service = Service(self.broker, ServiceOptions(workers=0, reconcile_every=0))
        self.client = TestClient(create_app(self.service, console=False))
        self.users = {org: self.broker.create_token(org, name="u")[0] for org in ("acme", "other")}

    def user(self, org: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.users[org]}"}

    def submit(self, text: str, org: str = "acme") -> Any:
        return self.client.post(
            "/v1/clusters",
            json={"launch_file": text, "provisioning": "on-demand"},
            headers=self.user(org),
        )

    def running(self, text: str | None = None) -> Cluster:
        reply = self.submit(text or launch_file())
        assert reply.status_code == 202, reply.text
        cluster_id = reply.json()["cluster_id"]
        self.service.run_one(cluster_id)
        assert self.broker.get(cluster_id).status is Status.RUNNING
        token = create_node_token(self.broker.store, cluster_id, "acme", now=time.time())[0]
        return Cluster(self, cluster_id, token)

    def put(self, request: dict[str, Any], body: bytes) -> Any:
        return self.client.put(path_of(request["url"]), content=body, headers=request["headers"])

    def get(self, request: dict[str, Any]) -> Any:
        return self.client.get(path_of(request["url"]), headers=request["headers"])


def path_of(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" in (BASE, "")
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Cluster:
    def __init__(self, svc: Service_, cluster_id: str, token: str) -> None:
        self.svc, self.id, self.token = svc, cluster_id, token

    def call(self, name: str, **body: object) -> tuple[int, dict[str, Any]]:
        reply = self.svc.client.post(
            f"/v1/agent/{name}",
            json={"cluster_id": self.id, **body},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        return reply.status_code, reply.json()

    def upload(self, rank: int, kind: str, path: str, body: bytes) -> dict[str, Any]:
        code, answer = self.call("artifact_upload", rank=rank, kind=kind, path=path, size=len(body))
        assert code == 200, answer
        plan: dict[str, Any] = answer["plan"]
        etags = []
        for i, request in enumerate(plan["requests"]):
            chunk = body[i * plan["part_size"] : (i + 1) * plan["part_size"]]
            sent = self.svc.put(request, chunk)
            assert sent.status_code == 200, sent.text
            etags.append(sent.headers["ETag"])
        if plan["kind"] == "parts":
            code, done = self.call(
                "artifact_complete", rank=rank, kind=kind, path=path, plan=plan, etags=etags
            )
            assert code == 200, done
        return plan


@pytest.fixture
def svc(tmp_path: Path) -> Service_:
    return Service_(tmp_path)


def test_a_node_uploads_its_files_and_the_user_lists_and_downloads_them(svc: Service_) -> None:
    c = svc.running()
    c.upload(0, "checkpoints", "step-1/model.pt", b"weights" * 100)
    c.upload(1, "lossy", "tb/events.out", b"scalars")
    listed = svc.client.get(f"/v1/clusters/{c.id}/artifacts", headers=svc.user()).json()
    assert [(a["path"], a["size"]) for a in listed["artifacts"]] == [
        ("checkpoints/rank-0/step-1/model.pt", 700),
        ("lossy/rank-1/tb/events.out", 7),
    ]
    only = svc.client.get(f"/v1/clusters/{c.id}/artifacts?kind=lossy", headers=svc.user()).json()
    assert [a["rank"] for a in only["artifacts"]] == [1]
    link = svc.client.get(
        f"/v1/clusters/{c.id}/artifacts/link",
        params={"path": "checkpoints/rank-0/step-1/model.pt"},
        headers=svc.user(),
    ).json()
    got = svc.client.get(path_of(link["url"]))
    assert got.status_code == 200 and got.content == b"weights" * 100


def test_a_large_file_goes_in_parts_and_reads_back_whole(svc: Service_) -> None:
    c = svc.running()
    body = bytes(range(256)) * (50 * 1024)  # 12.5 MiB: three parts of at least 5 MiB
    plan = c.upload(0, "checkpoints", "big.bin", body)
    assert plan["kind"] == "parts" and len(plan["requests"]) == 3  # 5 + 5 + 2.5 MiB
    store = svc.broker.artifact_store
    assert isinstance(store, FileStore)
    (obj,) = store.list(f"acme/experiments/{c.id}/checkpoints/")
    assert obj.size == len(body)
    assert store.path_for(obj.key).read_bytes() == body
    assert not list((store.root / ".uploads").glob("*/*"))  # the parts are gone


def test_a_node_can_name_no_other_key_and_a_tampered_url_writes_nothing(svc: Service_) -> None:
    c = svc.running()
    for path in ("../../other/x", "/etc/passwd", "a//b", "a/./b", ""):
        code, _ = c.call("artifact_upload", rank=0, kind="checkpoints", path=path, size=1)
        assert code == 422, path
    code, _ = c.call("artifact_upload", rank=0, kind="secrets", path="x", size=1)
    assert code == 422
    code, _ = c.call("artifact_upload", rank=99, kind="logs", path="x", size=1)
    assert code == 409  # no such rank in this cycle
    code, answer = c.call("artifact_upload", rank=0, kind="logs", path="ok.txt", size=2)
    request = answer["plan"]["requests"][0]
    token = request["url"].rsplit("/", 1)[1]
    claims, _mac = token.split(".")
    forged = {**request, "url": request["url"].replace(claims, claims[:-2] + "xx")}
    assert svc.put(forged, b"hi").status_code == 403
    assert svc.put(request, b"too long").status_code in (400, 503)  # over the signed size
    store = svc.broker.artifact_store
    assert isinstance(store, FileStore) and store.list("") == []
    assert svc.put(request, b"hi").status_code == 200
    get_with_put_url = svc.client.get(path_of(request["url"]))
    assert get_with_put_url.status_code == 403


def test_signed_urls_expire(tmp_path: Path) -> None:
    now = [1000.0]
    store = FileStore(
        StoreURL("file", "", "", str(tmp_path / "a")),
        public_url=BASE,
        secret=signing_key(tmp_path),
        clock=lambda: now[0],
    )
    request = store.upload("org/x", 3, expires=60).requests[0]
    token = request.url.rsplit("/", 1)[1]
    assert store.verify(token, "PUT")["k"] == "org/x"
    now[0] += 61
    with pytest.raises(Forbidden, match="expired"):
        store.verify(token, "PUT")
    other = FileStore(
        StoreURL("file", "", "", str(tmp_path / "a")),
        public_url=BASE,
        secret=b"another key" * 3,
        clock=lambda: 1000.0,
    )
    with pytest.raises(Forbidden, match="bad signature"):
        other.verify(token, "PUT")
    assert "url" not in repr(request) and token not in repr(request)


def test_another_organisation_sees_no_artifacts(svc: Service_) -> None:
    c = svc.running()
    c.upload(0, "logs", "a.txt", b"x")
    assert svc.client.get(f"/v1/clusters/{c.id}/artifacts", headers=svc.user()).status_code == 200
    for path in (f"/v1/clusters/{c.id}/artifacts", f"/v1/clusters/{c.id}/artifacts/link"):
        reply = svc.client.get(
            path, params={"path": "logs/rank-0/a.txt"}, headers=svc.user("other")
        )
        assert reply.status_code == 404, reply.text


def test_missing_datasets_and_artifacts_are_refused_at_submit(svc: Service_) -> None:
    svc.broker.service_url = BASE  # a service whose nodes run the command (nothing runs here)
    reply = svc.submit(
        launch_file(dataset_id_list=["imagenet"], input_artifact_id_list=["not-an-id"])
    )
    assert reply.status_code == 422
    messages = [e["message"] for e in reply.json()["errors"]]
    assert "no dataset 'imagenet' in the artifact store" in messages
    assert any("'not-an-id' is not an artifact id" in m for m in messages)
    assert svc.client.get("/v1/clusters", headers=svc.user()).json()["clusters"] == []


def test_inputs_are_signed_gets_of_datasets_artifacts_and_a_restarts_checkpoints(
    svc: Service_,
) -> None:
    store = svc.broker.artifact_store
    assert isinstance(store, FileStore)
    first = svc.running()
    first.upload(0, "checkpoints", "ckpt/latest.pt", b"epoch 3")
    dataset = store.root / "acme" / "datasets" / "mnist" / "train.csv"
    dataset.parent.mkdir(parents=True)
    dataset.write_text("1,2,3\n")
    text = launch_file(
        dataset_id_list=["mnist"], input_artifact_id_list=[f"{first.id}.checkpoints"]
    )
    c = svc.running(text)
    code, register = c.call("register", address=svc.broker.get(c.id).nodes[0].private_ip)
    assert code == 200 and register["state"] in ("wait", "run")
    code, answer = c.call("inputs", rank=1)
    assert code == 200 and answer["missing"] == []
    by_dest = {f["dest"]: f for f in answer["files"]}
    assert set(by_dest) == {
        "/data/mnist/train.csv",
        f"/data/{first.id}.checkpoints/rank-0/ckpt/latest.pt",
    }
    assert answer["total_bytes"] == 6 + 7
    got = svc.get(by_dest["/data/mnist/train.csv"]["request"])
    assert got.content == b"1,2,3\n"
    # A restarted experiment gets its own latest checkpoints back, per rank.
    svc.client.post(f"/v1/clusters/{first.id}/release", headers=svc.user())
    restarted = svc.client.post(f"/v1/clusters/{first.id}/restart", headers=svc.user())
    assert restarted.status_code == 202, restarted.text
    svc.service.run_one(first.id)
    assert svc.broker.get(first.id).cycle == 2
    again = Cluster(
        svc, first.id, create_node_token(svc.broker.store, first.id, "acme", now=time.time())[0]
    )
    code, answer = again.call("inputs", rank=0)
    assert [f["dest"] for f in answer["files"]] == ["/mnt/checkpoints/ckpt/latest.pt"]
    code, answer = again.call("inputs", rank=1)
    assert answer["files"] == []


def test_sync_reports_are_totalled_and_described(svc: Service_) -> None:
    c = svc.running()
    for files, size, final in ((3, 300, False), (1, 50, True)):
        code, _ = c.call(
            "artifact_report",
            rank=0,
            kind="checkpoints",
            final=final,
            files=files,
            bytes=size,
            failed=0 if not final else 1,
            errors=[] if not final else ["model.pt: 503 from the store"],
        )
        assert code == 200
    doc = svc.client.get(f"/v1/clusters/{c.id}", headers=svc.user()).json()
    (sync,) = doc["artifact_syncs"]
    assert sync == {
        "cycle": 1,
        "rank": 0,
        "kind": "checkpoints",
        "files": 4,
        "bytes": 350,
        "failed": 1,
        "errors": ["model.pt: 503 from the store"],
        "final": True,
    }


def test_an_inputs_failure_fails_the_experiment_failed_inputs(svc: Service_) -> None:
    c = svc.running()
    nodes = svc.broker.get(c.id).nodes
    for n in nodes:
        c.call("register", address=n.private_ip)
    for n in nodes:
        c.call("register", address=n.private_ip)
    code, _ = c.call(
        "exit",
        rank=0,
        exit_code=None,
        signal=None,
        reason="inputs_failed",
        last_lines=["dataset mnist: 4.0 GB needed, 1.2 GB free under /"],
    )
    assert code == 200
    deadline = time.monotonic() + 10
    while svc.broker.get(c.id).status is not Status.FAILED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ended = svc.broker.get(c.id)
    assert ended.reason == "FailedInputs" and "4.0 GB needed" in (ended.detail or "")


def test_a_multi_part_upload_to_s3_completes_through_the_agent_calls(
    svc: Service_, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node sends the plan back without trusting its URLs: the store counts the parts
    from the size (a plan rebuilt with no requests once failed S3's complete)."""
    import urllib.request

    import boto3
    from moto.server import ThreadedMotoServer

    from providers.storage.base import parse_store_url
    from providers.storage.s3 import S3Store

    for name, value in (("AWS_ACCESS_KEY_ID", "t"), ("AWS_SECRET_ACCESS_KEY", "t")):
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="artifacts-test"
        )
        store = S3Store(
            parse_store_url("s3://artifacts-test/pre"), endpoint_url=endpoint, region="us-east-1"
        )
        svc.broker.__dict__["artifact_store"] = store
        c = svc.running()
        body = bytes(range(256)) * (48 * 1024)  # 12 MiB: 5 + 5 + 2 MiB
        code, answer = c.call(
            "artifact_upload", rank=0, kind="checkpoints", path="m.pt", size=len(body)
        )
        plan = answer["plan"]
        assert code == 200 and plan["kind"] == "parts" and len(plan["requests"]) == 3
        etags = []
        for i, request in enumerate(plan["requests"]):
            part = body[i * plan["part_size"] : (i + 1) * plan["part_size"]]
            put = urllib.request.Request(request["url"], part, request["headers"], method="PUT")
            with urllib.request.urlopen(put, timeout=30) as sent:
                etags.append(sent.headers["ETag"])
        code, done = c.call(
            "artifact_complete", rank=0, kind="checkpoints", path="m.pt", plan=plan, etags=etags
        )
        assert code == 200, done
        (obj,) = store.list(f"acme/experiments/{c.id}/")
        assert obj.size == len(body)
    finally:
        server.stop()
