"""Prometheus metrics: one registry per service instance (tests run several in one process).

Counters are incremented where things happen; gauges that describe state (spool depth, STS
outcomes kept by the broker, endpoint states) are read at scrape time by a collector, so idle
endpoints cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        snap = self._snapshot()
        sts = CounterMetricFamily(
            "logferry_sts_assume_role",
            "AssumeRole calls by STS region and outcome",
            labels=["region", "outcome"],
        )
        for (region, outcome), count in sorted(snap.get("sts", {}).items()):
            sts.add_metric([region, outcome], count)
        yield sts
        healthy = GaugeMetricFamily(
            "logferry_sts_region_healthy",
            "1 if the STS region is not cooling down",
            labels=["region"],
        )
        for region, info in sorted(snap.get("regions", {}).items()):
            healthy.add_metric([region], 1.0 if info["healthy"] else 0.0)
        yield healthy
        pending_bytes = GaugeMetricFamily(
            "logferry_spool_pending_bytes",
            "Accepted bytes not yet delivered",
            labels=["customer", "endpoint"],
        )
        pending_lines = GaugeMetricFamily(
            "logferry_spool_pending_lines",
            "Accepted lines not yet delivered",
            labels=["customer", "endpoint"],
        )
        for (customer, endpoint), (b, n) in sorted(snap.get("pending", {}).items()):
            pending_bytes.add_metric([customer, endpoint], b)
            pending_lines.add_metric([customer, endpoint], n)
        yield pending_bytes
        yield pending_lines
        lag = GaugeMetricFamily(
            "logferry_endpoint_oldest_undelivered_seconds",
            "Age of the oldest accepted line not yet delivered (0: caught up), active endpoints",
            labels=["customer", "endpoint"],
        )
        for (customer, endpoint), age in sorted(snap.get("lag", {}).items()):
            lag.add_metric([customer, endpoint], age)
        yield lag
        yield GaugeMetricFamily(
            "logferry_endpoints_late",
            "Active endpoints whose oldest undelivered line is older than their period + 5 s "
            "(above 0 for long: delivery cannot keep up)",
            value=snap.get("late", 0),
        )
        yield GaugeMetricFamily(
            "logferry_delivery_queue_wait_seconds",
            "How long the oldest delivery step has waited for a free delivery thread",
            value=snap.get("delivery_queue_wait", 0.0),
        )
        yield GaugeMetricFamily(
            "logferry_delivery_queued_steps",
            "Delivery steps waiting for a free delivery thread",
            value=snap.get("delivery_queued", 0),
        )
        yield GaugeMetricFamily(
            "logferry_spool_disk_bytes", "Bytes the spool uses on disk", value=snap.get("disk", 0)
        )
        yield from _syslog_families(snap.get("syslog", {}))
        yield from _nats_families(snap.get("nats"))
        yield from _upload_budget_families()
        states = GaugeMetricFamily(
            "logferry_endpoints", "Configured endpoints by type and state", labels=["type", "state"]
        )
        for (type_, state), count in sorted(snap.get("states", {}).items()):
            states.add_metric([type_, state], count)
        yield states


_NATS_HELP = {
    "owned_endpoints": "Endpoints this node owns (delivers) now",
    "takeovers_total": "Endpoints this node took over from another owner",
    "kv_conflicts_total": "Compare-and-set conflicts on endpoint records (another owner wrote)",
    "live_nodes": "Delivery nodes this node sees alive",
    "cursor_lag_bytes": "Accepted bytes of owned endpoints not yet delivered",
    "cursor_lag_lines": "Accepted lines of owned endpoints not yet delivered",
    "cursor_lag_seconds_max": "Age of the oldest undelivered line over owned endpoints",
    "connected": "1 while this node is connected to NATS",
    "parked_endpoints": "Owned endpoints idle for spool.idle_follow_seconds: no consumer",
    "parked_wakeups_total": "Parked endpoints woken by lines another node appended",
}


def _nats_families(stats: dict[str, float] | None) -> Iterable[Any]:
    """`backend.node_stats()` of a NATS node as `logferry_nats_*` (docs/scale-out.md)."""
    for key, value in sorted((stats or {}).items()):
        name = f"logferry_nats_{key}"
        help_ = _NATS_HELP.get(key, key.replace("_", " "))
        if key.endswith("_total"):
            yield CounterMetricFamily(name.removesuffix("_total"), help_, value=value)
        else:
            yield GaugeMetricFamily(name, help_, value=value)


def _upload_budget_families() -> Iterable[Any]:
    """The process-wide S3 upload budget (`server.upload_memory_bytes`), read where it lives:
    one budget per process, shared by every S3 sink."""
    from logferry.sinks.s3_budget import shared_budget

    budget = shared_budget().snapshot()
    yield GaugeMetricFamily(
        "logferry_s3_upload_budget_bytes",
        "Budget of S3 upload bodies in flight (server.upload_memory_bytes)",
        value=budget["max_bytes"],
    )
    yield GaugeMetricFamily(
        "logferry_s3_upload_bytes_in_flight",
        "S3 UploadPart/PutObject body bytes submitted and not yet finished",
        value=budget["used"],
    )
    yield GaugeMetricFamily(
        "logferry_s3_upload_bytes_in_flight_peak",
        "Highest logferry_s3_upload_bytes_in_flight since start (never above the budget)",
        value=budget["peak"],
    )
    yield CounterMetricFamily(
        "logferry_s3_upload_budget_waits",
        "Times an S3 body found the upload budget full and its endpoint waited",
        value=budget["waits"],
    )
    yield GaugeMetricFamily(
        "logferry_s3_upload_budget_waiting_endpoints",
        "S3 endpoints waiting for room in the upload budget now",
        value=budget["waiting"],
    )


_SYSLOG_COUNTERS = (
    ("messages", "Syslog frames/datagrams received"),
    ("lines", "Syslog lines accepted by the spool"),
    ("truncated", "Syslog messages cut (to max_message_bytes, or by the end of a connection)"),
    (
        "truncated_at_close",
        "Syslog messages the end of a TCP connection cut short (kept as far as they got)",
    ),
    ("invalid_utf8", "Syslog messages with invalid UTF-8 repaired"),
    ("empty_skipped", "Empty syslog messages skipped"),
    ("framing_errors", "Syslog framing errors (connection closed)"),
    ("connection_errors", "Unexpected errors in syslog connection handlers"),
    ("connections_total", "Syslog TCP connections accepted (TLS: after the handshake)"),
    ("tls_handshake_failures", "Syslog TLS handshakes that failed or timed out"),
    ("tls_unclean_closes", "Syslog TLS connections ended without close_notify (FIN, RST, error)"),
    ("endpoint_missing_lines", "TCP syslog lines dropped because the endpoint no longer exists"),
    ("deliver_retries", "Syslog batches retried because the spool refused them"),
    ("lost_on_stop", "TCP syslog lines the spool still refused when the listener stopped"),
)


def _syslog_families(listeners: dict[str, Any]) -> Iterable[Any]:
    for name, help_text in _SYSLOG_COUNTERS:
        family = CounterMetricFamily(f"logferry_syslog_{name}", help_text, labels=["listener"])
        for label, counters in sorted(listeners.items()):
            family.add_metric([label], getattr(counters, name))
        yield family
    dropped = CounterMetricFamily(
        "logferry_syslog_udp_dropped",
        "UDP datagrams dropped, by reason",
        labels=["listener", "reason"],
    )
    formats = CounterMetricFamily(
        "logferry_syslog_format_lines",
        "Syslog lines by recognised format",
        labels=["listener", "format"],
    )
    refused = CounterMetricFamily(
        "logferry_syslog_connections_refused",
        "Syslog TCP connections refused, by reason",
        labels=["listener", "reason"],
    )
    closed = CounterMetricFamily(
        "logferry_syslog_connections_closed",
        "Syslog TCP connections ended, by how (clean = FIN, or close_notify on TLS)",
        labels=["listener", "reason"],
    )
    open_now = GaugeMetricFamily(
        "logferry_syslog_connections_open", "Syslog TCP connections open", labels=["listener"]
    )
    for label, counters in sorted(listeners.items()):
        for reason, count in sorted(counters.udp_dropped.items()):
            dropped.add_metric([label, reason], count)
        for fmt, count in sorted(counters.by_format.items()):
            formats.add_metric([label, fmt], count)
        for reason, count in sorted(counters.refused.items()):
            refused.add_metric([label, reason], count)
        for reason, count in sorted(counters.closed.items()):
            closed.add_metric([label, reason], count)
        open_now.add_metric([label], counters.connections_open)
    yield dropped
    yield formats
    yield refused
    yield closed
    yield open_now


class Metrics:
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ep = ["customer", "endpoint"]
        self.ingest_lines = Counter(
            "logferry_ingest_lines", "Lines accepted (durable)", [*ep, "source"], registry=r
        )
        self.ingest_bytes = Counter(
            "logferry_ingest_bytes", "Bytes accepted (durable)", [*ep, "source"], registry=r
        )
        self.ingest_rejected = Counter(
            "logferry_ingest_rejected_requests",
            "Ingest requests refused, by reason",
            ["reason"],
            registry=r,
        )
        self.ingest_adjusted = Counter(
            "logferry_ingest_adjusted_lines",
            "Lines skipped (empty) or changed (truncated, invalid UTF-8 repaired)",
            [*ep, "kind"],
            registry=r,
        )
        self.otlp_records = Counter(
            "logferry_otlp_log_records",
            "OTLP log records: accepted (durable) or rejected (dropped, told in partial_success)",
            [*ep, "outcome"],
            registry=r,
        )
        self.delivered_lines = Counter(
            "logferry_delivered_lines", "Lines delivered", [*ep, "type"], registry=r
        )
        self.delivered_bytes = Counter(
            "logferry_delivered_bytes", "Uncompressed bytes delivered", [*ep, "type"], registry=r
        )
        self.delivered_units = Counter(
            "logferry_delivered_units",
            "S3 objects or Kinesis PutRecords calls completed",
            [*ep, "type"],
            registry=r,
        )
        self.delivery_errors = Counter(
            "logferry_delivery_errors",
            "Delivery failures by AWS code and kind (setup: customer must fix; transient: retried)",
            [*ep, "code", "kind"],
            registry=r,
        )
        self.retries = Counter(
            "logferry_delivery_retries", "Delivery attempts retried", ep, registry=r
        )
        self.early_closes = Counter(
            "logferry_early_file_closes",
            "Open files closed before their period ended because the spool was under pressure",
            ep,
            registry=r,
        )
        self.quarantined = Counter(
            "logferry_spool_quarantined_bytes",
            "Damaged spool bytes moved to the quarantine directory (delivery went on)",
            ep,
            registry=r,
        )
        # HTTP listener limits (service/listener_limits.py)
        self.http_refused = Counter(
            "logferry_http_refused",
            "HTTP connections or requests refused by a listener limit, by reason "
            "(max_connections, max_per_source: connection closed; body_budget, "
            "body_budget_per_source: 503)",
            ["reason"],
            registry=r,
        )
        self.http_closed = Counter(
            "logferry_http_timed_out_connections",
            "HTTP connections closed by a listener time limit, by reason "
            "(idle_timeout, head_timeout, body_timeout)",
            ["reason"],
            registry=r,
        )
        self.http_connections_open = Gauge(
            "logferry_http_connections_open", "HTTP connections open", registry=r
        )
        self.http_body_bytes_in_flight = Gauge(
            "logferry_http_body_bytes_in_flight",
            "Request-body bytes reserved by requests in progress (server.max_body_bytes_in_flight)",
            registry=r,
        )
        r.register(_StateCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
