"""What operators rely on: hosted Kafka and Redis settings reach the clients, metrics are real."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.connection import Connection, SSLConnection

from chat import keys
from chat.bus.kafka import consumer_config, producer_config
from chat.redis_client import connect
from chat.settings import Settings
from tests.conftest import Peer, joined_peer, unique

HOSTED = {
    "KAFKA_BOOTSTRAP_SERVERS": "pkc-1.eu-west-1.aws.confluent.cloud:9092",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "PLAIN",
    "KAFKA_SASL_USERNAME": "API_KEY",
    "KAFKA_SASL_PASSWORD": "API_SECRET",
    "REDIS_URL": "rediss://default:pw@eu1-fond-cat-1.upstash.io:6379",
}


def test_sasl_ssl_settings_reach_the_kafka_clients(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings.from_env({**HOSTED, "KAFKA_SSL_CA_LOCATION": str(ca)})
    for config in (producer_config(settings), consumer_config(settings)):
        assert config["bootstrap.servers"] == HOSTED["KAFKA_BOOTSTRAP_SERVERS"]
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "PLAIN"
        assert config["sasl.username"] == "API_KEY"
        assert config["sasl.password"] == "API_SECRET"
        assert config["ssl.ca.location"] == str(ca)
    producer = producer_config(settings)
    assert producer["acks"] == "all" and producer["enable.idempotence"] is True
    consumer = consumer_config(settings)
    assert consumer["enable.auto.commit"] is False


def test_plaintext_kafka_sends_no_security_settings() -> None:
    config = producer_config(Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}))
    assert not any(key.startswith(("security.", "sasl.", "ssl.")) for key in config)


async def test_rediss_urls_turn_tls_on() -> None:
    client = connect(Settings.from_env(HOSTED))
    try:
        pool = client.connection_pool
        assert pool.connection_class is SSLConnection
        assert pool.connection_kwargs["host"] == "eu1-fond-cat-1.upstash.io"
        assert pool.connection_kwargs["password"] == "pw"
    finally:
        await client.aclose()
    plain = connect(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}))
    try:
        assert plain.connection_pool.connection_class is Connection
    finally:
        await plain.aclose()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(
        v for got, v in found.get(name, []) if all(got.get(k) == x for k, x in labels.items())
    )


@pytest.mark.parametrize("backend", ["distributed"])
async def test_metrics_after_real_traffic(
    make_client: Callable[..., Awaitable[TestClient[Any, Any]]], peers: list[Peer]
) -> None:
    client = await make_client(send_rate=2.0, send_burst=5)
    room = unique("m")[:20]
    _, _, a, _ = await joined_peer(client, room)
    _, _, b, _ = await joined_peer(client, room)
    peers.extend([a, b])
    cids = [uuid.uuid4().hex for _ in range(7)]
    for c in cids:
        await a.send(type="send", room=room, text="hi", cid=c)
    for c in cids[:5]:
        await b.expect("message", cid=c)
    assert (await a.expect("error", cid=cids[5]))["code"] == "rate_limited"
    await a.send(type="ping")
    await a.expect("pong")
    await a.send(type="nonsense")
    await a.expect("error", code="unknown_type")

    resp = await client.get("/metrics")
    found = samples(await resp.text())
    settings = client.app[keys.SETTINGS]
    assert value(found, "chat_instance_info", instance=settings.instance_id) == 1
    assert value(found, "chat_connections") == 2
    assert value(found, "chat_frames_in_total", type="auth") == 2
    assert value(found, "chat_frames_in_total", type="send") == 7
    assert value(found, "chat_frames_in_total", type="ping") == 1
    assert value(found, "chat_frames_in_total", type="invalid") == 1
    assert value(found, "chat_frames_out_total", type="message") == 10
    assert value(found, "chat_messages_produced_total") == 5
    assert value(found, "chat_messages_delivered_total") == 10
    assert value(found, "chat_rate_limited_total") == 2
    assert value(found, "chat_errors_total", code="rate_limited") == 2
    assert value(found, "chat_produce_ack_seconds_count") == 5
    assert 0 < value(found, "chat_produce_ack_seconds_sum") < 5 * 5
    assert value(found, "chat_consume_to_socket_seconds_count") == 5
    assert value(found, "chat_consumer_batch_size_count") >= 1
    assert value(found, "chat_consumer_batch_size_sum") >= 5
    assert found["chat_consumer_lag"] and all(v >= 0 for _, v in found["chat_consumer_lag"])
    for name in (
        "chat_dropped_clients_total",
        "chat_history_write_failures_total",
        "chat_history_backlog",
        "chat_bus_publish_failures_total",
    ):
        assert name in found and value(found, name) == 0, name
