"""The Kafka bus: an idempotent producer, and one consumer thread per instance.

Every instance reads every partition of the topic (assigned, not group-subscribed), so
each sees every room's records in the partition's order. Where to start is not kept in
Kafka but in history: the offset up to which history holds every message, so an instance
that restarts replays what history is missing and nothing acknowledged is lost from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from chat.bus.base import Bus, BusUnavailable, Deliver, Record
from chat.metrics import Metrics
from chat.settings import Settings

log = logging.getLogger(__name__)

BATCH_MAX = 1000
POLL_S = 0.1
ASSIGN_WAIT_S = 20.0
FLUSH_S = 3.0
JOIN_S = 0.5
RETRY_MAX_S = 5.0
LAG_EVERY_S = 5.0


def common_config(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by the producer, the consumer and the admin client."""
    assert settings.kafka_bootstrap_servers is not None
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": f"chat-{settings.instance_id}",
        "socket.keepalive.enable": True,
        "reconnect.backoff.max.ms": 2000,
    }
    if settings.kafka_security_protocol:
        config["security.protocol"] = settings.kafka_security_protocol
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password:
        config["sasl.password"] = settings.kafka_sasl_password.reveal()
    if settings.kafka_ssl_ca_location:
        config["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return config


def producer_config(settings: Settings) -> dict[str, Any]:
    """Durable and ordered: acks from all in-sync replicas, idempotence, a small linger."""
    return {
        **common_config(settings),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 1,
        "compression.type": "lz4",
        # The sender hears `unavailable` after ACK_TIMEOUT; librdkafka keeps trying longer,
        # which is why a refused message "may or may not appear later".
        "message.timeout.ms": max(30_000, int(settings.ack_timeout * 1000) * 2),
        "queue.buffering.max.messages": 100_000,
    }


def consumer_config(settings: Settings) -> dict[str, Any]:
    """Assigned partitions, no group membership, no commits: positions live with history."""
    return {
        **common_config(settings),
        "group.id": f"chat-relay-{settings.instance_id}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": settings.kafka_fetch_wait_ms,
        "enable.partition.eof": False,
    }


class KafkaBus(Bus):
    """Publishes through one shared producer; delivers from one dedicated consumer thread."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.name = f"kafka({settings.kafka_bootstrap_servers}, topic={settings.kafka_topic})"
        self._settings = settings
        self._topic = settings.kafka_topic
        self._metrics = metrics
        self._producer: Producer | None = None
        self._threads: list[threading.Thread] = []
        self._stop_consumer = threading.Event()
        self._stop_poller = threading.Event()
        self._assigned = threading.Event()
        self._closed = False

    async def start(self, deliver: Deliver, resume: Mapping[int, int]) -> None:
        """Create the producer, start the consumer thread, and wait for its assignment."""
        loop = asyncio.get_running_loop()
        self._producer = Producer(producer_config(self._settings), logger=log)
        self._threads = [
            threading.Thread(target=self._poll_producer, name="kafka-producer-poll", daemon=True),
            threading.Thread(
                target=self._consume,
                args=(loop, deliver, dict(resume)),
                name="kafka-consumer",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()
        if not await asyncio.to_thread(self._assigned.wait, ASSIGN_WAIT_S):
            log.error("kafka consumer not assigned after %.0fs; still trying", ASSIGN_WAIT_S)

    async def publish(self, room: str, value: bytes) -> None:
        """Produce keyed by room; return when the broker acknowledged it."""
        producer = self._producer
        if producer is None or self._closed:
            raise BusUnavailable("the bus is not running")
        if not self._assigned.is_set():
            # Until the consumer holds its offsets, an acknowledged record could be skipped.
            raise BusUnavailable("the consumer is not assigned yet")
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            # Runs on the producer poll thread.
            loop.call_soon_threadsafe(_settle, acked, err)

        try:
            producer.produce(self._topic, value=value, key=room.encode(), on_delivery=on_delivery)
        except BufferError:
            raise BusUnavailable("too many messages waiting for the broker") from None
        except KafkaException as exc:
            raise BusUnavailable(str(exc)) from None
        await acked

    def signal(self, room: str, value: bytes) -> None:
        """Produce without waiting; a lost typing notice is harmless."""
        if self._producer is None or self._closed:
            return
        with contextlib.suppress(BufferError, KafkaException):
            self._producer.produce(self._topic, value=value, key=room.encode())

    @property
    def live(self) -> bool:
        """The consumer thread runs and holds its assignment."""
        return self._assigned.is_set() and not self._closed

    async def check(self) -> str | None:
        """Ask the broker for the topic's metadata."""
        if self._producer is None or self._closed:
            return "not running"
        try:
            metadata = await asyncio.to_thread(self._producer.list_topics, self._topic, 2.0)
        except KafkaException as exc:
            return f"broker unreachable: {exc.args[0]}"
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            return f"topic {self._topic} unavailable"
        return None

    async def close(self) -> None:
        """Flush what was produced, then stop both threads."""
        if self._closed:
            return
        self._closed = True
        # Stop both threads first: flush() serves delivery reports itself, and the whole
        # close must fit the 10 s a stopping instance has.
        self._stop_poller.set()
        self._stop_consumer.set()
        if self._producer is not None:
            left = await asyncio.to_thread(self._producer.flush, FLUSH_S)
            if left:
                log.warning("%d records were not confirmed by the broker before shutdown", left)
        for thread in self._threads:
            # Daemon threads: one stuck in a broker call does not hold the process.
            await asyncio.to_thread(thread.join, JOIN_S)

    def _poll_producer(self) -> None:
        """Serve delivery reports; librdkafka calls back only from poll()."""
        assert self._producer is not None
        while not self._stop_poller.is_set():
            self._producer.poll(0.05)

    def _consume(
        self, loop: asyncio.AbstractEventLoop, deliver: Deliver, handled: dict[int, int]
    ) -> None:
        """The consumer thread: owns its Consumer, hands each batch to the loop."""
        backoff = 0.5
        while not self._stop_consumer.is_set():
            try:
                self._ensure_topic()
                consumer = Consumer(consumer_config(self._settings), logger=log)
                try:
                    self._assign(consumer, handled)
                    backoff = 0.5
                    self._run(consumer, loop, deliver, handled)
                finally:
                    self._assigned.clear()
                    consumer.close()
            except Exception as exc:
                log.warning("kafka consumer restarting in %.1fs: %r", backoff, exc)
                self._stop_consumer.wait(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)

    def _ensure_topic(self) -> None:
        """Create the topic with the configured partition count unless it exists."""
        admin = AdminClient(common_config(self._settings))
        topic = NewTopic(self._topic, num_partitions=self._settings.kafka_partitions)
        futures = admin.create_topics([topic], request_timeout=10.0)
        try:
            futures[self._topic].result(timeout=15.0)
            log.info(
                "created topic %s with %d partitions", self._topic, self._settings.kafka_partitions
            )
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                # Hosted Kafka often forbids creating topics; the operator made it then.
                log.warning("could not create topic %s: %s", self._topic, error.str())

    def _assign(self, consumer: Consumer, handled: dict[int, int]) -> None:
        """Start after what history holds, or at the end for partitions it never saw."""
        metadata = consumer.list_topics(self._topic, timeout=10.0)
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        assignment = []
        for partition in sorted(topic.partitions):
            if partition in handled:
                offset = handled[partition] + 1
            else:
                # Looked up now, not lazily: "from the end" must mean this exact offset.
                _, offset = consumer.get_watermark_offsets(
                    TopicPartition(self._topic, partition), timeout=10.0, cached=False
                )
                handled[partition] = offset - 1
            assignment.append(TopicPartition(self._topic, partition, offset))
        consumer.assign(assignment)
        self._assigned.set()
        log.info("kafka consumer assigned %d partitions of %s", len(assignment), self._topic)

    def _run(
        self,
        consumer: Consumer,
        loop: asyncio.AbstractEventLoop,
        deliver: Deliver,
        handled: dict[int, int],
    ) -> None:
        next_lag = time.monotonic()
        reported: dict[int, float] = {}
        while not self._stop_consumer.is_set():
            batch: list[Record] = []
            # Block for the first record only: consume(n, timeout) would wait for n of them.
            first = consumer.poll(POLL_S)
            if first is None:
                messages = []
            else:
                messages = [first, *consumer.consume(num_messages=BATCH_MAX - 1, timeout=0)]
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        if batch:  # already marked handled: hand them over first
                            loop.call_soon_threadsafe(deliver, batch)
                        raise KafkaException(error)
                    code = error.code()
                    if time.monotonic() - reported.get(code, 0.0) > 10.0:
                        reported[code] = time.monotonic()
                        log.warning("kafka consumer: %s", error.str())
                    continue
                key, value = msg.key(), msg.value()
                partition, offset = msg.partition(), msg.offset()
                if partition is None or offset is None or value is None:
                    continue
                handled[partition] = offset
                if key is None:
                    continue  # not ours: every record we produce is keyed by room
                batch.append(
                    Record(
                        key.decode(errors="replace"), partition, offset, value, msg.timestamp()[1]
                    )
                )
            if batch:
                loop.call_soon_threadsafe(deliver, batch)
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + LAG_EVERY_S
                self._report_lag(consumer, handled)

    def _report_lag(self, consumer: Consumer, handled: dict[int, int]) -> None:
        for partition, offset in handled.items():
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(self._topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high >= 0:
                self._metrics.consumer_lag.labels(str(partition)).set(max(0, high - offset - 1))


def _settle(acked: asyncio.Future[None], error: KafkaError | None) -> None:
    if acked.done():
        return  # the sender stopped waiting (ack timeout); the record may still land
    if error is None:
        acked.set_result(None)
    else:
        acked.set_exception(BusUnavailable(error.str()))
