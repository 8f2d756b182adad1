"""``/metrics`` in the Prometheus text format. Only aggregates: no cluster id and no
organisation appears in a label, so the page reveals nothing about anyone's experiments.
Gauges come from the store (true across replicas); request and provision counters are this
process's own."""

from __future__ import annotations

import time

from broker.lifecycle import Status
from broker.server.service import Service


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(service: Service) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {value:g}" if labels else f"{name} {value:g}")

    with service.counters.lock:
        requests = dict(service.counters.requests)
        provisions = dict(service.counters.provisions)
    metric(
        "broker_http_requests_total",
        "counter",
        "HTTP requests served by this process, by method, route and status.",
        [
            (f'{{method="{m}",route="{_label(r)}",status="{s}"}}', n)
            for (m, r, s), n in sorted(requests.items())
        ],
    )
    metric(
        "broker_provisions_total",
        "counter",
        "Provisionings run by this process's workers, by outcome (RUNNING or the reason).",
        [(f'{{outcome="{_label(o)}"}}', n) for o, n in sorted(provisions.items())],
    )
    stats = service.broker.store.stats()
    metric(
        "broker_attempts",
        "gauge",
        "Provisioning attempts in the store, by outcome and cloud error code.",
        [
            (f'{{outcome="{_label(o)}",error_code="{_label(e)}"}}', n)
            for (o, e), n in sorted(stats.attempts.items())
        ],
    )
    metric(
        "broker_clusters",
        "gauge",
        "Clusters in the store, by status.",
        [(f'{{status="{s.value}"}}', stats.clusters_by_status.get(s.value, 0)) for s in Status],
    )
    metric("broker_gpus_running", "gauge", "GPUs of RUNNING clusters.", [("", stats.gpus_running)])
    metric(
        "broker_spend_per_hour_dollars",
        "gauge",
        "List-price spend per hour of every cluster that bills now.",
        [("", stats.spend_per_hour)],
    )
    metric(
        "broker_wind_downs_in_flight",
        "gauge",
        "Clusters this process is winding down now (stops, endings, recoveries).",
        [("", len(service.broker.winding))],
    )
    metric(
        "broker_up_seconds",
        "gauge",
        "Seconds since this server started.",
        [("", time.time() - service.started)],
    )
    return "\n".join(lines) + "\n"


__all__ = ["render"]
