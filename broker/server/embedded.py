"""A broker service inside the current process, on a free loopback port, for as long as a
``with`` block lasts: what ``broker run --provider sim`` uses when no BROKER_URL is set, so
one command shows the whole loop (submit, provision, agents, logs, outcome) on a fresh
machine. Its nodes are local processes, so loopback is where they reach it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from broker.api import Broker
from broker.runs import RunPolicy
from broker.server.service import Service, ServiceOptions
from broker.settings import Settings


@dataclass(frozen=True)
class Embedded:
    url: str
    broker: Broker
    token: str  # an API token of the organisation "local", made for this run


@contextmanager
def embedded_service(
    settings: Settings, *, sim_scenario: str | None = None, workers: int = 2
) -> Iterator[Embedded]:
    """Serve the API on 127.0.0.1 (a free port) over the local store, on the simulated
    cloud; stop it (and its workers) when the block ends."""
    import uvicorn

    from broker.server.app import create_app
    from broker.server.main import _listen, _server_class

    sock = _listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    broker = Broker(
        settings,
        backend="sim",
        sim_scenario=sim_scenario,
        service_url=url,
        run_policy=RunPolicy(heartbeat_every=2.0, heartbeat_timeout=30.0, stop_grace=10.0),
    )
    broker.store.ping()
    service = Service(broker, ServiceOptions(workers=workers, reconcile_every=2.0, grace=10.0))
    config = uvicorn.Config(create_app(service, console=False), log_level="warning")
    server = _server_class(service.begin_stop)(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="broker-embedded", daemon=True
    )
    service.start()
    thread.start()
    token, _ = broker.create_token("local", name="broker run", role="member")
    try:
        while not server.started and thread.is_alive():
            threading.Event().wait(0.02)
        yield Embedded(url, broker, token)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        service.stop(grace=10.0)
        sock.close()
        broker.store.revoke_token(_token_id(broker, token), now=broker.clock())


def _token_id(broker: Broker, token: str) -> str:
    who = broker.authenticate(token)
    return who.token_id if who is not None else ""


__all__ = ["Embedded", "embedded_service"]
