"""The GCP adapter against the fake Compute REST server (tests/fakes/gcp.py) on 127.0.0.1,
through the real compute_v1 clients with anonymous credentials.

Teardown of every test: whatever VMs are left must carry the broker's cluster label (nothing
leaks unlabelled); they are removed through a fresh adapter (no faults), and the fake must
then hold no VM and no resource policy.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.auth import credentials as auth_credentials

from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest
from providers.gcp.adapter import GcpProvider
from providers.gcp.config import GcpConfig
from shapes.catalog import Catalog, load_bundled_catalog
from shapes.model import Shape
from tests.conftest import CLOSED_LOOPBACK, FakeClock
from tests.fakes.gcp import PROJECT, FakeGce, FakeServer, write_client_files

REGIONS = ("us-central1", "us-east4")
CONFIG_LABELS = {"team": "ml"}
IMAGE = "projects/debian-cloud/global/images/family/debian-12"


class FakeCredentials(auth_credentials.Credentials):
    """Credentials that "refresh" locally (a 401 makes google-auth refresh once and retry,
    as it would with real credentials; AnonymousCredentials cannot refresh)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.token = f"ya29.test-token-{self.refreshes}"


@dataclass
class GcpWorld:
    """One fake project: its server, a config, the providers made."""

    server: FakeServer
    config: GcpConfig
    catalog: Catalog
    providers: list[GcpProvider] = field(default_factory=list)

    @property
    def fake(self) -> FakeGce:
        return self.server.state

    def provider(
        self, config: GcpConfig | None = None, catalog: Catalog | None = None, **kwargs: Any
    ) -> GcpProvider:
        """A GcpProvider on the fake (local fake credentials, no real sleeping)."""
        clock = kwargs.pop("clock", None) or FakeClock()
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("poll_interval", 0.5)
        kwargs.setdefault("credentials", FakeCredentials())
        provider = GcpProvider(
            config or self.config, catalog or self.catalog, clock=clock, **kwargs
        )
        self.providers.append(provider)
        return provider

    def shape(self, shape_id: str) -> Shape:
        found = self.catalog.get(shape_id)
        assert found is not None, shape_id
        return found

    def request(
        self,
        shape_id: str = "gcp:us-central1:a3-highgpu-8g:spot",
        zone: str = "us-central1-a",
        count: int = 2,
        *,
        cluster: str | None = None,
        attempt: str = "c1-a1",
        token: str | None = None,
    ) -> LaunchRequest:
        return LaunchRequest(
            shape=self.shape(shape_id),
            zone=zone,
            count=count,
            token=token or f"tok-{uuid.uuid4().hex}",
            tags={
                TAG_BROKER: "test",
                TAG_CLUSTER: cluster or f"bb-{uuid.uuid4().hex[:12]}",
                TAG_ATTEMPT: attempt,
            },
        )


def gcp_config(endpoint: str, **overrides: Any) -> GcpConfig:
    values: dict[str, Any] = {
        "project": PROJECT,
        "regions": REGIONS,
        "image": IMAGE,
        "labels": CONFIG_LABELS,
        "endpoint": endpoint,
        "billing_endpoint": endpoint,
    }
    values.update(overrides)
    return GcpConfig(**values)


@pytest.fixture(autouse=True)
def no_gce_metadata_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """google-auth reads NO_GCE_CHECK once, at import, and only the value "true": without
    this, a missing ADC probes the (closed, loopback) metadata port 3 times with backoff."""
    from google.auth.compute_engine import _metadata

    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)


@pytest.fixture
def gcp() -> Iterator[GcpWorld]:
    with FakeServer() as server:
        world = GcpWorld(server, gcp_config(server.url), load_bundled_catalog())
        yield world
        unlabelled = [i["name"] for i in world.fake.live() if TAG_CLUSTER not in i["labels"]]
        world.fake.faults.clear()
        if world.fake.instances or world.fake.policies:
            cleaner = world.provider()
            cleaner.terminate(cleaner.list_tagged())
        assert unlabelled == [], f"VMs left without the {TAG_CLUSTER} label: {unlabelled}"
        assert world.fake.instances == {}, f"VMs left: {sorted(world.fake.instances)}"
        assert world.fake.policies == {}, f"resource policies left: {sorted(world.fake.policies)}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- real `broker` processes against the fake (catalog refresh and end-to-end tests) ---------

ROOT = Path(__file__).resolve().parents[3]


def cli_env(url: str, where: Path) -> dict[str, str]:
    """The environment of a `broker` process using the fake through Application Default
    Credentials (an external_account file whose token endpoint is the fake), with the
    metadata server unreachable and nothing of the developer's own configuration."""
    files = write_client_files(url, where / "gcp")
    drop = ("GOOGLE_", "CLOUDSDK_", "GCE_", "AWS_", "AZURE_", "BROKER_", "HTTP", "NO_PROXY")
    return {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith(drop)},
        "GOOGLE_APPLICATION_CREDENTIALS": str(files["adc"]),
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "CLOUDSDK_CONFIG": str(where / "gcloud"),
        "GCE_METADATA_HOST": CLOSED_LOOPBACK,
        "GCE_METADATA_IP": CLOSED_LOOPBACK,
        "NO_GCE_CHECK": "true",  # google-auth only honours the lower-case value
        # a guard: any HTTP(S) request to a host other than loopback fails at once, locally
        "HTTP_PROXY": f"http://{CLOSED_LOOPBACK}",
        "HTTPS_PROXY": f"http://{CLOSED_LOOPBACK}",
        "NO_PROXY": "127.0.0.1,localhost",
        "BROKER_CONFIG": str(files["config"]),
        "BROKER_STATE_DIR": str(where / "state"),
        "BROKER_CATALOG_DIR": str(where / "catalog"),
        "PYTHONPATH": str(ROOT),
    }
