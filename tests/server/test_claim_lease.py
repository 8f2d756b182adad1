"""A worker keeps the lease of the cluster it claimed from the claim on, not only once the
provisioner's own keeper starts: ranking and a fresh server's first imports come in between,
and under a loaded host they outlasted a lease, so reconcile settled the cluster Orphaned
and it ran again as a second cycle. In-process, with a 2 s lease and a slow quote."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from broker.api import Broker
from broker.lifecycle import Status
from broker.provisioner import ProvisionPolicy
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.server.service import Service, ServiceOptions
from shapes.catalog import load_bundled_catalog


def test_a_slow_start_keeps_the_claimed_lease(tmp_path: Path) -> None:
    broker = Broker(
        state_dir=tmp_path / "state",
        backend="sim",
        catalog=load_bundled_catalog(),
        policy=ProvisionPolicy(lease_seconds=2.0),
    )
    slow_quote = broker.quote

    def quote(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("explain"):  # Broker.run's ranking, after the claim
            time.sleep(4.5)  # longer than the lease
        return slow_quote(*args, **kwargs)

    broker.quote = quote  # type: ignore[method-assign]
    service = Service(broker, ServiceOptions(workers=1, reconcile_every=0))
    shape = "aws:us-east-1:g5.12xlarge:on-demand"
    cluster = broker.submit(QuoteRequest(rank=RankRequest(gpus=8, priority=(shape,))))
    service.start()
    try:
        time.sleep(3.0)  # claimed, still ranking, past the claim's lease
        report = broker.reconcile()
        assert cluster.id not in report.settled
        deadline = time.monotonic() + 15
        while broker.get(cluster.id).status is not Status.RUNNING:
            assert time.monotonic() < deadline, broker.get(cluster.id)
            time.sleep(0.05)
        assert broker.get(cluster.id).cycle == 1  # not settled and run again
    finally:
        service.stop(grace=5)
