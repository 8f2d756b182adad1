"""The cloud adapters against their local stand-ins. Run by hand, from the repository root:
``python benchmarks/adapters.py [--rounds N]`` (needs the test extras: the fakes live in
``tests/fakes``). Each fake runs as its own process, started with its documented try-out
command (``python -m tests.fakes.gcp --port 0 --dir D``, ``python -m tests.fakes.azure ...``),
which writes the broker configuration and the credential files the adapter then uses exactly
as a user's `broker` would (Application Default Credentials, the Azure CLI credential); faults
are injected over the fake's ``POST /_fake/inject``. Nothing from ``tests`` is imported.

What it measures, in one run, for GCP (fake Compute API) and Azure (fake ARM over HTTPS):

1. Cold import of the adapter module in a fresh process: what `broker provision` and
   `broker reconcile` pay before their first cloud call (`broker quote` never pays it).
2. One gang, launched and terminated, in process: HTTP requests and wall time per round, for
   2 and 8 nodes. Requests are counted at the `requests` transport, which both SDKs use. The
   fakes answer at once and the adapters' own sleeps run on a fake clock, so the wall time is
   the adapter's and the SDK's own cost (plus the fake's), never the cloud's.
3. A failed attempt (a stockout, rolled back): requests and wall time until the typed
   CapacityError reaches the caller. This is what each zone of a failover costs us.

No target is checked: a real cloud takes seconds to minutes per gang, so these figures say
where the broker's own share goes, and how the request count grows with the gang.
Nothing real is created, and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest  # noqa: E402
from providers.config import load_config  # noqa: E402
from providers.errors import CapacityError  # noqa: E402
from shapes.catalog import load_bundled_catalog  # noqa: E402

CATALOG = load_bundled_catalog()


class Clock:
    """A clock that moves only when the adapter sleeps on it: its polling waits cost nothing,
    so the wall time measured is the adapter's and the SDK's own."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def fake_process(cloud: str, workdir: Path, ready: str) -> Iterator[None]:
    """``python -m tests.fakes.<cloud> --port 0 --dir <workdir>`` until the block ends; ready
    once its try-out hint (ending with a line containing ``ready``) is printed."""
    child = subprocess.Popen(
        [sys.executable, "-m", f"tests.fakes.{cloud}", "--port", "0", "--dir", str(workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if ready in line:
                break
        else:
            raise RuntimeError(f"the {cloud} fake exited with {child.wait()}")
        yield
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def inject(url: str, fault: dict[str, Any], ca_file: str | None = None) -> None:
    """One fault, over the fake's control endpoint (urllib: not counted as an SDK request)."""
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    post = urllib.request.Request(
        f"{url}/_fake/inject", data=json.dumps(fault).encode(), method="POST"
    )
    with urllib.request.urlopen(post, timeout=10, context=context) as answer:
        answer.read()


class Counter:
    """Counts the HTTP requests every `requests` session sends while it is installed."""

    def __init__(self) -> None:
        self.sent = 0

    @contextmanager
    def installed(self) -> Iterator[Counter]:
        original = requests.Session.send

        def send(session: requests.Session, request: Any, **kwargs: Any) -> Any:
            self.sent += 1
            return original(session, request, **kwargs)

        requests.Session.send = send  # type: ignore[method-assign]
        try:
            yield self
        finally:
            requests.Session.send = original  # type: ignore[method-assign]


def cold_import(module: str, repeat: int) -> float:
    """Median ms of `python -c "import <module>"` minus `python -c pass`."""

    def run(code: str) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    return run(f"import {module}") - run("pass")


def request(shape_id: str, zone: str, count: int) -> LaunchRequest:
    shape = CATALOG.get(shape_id)
    assert shape is not None, shape_id
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    return LaunchRequest(
        shape=shape,
        zone=zone,
        count=count,
        token=f"{cluster}-c1-a1",
        tags={TAG_BROKER: "bench", TAG_CLUSTER: cluster, TAG_ATTEMPT: "c1-a1"},
    )


def rounds(n: int, once: Callable[[], None], counter: Counter) -> tuple[float, float]:
    """(requests per round, median ms per round) over ``n`` rounds of ``once``."""
    times, sent = [], counter.sent
    for _ in range(n):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return (counter.sent - sent) / n, statistics.median(times) * 1000


def bench_cloud(
    name: str,
    provider: Any,
    shape_id: str,
    zone: str,
    stockout: Callable[[], None],
    n: int,
) -> list[tuple[str, str, float, float]]:
    counter = Counter()
    rows: list[tuple[str, str, float, float]] = []
    with counter.installed():
        provider.terminate(provider.launch(request(shape_id, zone, 2), timeout=600))  # warm

        for count in (2, 8):

            def gang(count: int = count) -> None:
                nodes = provider.launch(request(shape_id, zone, count), timeout=600)
                assert len(nodes) == count
                provider.terminate(nodes)

            per, ms = rounds(n, gang, counter)
            rows.append((name, f"launch + terminate {count} nodes", per, ms))

        def failed() -> None:
            stockout()
            try:
                provider.launch(request(shape_id, zone, 2), timeout=600)
            except CapacityError:
                return
            raise AssertionError("the injected stockout did not surface as a CapacityError")

        per, ms = rounds(n, failed, counter)
        rows.append((name, "a failed attempt (stockout), 2 nodes", per, ms))
    assert provider.list_tagged() == [], f"{name}: nodes left behind"
    return rows


def gcp_rows(n: int) -> list[tuple[str, str, float, float]]:
    from providers.gcp.adapter import GcpProvider
    from providers.gcp.config import GcpConfig

    with (
        tempfile.TemporaryDirectory() as where,
        fake_process("gcp", Path(where), "broker provision"),
    ):
        config = load_config(Path(where) / "config.toml", required=True).section_of(GcpConfig)
        assert config is not None and config.endpoint is not None
        os.environ.update(
            GOOGLE_APPLICATION_CREDENTIALS=str(Path(where) / "adc.json"),
            GOOGLE_CLOUD_PROJECT=config.project,
            GCE_METADATA_HOST="127.0.0.1:9",
            GCE_METADATA_IP="127.0.0.1:9",
            NO_GCE_CHECK="true",
        )
        clock = Clock()
        provider = GcpProvider(config, CATALOG, sleep=clock.sleep, clock=clock)
        endpoint = config.endpoint
        return bench_cloud(
            "GCP",
            provider,
            "gcp:us-central1:a3-highgpu-8g:spot",
            "us-central1-a",
            lambda: inject(endpoint, {"method": "bulkInsert", "error": "stockout"}),
            n,
        )


def azure_rows(n: int) -> list[tuple[str, str, float, float]]:
    from providers.azure.adapter import AzureProvider
    from providers.azure.config import AzureConfig

    with (
        tempfile.TemporaryDirectory() as where,
        fake_process("azure", Path(where), "BROKER_CATALOG_DIR"),
    ):
        config = load_config(Path(where) / "config.toml", required=True).section_of(AzureConfig)
        assert config is not None and config.endpoint is not None
        os.environ["PATH"] = f"{Path(where) / 'bin'}{os.pathsep}{os.environ['PATH']}"
        os.environ["AZURE_TOKEN_CREDENTIALS"] = "AzureCliCredential"
        clock = Clock()
        provider = AzureProvider(
            config, CATALOG, polling_interval=0, sleep=clock.sleep, clock=clock
        )
        endpoint, ca_file = config.endpoint, config.ca_bundle
        fault = {"op": "create", "code": "AllocationFailed", "kind": "lro"}
        return bench_cloud(
            "Azure",
            provider,
            "azure:eastus:Standard_ND96isr_H100_v5:on-demand",
            "eastus",
            lambda: inject(endpoint, fault, ca_file),
            n,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per row (default 5)")
    args = parser.parse_args()

    print("## Cold import of an adapter (fresh process, median of 5, minus `python -c pass`)")
    print("| module | ms |\n|---|---|")
    for module in ("providers.aws.adapter", "providers.gcp.adapter", "providers.azure.adapter"):
        print(f"| `{module}` | {cold_import(module, 5):.0f} |")

    print(f"\n## One gang against the local fakes (in process, median of {args.rounds})")
    print("| cloud | what | HTTP requests | wall ms |\n|---|---|---|---|")
    for name, what, per, ms in gcp_rows(args.rounds) + azure_rows(args.rounds):
        print(f"| {name} | {what} | {per:.0f} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
