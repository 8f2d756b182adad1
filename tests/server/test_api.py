"""The /v1 API in-process (FastAPI's TestClient over the real app and a real store): every
route, its status codes and its permission rules. Workers are not started: tests provision
a submitted cluster with ``service.run_one`` when they need one RUNNING."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.api import Broker
from broker.server.app import MAX_BODY, create_app
from broker.server.service import Service, ServiceOptions
from shapes.catalog import load_bundled_catalog

CATALOG = load_bundled_catalog()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "burst16.isc"


class Api:
    def __init__(self, tmp_path: Path) -> None:
        self.broker = Broker(state_dir=tmp_path / "state", backend="sim", catalog=CATALOG)
        self.service = Service(self.broker, ServiceOptions(workers=0, reconcile_every=0))
        self.client = TestClient(create_app(self.service, console=False))

    def token(self, org: str, role: str = "member") -> str:
        return self.broker.create_token(org, name="t", role=role)[0]

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def submit(self, token: str, **body: object) -> dict[str, object]:
        reply = self.client.post(
            "/v1/clusters", json=body or {"gpus": 16}, headers=self.auth(token)
        )
        assert reply.status_code == 202, reply.text
        doc: dict[str, object] = reply.json()
        return doc

    def running(self, token: str, **body: object) -> str:
        cluster_id = str(self.submit(token, **body)["cluster_id"])
        self.service.run_one(cluster_id)
        return cluster_id


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    made = Api(tmp_path)
    with made.client:
        yield made


def errors_of(reply: object) -> list[dict[str, object]]:
    doc = reply.json()  # type: ignore[attr-defined]
    assert set(doc) >= {"errors"}
    return list(doc["errors"])


# -- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer ", "Basic abc", "Bearer bbt_" + "x" * 43, "Bearer not-a-token"],
)
def test_every_v1_route_needs_a_valid_token(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, path in [
        ("GET", "/v1/shapes"),
        ("POST", "/v1/quote"),
        ("POST", "/v1/clusters"),
        ("GET", "/v1/clusters"),
        ("GET", "/v1/clusters/bb-x"),
        ("GET", "/v1/util"),
        ("GET", "/v1/tokens"),
    ]:
        reply = api.client.request(method, path, headers=headers, json={"gpus": 1})
        assert reply.status_code == 401, (method, path)
        assert reply.headers["www-authenticate"] == "Bearer"
        assert errors_of(reply)[0]["message"].startswith("a valid API token")  # type: ignore[union-attr]


def test_a_revoked_token_is_refused_at_once(api: Api) -> None:
    admin = api.token("acme", "admin")
    member = api.token("acme")
    assert api.client.get("/v1/clusters", headers=api.auth(member)).status_code == 200
    listed = api.client.get("/v1/tokens", headers=api.auth(admin)).json()["tokens"]
    member_id = next(t["token_id"] for t in listed if t["role"] == "member")
    reply = api.client.delete(f"/v1/tokens/{member_id}", headers=api.auth(admin))
    assert reply.status_code == 200 and reply.json()["revoked_at"] is not None
    assert api.client.get("/v1/clusters", headers=api.auth(member)).status_code == 401


def test_tokens_are_admin_only_and_per_organisation(api: Api) -> None:
    member = api.token("acme")
    admin = api.token("acme", "admin")
    other_admin = api.token("globex", "admin")
    assert api.client.get("/v1/tokens", headers=api.auth(member)).status_code == 403
    made = api.client.post(
        "/v1/tokens", json={"name": "ci", "role": "member"}, headers=api.auth(admin)
    )
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    secret = made.json()["token"]
    assert secret.startswith("bbt_") and made.json()["org"] == "acme"
    assert api.client.get("/v1/whoami", headers=api.auth(secret)).json()["org"] == "acme"
    # Never the secret again, nor another organisation's tokens.
    listed = api.client.get("/v1/tokens", headers=api.auth(admin)).json()["tokens"]
    assert all("token" not in t for t in listed) and {t["org"] for t in listed} == {"acme"}
    acme_id = listed[0]["token_id"]
    assert (
        api.client.delete(f"/v1/tokens/{acme_id}", headers=api.auth(other_admin)).status_code == 404
    )
    bad = api.client.post("/v1/tokens", json={"role": "owner"}, headers=api.auth(admin))
    assert bad.status_code == 422 and errors_of(bad)[0]["field"] == "role"


def test_tokens_are_stored_only_as_digests(api: Api, tmp_path: Path) -> None:
    secret = api.token("acme")
    raw = (tmp_path / "state" / "broker.sqlite").read_bytes()
    assert secret.encode() not in raw
    assert secret[4:].encode() not in raw


# -- organisations ------------------------------------------------------------------------


def test_another_organisations_cluster_does_not_exist(api: Api) -> None:
    acme, globex = api.token("acme"), api.token("globex")
    cluster_id = api.running(acme)
    for method, path, asked in [
        ("GET", "/v1/clusters/{}", cluster_id),
        ("GET", "/v1/clusters/{}/env?rank=0", cluster_id),
        ("POST", "/v1/clusters/{}/stop", cluster_id),
        ("POST", "/v1/clusters/{}/release", cluster_id),
        ("POST", "/v1/clusters/{}/restart", cluster_id),
        ("DELETE", "/v1/clusters/{}", cluster_id),
        ("GET", "/v1/clusters/{}", cluster_id[:6]),  # not even by prefix
    ]:
        reply = api.client.request(method, path.format(asked), headers=api.auth(globex))
        assert reply.status_code == 404, (method, path, reply.text)
        # The very answer a made-up id gets: nothing tells "theirs" from "none".
        made_up = "bb-zzzzzzzzzzzz"[: len(asked)]
        missing = api.client.request(method, path.format(made_up), headers=api.auth(globex))
        assert reply.text.replace(asked, "X") == missing.text.replace(made_up, "X")
    assert api.client.get("/v1/clusters", headers=api.auth(globex)).json()["clusters"] == []
    assert api.client.get("/v1/util", headers=api.auth(globex)).json()["providers"] == {}
    assert api.broker.get(cluster_id).status.value == "RUNNING"  # untouched
    # A member of the same organisation sees and stops it.
    colleague = api.token("acme")
    stopped = api.client.post(f"/v1/clusters/{cluster_id}/stop", headers=api.auth(colleague))
    assert stopped.status_code == 200 and stopped.json()["status"] == "STOPPED"


# -- submitting ----------------------------------------------------------------------------


def test_submit_answers_202_pending_and_a_worker_provisions_it(api: Api) -> None:
    token = api.token("acme")
    doc = api.submit(token, gpus=16, provider="sim", hours=2.0)
    assert doc["status"] == "PENDING" and doc["org"] == "acme" and doc["gpus"] == 16
    api.service.run_one(str(doc["cluster_id"]))
    got = api.client.get(f"/v1/clusters/{doc['cluster_id']}", headers=api.auth(token)).json()
    assert got["status"] == "RUNNING" and got["attempts"][0]["outcome"] == "running"
    assert {t["status"] for t in got["transitions"]} >= {"PENDING", "QUEUED", "STARTING", "RUNNING"}
    env = api.client.get(f"/v1/clusters/{doc['cluster_id']}/env?rank=0", headers=api.auth(token))
    assert env.status_code == 200 and env.json()["NODE_RANK"] == "0"
    out_of_range = api.client.get(
        f"/v1/clusters/{doc['cluster_id']}/env?rank=99", headers=api.auth(token)
    )
    assert out_of_range.status_code == 409


def test_submit_a_launch_file_with_overrides(api: Api) -> None:
    token = api.token("acme")
    text = EXAMPLE.read_text()
    doc = api.submit(token, launch_file=text, hours=3.0)
    assert doc["name"] == "fashion_mnist_burst16" and doc["gpus"] == 16
    wanted = CATALOG.shapes[0].id
    doc = api.submit(token, launch_file=text, priority=[wanted])
    assert any("overridden" in str(w["message"]) for w in doc["warnings"])  # type: ignore[union-attr]
    both = api.client.post(
        "/v1/clusters", json={"launch_file": text, "gpus": 8}, headers=api.auth(token)
    )
    assert both.status_code == 422 and errors_of(both)[0]["field"] == "gpus"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"gpus": 0}, "gpus"),
        ({"gpus": 49}, "gpus"),
        ({"gpus": "16"}, "gpus"),
        ({"gpus": 16, "hours": -1}, "hours"),
        ({"gpus": 16, "gpu": ["16"]}, "gpu"),
        ({"gpus": 16, "region": ["us-east1x"]}, "region"),
        ({"gpus": 16, "provider": ["awz"]}, "provider"),
        ({"gpus": 16, "nope": 1}, "nope"),
        ({"launch_file": 'compute_mode = "cycle"\ngpus = 2'}, None),
        ({"launch_file": "gpus = ["}, None),
        ({}, "gpus"),
    ],
)
def test_invalid_submissions_are_422_with_the_errors_document(
    api: Api, body: dict[str, object], field: str | None
) -> None:
    token = api.token("acme")
    reply = api.client.post("/v1/clusters", json=body, headers=api.auth(token))
    assert reply.status_code == 422, reply.text
    errors = errors_of(reply)
    assert errors and all(set(e) >= {"field", "message"} for e in errors)
    if field is not None:
        assert field in [e["field"] for e in errors]
    assert api.client.get("/v1/clusters", headers=api.auth(token)).json()["clusters"] == []


def test_the_errors_match_broker_validate_json(api: Api, tmp_path: Path) -> None:
    from broker.launchfile import parse_launch_text

    text = 'experiment_name = "x"\ngpus = 100\ncompute_mode = "burst"\ncommand = "c"\n'
    expected = parse_launch_text(text, source="launch_file").to_json_dict()["errors"]
    reply = api.client.post(
        "/v1/clusters", json={"launch_file": text}, headers=api.auth(api.token("acme"))
    )
    assert reply.status_code == 422
    assert [e["message"] for e in errors_of(reply)] == [e["message"] for e in expected]  # type: ignore[index]


def test_malformed_and_oversized_bodies(api: Api) -> None:
    auth = api.auth(api.token("acme"))
    broken = api.client.post(
        "/v1/clusters", content=b"{not json", headers={**auth, "Content-Type": "application/json"}
    )
    assert broken.status_code == 422 and errors_of(broken)
    big = json.dumps({"gpus": 16, "launch_file": "#" * (MAX_BODY + 10)}).encode()
    reply = api.client.post(
        "/v1/clusters", content=big, headers={**auth, "Content-Type": "application/json"}
    )
    assert reply.status_code == 413 and "bytes" in str(errors_of(reply)[0]["message"])
    long_file = api.client.post("/v1/clusters", json={"launch_file": "#" * 70_000}, headers=auth)
    assert long_file.status_code == 422 and errors_of(long_file)[0]["field"] == "launch_file"
    not_object = api.client.post("/v1/clusters", json=[1, 2], headers=auth)
    assert not_object.status_code == 422


def test_idempotency_key_returns_the_same_cluster(api: Api) -> None:
    token = api.token("acme")
    headers = {**api.auth(token), "Idempotency-Key": "job-42"}
    first = api.client.post("/v1/clusters", json={"gpus": 16}, headers=headers).json()
    again = api.client.post("/v1/clusters", json={"gpus": 16}, headers=headers).json()
    assert first["cluster_id"] == again["cluster_id"]
    # The same key in another organisation is another cluster.
    other = api.client.post(
        "/v1/clusters",
        json={"gpus": 16},
        headers={**api.auth(api.token("globex")), "Idempotency-Key": "job-42"},
    ).json()
    assert other["cluster_id"] != first["cluster_id"]
    listed = api.client.get("/v1/clusters", headers=api.auth(token)).json()["clusters"]
    assert [c["cluster_id"] for c in listed] == [first["cluster_id"]]


def test_an_experiment_name_with_markup_comes_back_as_data(api: Api) -> None:
    token = api.token("acme")
    name = '<script>alert("x")</script> ünïcødé'
    text = (
        f'isc_project_id = "p"\nexperiment_name = {json.dumps(name)}\n'
        'gpus = 8\ncompute_mode = "burst"\ncommand = "c"\n'
    )
    doc = api.submit(token, launch_file=text)
    got = api.client.get(f"/v1/clusters/{doc['cluster_id']}", headers=api.auth(token))
    assert got.json()["name"] == name
    assert got.headers["content-type"] == "application/json"


# -- listing -------------------------------------------------------------------------------


def test_list_is_newest_first_filtered_and_paginated(api: Api) -> None:
    token = api.token("acme")
    ids = [str(api.submit(token)["cluster_id"]) for _ in range(7)]
    api.service.run_one(ids[0])
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = api.client.get("/v1/clusters" + query, headers=api.auth(token)).json()
        seen += [c["cluster_id"] for c in page["clusters"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    running = api.client.get("/v1/clusters?status=running", headers=api.auth(token)).json()
    assert [c["cluster_id"] for c in running["clusters"]] == [ids[0]]
    both = api.client.get(
        "/v1/clusters?status=RUNNING,PENDING&mode=burst", headers=api.auth(token)
    ).json()
    assert len(both["clusters"]) == 7
    assert (
        api.client.get("/v1/clusters?mode=cycle", headers=api.auth(token)).json()["clusters"] == []
    )
    bad = api.client.get("/v1/clusters?status=DONE", headers=api.auth(token))
    assert bad.status_code == 422 and "unknown status" in str(errors_of(bad)[0]["message"])
    assert api.client.get("/v1/clusters?cursor=zzz", headers=api.auth(token)).status_code == 422
    assert api.client.get("/v1/clusters?limit=0", headers=api.auth(token)).status_code == 422


# -- ending clusters -----------------------------------------------------------------------


def test_release_stop_restart_delete_and_their_conflicts(api: Api) -> None:
    token = api.token("acme")
    auth = api.auth(token)
    cluster_id = api.running(token)
    assert api.client.delete(f"/v1/clusters/{cluster_id}", headers=auth).status_code == 409
    released = api.client.post(f"/v1/clusters/{cluster_id}/release", headers=auth)
    assert released.status_code == 200 and released.json()["status"] == "COMPLETED"
    again = api.client.post(f"/v1/clusters/{cluster_id}/release", headers=auth)
    assert again.status_code == 200 and again.json()["status"] == "COMPLETED"  # idempotent
    restarted = api.client.post(f"/v1/clusters/{cluster_id}/restart", headers=auth)
    assert restarted.status_code == 202 and restarted.json()["status"] == "PENDING"
    assert restarted.json()["cycle"] == 2
    pending_release = api.client.post(f"/v1/clusters/{cluster_id}/release", headers=auth)
    assert pending_release.status_code == 409
    stopped = api.client.post(f"/v1/clusters/{cluster_id}/stop", headers=auth)
    assert stopped.json()["status"] == "STOPPED"
    assert api.client.delete(f"/v1/clusters/{cluster_id}", headers=auth).status_code == 204
    assert api.client.get(f"/v1/clusters/{cluster_id}", headers=auth).status_code == 404


def test_util_counts_the_organisations_running_gpus(api: Api) -> None:
    token = api.token("acme")
    api.running(token, gpus=16)
    util = api.client.get("/v1/util", headers=api.auth(token)).json()
    assert sum(row["gpus_running"] for row in util["providers"].values()) == 16


# -- dry runs --------------------------------------------------------------------------------


def test_shapes_and_quote_match_the_cli_documents(api: Api) -> None:
    from broker.quote import QuoteRequest
    from broker.ranking import RankRequest
    from broker.views import quote_document

    auth = api.auth(api.token("acme"))
    shapes = api.client.get("/v1/shapes?gpu=H100&provisioning=spot", headers=auth).json()
    assert shapes["total"] == len(shapes["shapes"]) > 0
    assert {s["gpu"] for s in shapes["shapes"]} <= {"H100", "H100-NVL"}
    assert {s["provisioning"] for s in shapes["shapes"]} == {"spot"}
    bad = api.client.get("/v1/shapes?region=us-east1x", headers=auth)
    assert bad.status_code == 422 and "did you mean" in str(errors_of(bad)[0]["message"])
    quoted = api.client.post("/v1/quote", json={"gpus": 16, "limit": 5}, headers=auth).json()
    local = quote_document(api.broker.quote(QuoteRequest(rank=RankRequest(gpus=16))), limit=5)
    assert quoted["plans"] == local["plans"] and quoted["plans_total"] == local["plans_total"]


# -- the service's own pages -----------------------------------------------------------------


def test_health_readiness_metrics_and_openapi(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").status_code == 200
    token = api.token("secret-org")
    api.running(token)
    metrics = api.client.get("/metrics").text
    assert 'broker_clusters{status="RUNNING"} 1' in metrics
    assert "broker_gpus_running 16" in metrics
    assert 'broker_provisions_total{outcome="RUNNING"} 1' in metrics
    assert "secret-org" not in metrics and "bb-" not in metrics
    paths = api.client.get("/openapi.json").json()["paths"]
    assert {"/v1/clusters", "/v1/clusters/{cluster_id}", "/v1/quote", "/v1/shapes"} <= set(paths)


def test_readyz_is_503_when_the_store_cannot_be_read(api: Api, tmp_path: Path) -> None:
    api.broker.store.engine.dispose()
    (tmp_path / "state" / "broker.sqlite").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / "state" / f"broker.sqlite{suffix}").unlink(missing_ok=True)
    reply = api.client.get("/readyz")
    assert reply.status_code == 503 and "not a readable broker store" in reply.text
    assert api.client.get("/healthz").status_code == 200  # alive, just not ready


def test_an_idempotency_key_reused_for_another_request_is_refused(api: Api) -> None:
    headers = {**api.auth(api.token("acme")), "Idempotency-Key": "job-7"}
    first = api.client.post("/v1/clusters", json={"gpus": 16}, headers=headers)
    assert first.status_code == 202
    other = api.client.post("/v1/clusters", json={"gpus": 8}, headers=headers)
    assert other.status_code == 409
    assert "used for another request" in str(errors_of(other)[0]["message"])
    same = api.client.post("/v1/clusters", json={"gpus": 16}, headers=headers)
    assert same.json()["cluster_id"] == first.json()["cluster_id"]


def test_a_real_cloud_experiment_is_refused_without_a_url_nodes_can_reach(tmp_path: Path) -> None:
    broker = Broker(state_dir=tmp_path / "state", catalog=CATALOG)  # the real clouds, no URL
    client = TestClient(create_app(Service(broker, ServiceOptions(workers=0, reconcile_every=0))))
    auth = {"Authorization": f"Bearer {broker.create_token('acme')[0]}"}
    reply = client.post("/v1/clusters", json={"launch_file": EXAMPLE.read_text()}, headers=auth)
    assert reply.status_code == 422 and "--public-url" in reply.text
    assert errors_of(reply)[0]["field"] == "command"
    assert client.get("/v1/clusters", headers=auth).json()["clusters"] == []
    # Machines only (no command), or the simulated cloud, are fine.
    assert client.post("/v1/clusters", json={"gpus": 8}, headers=auth).status_code == 202
    sim = {"launch_file": EXAMPLE.read_text(), "provider": "sim"}
    assert client.post("/v1/clusters", json=sim, headers=auth).status_code == 202
