"""Prometheus metrics of one instance, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Metrics:
    """Every series this instance exports; one object per app so tests do not share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.instance = Info("chat_instance", "This instance and its backends.", registry=r)
        self.connections = Gauge("chat_connections", "Open WebSocket connections.", registry=r)
        self.frames_in = Counter(
            "chat_frames_in", "Client frames received, by type.", ["type"], registry=r
        )
        self.frames_out = Counter(
            "chat_frames_out",
            "Frames sent or queued to local sockets, by type.",
            ["type"],
            registry=r,
        )
        self.errors = Counter("chat_errors", "Error frames sent, by code.", ["code"], registry=r)
        self.messages_produced = Counter(
            "chat_messages_produced", "Chat messages the bus confirmed.", registry=r
        )
        self.messages_delivered = Counter(
            "chat_messages_delivered",
            "Chat message frames sent or queued to local sockets.",
            registry=r,
        )
        self.produce_latency = Histogram(
            "chat_produce_ack_seconds",
            "From publishing a message to the bus confirming it.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.deliver_latency = Histogram(
            "chat_consume_to_socket_seconds",
            "From the bus timestamp of a message to queuing it for local sockets.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "chat_consumer_batch_size",
            "Records handed over from the consumer per batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "chat_consumer_lag",
            "Records behind the broker's high watermark, where the broker reports it.",
            ["partition"],
            registry=r,
        )
        self.rate_limited = Counter(
            "chat_rate_limited", "Frames refused by a rate limit.", registry=r
        )
        self.dropped_clients = Counter(
            "chat_dropped_clients", "Connections dropped for not keeping up.", registry=r
        )
        self.history_write_failures = Counter(
            "chat_history_write_failures", "Batches the history store did not take.", registry=r
        )
        self.history_dropped = Counter(
            "chat_history_dropped",
            "Messages dropped from a full history backlog (history may miss them).",
            registry=r,
        )
        self.history_backlog = Gauge(
            "chat_history_backlog", "Messages waiting to be written to history.", registry=r
        )
        self.bus_publish_failures = Counter(
            "chat_bus_publish_failures", "Messages the bus did not confirm in time.", registry=r
        )
