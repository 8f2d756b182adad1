"""The cloud adapters against their local stand-ins. Run by hand, from the repository root:
``python benchmarks/adapters.py [--rounds N]`` (needs the test extras: the fakes live in
``tests/fakes``).

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
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest  # noqa: E402
from providers.errors import CapacityError  # noqa: E402
from shapes.catalog import load_bundled_catalog  # noqa: E402
from tests.conftest import FakeClock  # noqa: E402

CATALOG = load_bundled_catalog()


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
    from providers.config import GcpConfig
    from providers.gcp.adapter import GcpProvider
    from tests.fakes.gcp import PROJECT, FakeServer
    from tests.providers.gcp.conftest import FakeCredentials

    with FakeServer() as server:
        clock = FakeClock()
        config = GcpConfig(
            project=PROJECT,
            regions=("us-central1",),
            image="projects/debian-cloud/global/images/family/debian-12",
            endpoint=server.url,
        )
        provider = GcpProvider(
            config, CATALOG, credentials=FakeCredentials(), sleep=clock.sleep, clock=clock
        )
        return bench_cloud(
            "GCP",
            provider,
            "gcp:us-central1:a3-highgpu-8g:spot",
            "us-central1-a",
            lambda: server.state.inject("bulkInsert", "stockout"),
            n,
        )


def azure_rows(n: int) -> list[tuple[str, str, float, float]]:
    from providers.azure.adapter import AzureProvider
    from tests.fakes.azure import FakeArm
    from tests.providers.azure.conftest import FakeCredential, make_config

    with tempfile.TemporaryDirectory() as where:
        fake = FakeArm(workdir=Path(where)).start()
        try:
            clock = FakeClock()
            provider = AzureProvider(
                make_config(fake),
                CATALOG,
                credential=FakeCredential(),
                polling_interval=0,
                sleep=clock.sleep,
                clock=clock,
            )
            return bench_cloud(
                "Azure",
                provider,
                "azure:eastus:Standard_ND96isr_H100_v5:on-demand",
                "eastus",
                lambda: fake.inject("create", "AllocationFailed", kind="lro"),
                n,
            )
        finally:
            fake.stop()


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
