"""Running the server: build the Broker from settings, start the service's threads, serve
with uvicorn, and stop gracefully on SIGINT/SIGTERM (no new work; in-flight provisionings
and wind-downs get ``grace`` seconds; whatever is left is handed on through its lease)."""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from broker.api import Broker
from broker.errors import CannotListen
from broker.runs import RunPolicy
from broker.server.service import Service, ServiceOptions
from broker.settings import Settings

log = logging.getLogger("broker.server")


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 4
    reconcile_every: float = 30.0
    grace: float = 20.0
    backend: str | None = None  # "sim": every cluster on the simulated cloud
    sim_scenario: str | None = None
    log_level: str = "info"
    public_url: str | None = None  # where nodes reach this server (`[service] public_url`)
    heartbeat_timeout: float = 60.0  # a running node silent this long is lost


def _loopback_url(options: ServeOptions) -> str:
    """Where the simulated cloud's nodes (local processes) reach this server. Nodes on a
    real cloud need ``--public-url``: without it, no command runs on them."""
    host = options.host if options.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{options.port}"


def build_service(settings: Settings, options: ServeOptions) -> Service:
    """The service over the configured store; the store is opened (and checked) now, so a
    bad BROKER_STATE_URL is a StoreError before anything listens."""
    broker = Broker(
        settings,
        backend=options.backend,
        sim_scenario=options.sim_scenario,
        service_url=options.public_url or _loopback_url(options),
        service_public=options.public_url is not None,
        run_policy=RunPolicy(
            heartbeat_timeout=options.heartbeat_timeout,
            heartbeat_every=min(5.0, options.heartbeat_timeout / 4),  # several per timeout
        ),
    )
    broker.store.ping()
    return Service(
        broker,
        ServiceOptions(
            workers=options.workers, reconcile_every=options.reconcile_every, grace=options.grace
        ),
    )


def _server_class(on_signal: Callable[[], None]) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, with signals handled here: the first SIGINT/SIGTERM starts a
        graceful stop, a second forces it; the signal is not raised again afterwards (so
        the service's own stop runs and the process exits 0)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handler(signum: int, _frame: FrameType | None) -> None:
                if self.should_exit:
                    self.force_exit = True
                self.should_exit = True
                on_signal()

            previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, old in previous.items():
                    signal.signal(sig, old)

    return Server


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        raise CannotListen(
            f"cannot serve on {host}:{port}: {why}"
            + (
                " (another process listens there; pick another --port)"
                if exc.errno == errno.EADDRINUSE
                else ""
            )
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, options: ServeOptions, *, announce: bool = True) -> int:
    import uvicorn

    from broker.server.app import create_app

    logging.basicConfig(
        level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sock = _listen(options.host, options.port)  # refused here, before anything starts
    service = build_service(settings, options)
    app = create_app(service)
    # Load the catalog now, then take everything built so far (catalog, app, SQLAlchemy
    # metadata, pydantic models) out of the cyclic collector's reach: a full collection
    # over that heap took 40-60 ms and landed on whichever request was running (the p99).
    _ = service.broker.catalog
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        access_log=False,  # requests are counted in /metrics; a token never reaches a log
        timeout_graceful_shutdown=max(1, int(options.grace)),
    )
    server = _server_class(service.begin_stop)(config)
    service.start()
    if announce:
        where = f"http://{options.host}:{options.port}"
        sys.stderr.write(
            f"broker: serving on {where} (store: {service.broker.store.where})\n"
            f"  console:  {where}/burst  (sign in with an API token)\n"
            f"  API docs: {where}/docs   OpenAPI: {where}/openapi.json\n"
            "  first token: broker token create --org ORG --role admin  (same store)\n"
        )
        sys.stderr.flush()
    try:
        server.run(sockets=[sock])
    finally:
        left = service.stop()
        sys.stderr.write(
            "broker: stopped"
            + (f"; {len(left)} provisioning(s) handed on through their leases" if left else "")
            + "\n"
        )
    return 0


__all__ = ["ServeOptions", "build_service", "serve"]
