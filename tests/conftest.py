"""Shared test helpers: small synthetic shapes and catalogs (prices here are made up;
tests of the real bundled catalog live in tests/shapes/test_bundled_catalog.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from shapes.catalog import Catalog
from shapes.model import Provisioning, Shape

if TYPE_CHECKING:
    from tests.store.pgserver import PostgresServer

# What `broker shapes --json` promises for each shape (the list).
SHAPE_JSON_FIELDS = frozenset(
    {
        "id",
        "provider",
        "region",
        "instance_type",
        "gpu",
        "gpus_per_node",
        "gpu_memory_gib",
        "vcpus",
        "memory_gib",
        "provisioning",
        "price_per_node_hour",
        "zones",
    }
)


@pytest.fixture(autouse=True)
def _no_broker_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use their own stores: a BROKER_URL/BROKER_TOKEN exported in the shell that runs
    them must not send the CLI (or its subprocesses) to a service."""
    monkeypatch.delenv("BROKER_URL", raising=False)
    monkeypatch.delenv("BROKER_TOKEN", raising=False)


# A loopback port nothing listens on (the discard port): connections are refused at once.
CLOSED_LOOPBACK = "127.0.0.1:9"


def run_broker(
    env: dict[str, str], *argv: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """One real `broker` process (``python -m broker.cli``) with this environment."""
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class FakeClock:
    """A clock that moves only when something sleeps on it, or by ``step`` at each reading
    (to make deadlines pass). ``slept`` records every sleep."""

    def __init__(self, start: float = 1_800_000_000.0, step: float = 0.0) -> None:
        self.now = start
        self.step = step
        self.slept: list[float] = []

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make_shape(
    instance_type: str = "p4d.24xlarge",
    *,
    provider: str = "aws",
    region: str = "us-east-1",
    gpu: str = "A100-40GB",
    gpus: int = 8,
    price: float = 10.0,
    provisioning: Provisioning | str = Provisioning.ON_DEMAND,
    zones: tuple[str, ...] = ("use1-az1", "use1-az2"),
    **extra: Any,
) -> Shape:
    return Shape(
        provider=provider,
        region=region,
        instance_type=instance_type,
        gpu=gpu,
        gpus_per_node=gpus,
        gpu_memory_gib=40,
        vcpus=8 * gpus,
        memory_gib=64.0 * gpus,
        provisioning=provisioning,  # type: ignore[arg-type]  # a value string is accepted
        price_per_node_hour=price,
        zones=zones,
        **extra,
    )


@pytest.fixture
def small_catalog() -> Catalog:
    return Catalog.of(
        [
            make_shape("p5.48xlarge", gpu="H100", gpus=8, price=55.04),
            make_shape("p5.48xlarge", gpu="H100", gpus=8, price=30.0, provisioning="spot"),
            make_shape("g6.xlarge", gpu="L4", gpus=1, price=0.8048),
            make_shape("g6.12xlarge", gpu="L4", gpus=4, price=4.6016),
            make_shape(
                "a3-highgpu-8g",
                provider="gcp",
                region="us-central1",
                gpu="H100",
                price=88.0,
                zones=("us-central1-a",),
            ),
            make_shape(
                "a2-highgpu-2g",
                provider="gcp",
                region="us-central1",
                gpu="A100-40GB",
                gpus=2,
                price=7.0,
                zones=("us-central1-a",),
            ),
            make_shape(
                "Standard_NC24ads_A100_v4",
                provider="azure",
                region="eastus",
                gpu="A100-80GB",
                gpus=1,
                price=3.67,
                provisioning="spot",
                zones=("1", "2", "3"),
            ),
        ]
    )


@pytest.fixture(autouse=True)
def hermetic_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads the developer's own configuration, refreshed catalog or state."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    for var in (
        "BROKER_CONFIG",
        "BROKER_CATALOG_DIR",
        "BROKER_STATE_DIR",
        "BROKER_STATE_URL",
        "BROKER_SIM_SCENARIO",
        "BROKER_BURST_MAX_GPUS",
        # The clouds' own credential chains: no test may find real credentials.
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_CLOUD_PROJECT",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_USERNAME",
        "AZURE_PASSWORD",
        "AZURE_TOKEN_CREDENTIALS",
        "IDENTITY_ENDPOINT",
        "MSI_ENDPOINT",
    ):
        monkeypatch.delenv(var, raising=False)
    # The metadata services the credential chains probe (GCE's metadata server, Azure's
    # IMDS) live on link-local addresses that no test may ever contact: point them at a
    # closed port on loopback, so a chain that gets that far fails at once, locally.
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(home / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")  # google-auth honours only "true"
    monkeypatch.setenv("GCE_METADATA_HOST", CLOSED_LOOPBACK)
    monkeypatch.setenv("GCE_METADATA_IP", CLOSED_LOOPBACK)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://{CLOSED_LOOPBACK}")
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(home / "azure"))
    # And no name outside this machine is ever looked up: a test that would reach a real
    # cloud host (an endpoint override forgotten) fails here, loudly, before any packet.
    monkeypatch.setattr(socket, "getaddrinfo", _loopback_only(socket.getaddrinfo))


LOOPBACK_NAMES = frozenset({"localhost", "::1", "ip6-localhost"})


def _loopback_only(real: Any) -> Any:
    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK_NAMES and not str(name).startswith("127."):
            raise socket.gaierror(socket.EAI_NONAME, f"tests reach only loopback, not {name!r}")
        return real(host, *args, **kwargs)

    return getaddrinfo


def bundled_shape_id(provider: str, region: str | None = None, min_zones: int = 2) -> str:
    """The first 8-GPU on-demand shape of the bundled catalog on this provider (and region)
    with at least ``min_zones`` zones: stable ids for tests that need real shapes."""
    from shapes.catalog import load_bundled_catalog

    for s in load_bundled_catalog().shapes:
        if (
            s.provider == provider
            and (region is None or s.region == region)
            and len(s.zones) >= min_zones
            and s.gpus_per_node == 8
            and s.provisioning is Provisioning.ON_DEMAND
        ):
            return s.id
    raise LookupError(provider)


# -- the store's backends: SQLite, and a real PostgreSQL server ---------------------------------
#
# Tests that exercise the store's SQL ask for ``store_url`` (or ``store_backend_env``, which
# also exports it as BROKER_STATE_URL for the Broker and for CLI subprocesses): they run once
# per backend. ``--store-backend sqlite|postgres`` runs only one. PostgreSQL comes from
# BROKER_TEST_POSTGRES_URL, else a throwaway server started for the session (one per xdist
# worker); without its binaries those tests are skipped, except under CI, where they fail.


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-backend",
        choices=["both", "sqlite", "postgres"],
        default="both",
        help="which store backends the store tests run on (both)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.iter_markers("parametrize")
    if "store_backend" in metafunc.fixturenames and not any(
        "store_backend" in m.args[0] for m in marked
    ):  # a test may pin its backend: @pytest.mark.parametrize("store_backend", [...], ...)
        choice = metafunc.config.getoption("store_backend")
        backends = ["sqlite", "postgres"] if choice == "both" else [choice]
        metafunc.parametrize("store_backend", backends, indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    from tests.store import pgserver

    try:
        server = pgserver.start()
    except pgserver.Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required under CI: {exc}")
        pytest.skip(f"no PostgreSQL server for the store tests: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_store_url(postgres_server: PostgresServer) -> str:
    """One database per worker, created through the migrations once; tests empty it."""
    import tempfile
    from pathlib import Path

    from broker.state import Store

    url = postgres_server.database("store")
    Store.open(Path(tempfile.gettempdir()), url).engine.dispose()
    return url


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> str:
    backend: str = getattr(request, "param", "sqlite")
    return backend


@pytest.fixture
def store_url(store_backend: str, request: pytest.FixtureRequest) -> str | None:
    """None (SQLite in the test's state directory), or the URL of an empty PostgreSQL
    store at this release's schema (every table truncated: fast)."""
    if store_backend == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_store_url")
    import psycopg

    from broker.state import metadata

    names = ", ".join(t.name for t in metadata.sorted_tables)
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '20s'")
        conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    return url


@pytest.fixture
def store_backend_env(
    store_url: str | None, monkeypatch: pytest.MonkeyPatch, hermetic_environment: None
) -> str | None:
    """``store_url``, exported as BROKER_STATE_URL (read by the test modules' broker
    helpers and by every `broker` subprocess) when it is PostgreSQL."""
    if store_url is not None:
        monkeypatch.setenv("BROKER_STATE_URL", store_url)
    return store_url
