"""``broker serve``: the HTTP API, the web console, provisioning workers and a reconcile loop,
one process over the same store as the CLI. A thin edge: every decision is the Broker's.

- :mod:`broker.server.service`: the long-lived parts (the Broker, workers, reconcile loop,
  graceful stop);
- :mod:`broker.server.app`: the FastAPI application (errors, health, metrics, routers);
- :mod:`broker.server.auth`: bearer tokens and the organisation a request acts for;
- :mod:`broker.server.api`: the ``/v1`` routes; :mod:`broker.server.schemas`: their bodies;
- :mod:`broker.server.console`: the web console (templates/ and static/ served here).

Imported only by ``broker serve`` and the tests: never on the quote path.
"""
