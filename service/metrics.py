"""Prometheus metrics, in a registry of the app's own (no import-time globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LAG_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 300, 1800, 7200, 86400)


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.upstream_requests = Counter(
            "status_proxy_upstream_requests",
            "Upstream status requests by upstream and outcome",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self.poll_lag = Histogram(
            "status_proxy_poll_lag_seconds",
            "How late a poll started after its task was due",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.tasks = Gauge(
            "status_proxy_tasks",
            "Tasks tracked, by upstream and state",
            ["upstream", "state"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "status_proxy_deliveries",
            "Webhook attempts by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "status_proxy_delivery_latency_seconds",
            "From the event being written to the receiver accepting it",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "status_proxy_outbox_depth", "Events waiting for delivery", registry=self.registry
        )
        self.oldest_pending = Gauge(
            "status_proxy_oldest_pending_delivery_age_seconds",
            "Age of the oldest event waiting for delivery",
            registry=self.registry,
        )

        self.worker_errors = Counter(
            "status_proxy_worker_errors",
            "Jobs, outcome writes and housekeeping steps that raised, by worker and step",
            ["worker", "step"],
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "status_proxy_worker_restarts",
            "Workers restarted after dying, by worker",
            ["worker"],
            registry=self.registry,
        )
        self.open_circuits = Gauge(
            "status_proxy_open_circuits",
            "Receiver origins whose circuit is open (their webhooks wait for a probe)",
            registry=self.registry,
        )
        self.oldest_open_circuit = Gauge(
            "status_proxy_oldest_open_circuit_seconds",
            "How long the circuit open the longest has been open (0 when none is)",
            registry=self.registry,
        )
        self.write_batch = Histogram(
            "status_proxy_write_batch_jobs",
            "API writes committed together in one transaction (group commit, SQLite)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
