"""Fixtures: the app on either backend, real services, and a small WebSocket client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient
from confluent_kafka import Producer

from chat import create_app, protocol
from chat.bus import Bus
from chat.settings import Secret, Settings
from tests.services import Broker, RedisServer, run_broker, run_redis

TEST_SECRET = Secret("test-secret-key-test-secret-key")


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """One Tansu broker per test session (per xdist worker); tests use unique topics."""
    with run_broker() as running:
        yield running


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server per test session; tests use unique key prefixes."""
    with run_redis() as running:
        yield running


def unique(name: str) -> str:
    """A name no other test uses."""
    return f"{name}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["embedded", "distributed"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run a contract test against both backends."""
    return str(request.param)


@pytest.fixture
def make_settings(backend: str, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings for this backend; each call in one test shares topic and prefix (one cluster)."""
    topic, prefix = unique("chat-test"), unique("chat-test") + ":"
    distributed: dict[str, Any] = {}
    if backend == "distributed":
        broker = request.getfixturevalue("broker")
        redis = request.getfixturevalue("redis_server")
        distributed = {
            "kafka_bootstrap_servers": broker.bootstrap,
            "kafka_topic": topic,
            "kafka_partitions": 4,
            "kafka_fetch_wait_ms": 10,
            "redis_url": Secret(redis.url),
            "redis_prefix": prefix,
        }

    def build(**overrides: Any) -> Settings:
        base = Settings(
            secret_key=TEST_SECRET,
            secret_key_generated=False,
            instance_id=unique("test"),
            presence_ttl=3.0,
            send_rate=1000.0,
            send_burst=1000,
            frame_rate=1000.0,
            frame_burst=1000,
            **distributed,
        )
        return dataclasses.replace(base, **overrides)

    return build


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
    make_settings: Callable[..., Settings],
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    """Start an app instance (several share one cluster on the distributed backend)."""

    async def start(*, bus: Bus | None = None, **overrides: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(make_settings(**overrides), bus=bus))

    return start


@pytest.fixture
async def client(
    make_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> TestClient[Any, Any]:
    """One app instance on the backend under test."""
    return await make_client()


class Peer:
    """A test's WebSocket client: send frames, await frames by type."""

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []

    async def send(self, **frame: Any) -> None:
        """Send one JSON frame."""
        await self.ws.send_str(json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame, whatever its type."""
        if self._pending:
            return self._pending.pop(0)
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is not WSMsgType.TEXT:
            raise AssertionError(
                f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}"
            )
        frame: dict[str, Any] = json.loads(msg.data)
        self.seen.append(frame)
        return frame

    async def join(self, room: str, since: str | None = None) -> dict[str, Any]:
        """Join a room and return the `joined` answer."""
        await self.send(type="join", room=room, since=since)
        return await self.expect("joined", room=room)

    async def expect(self, type_: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Wait for a frame of a type (and field values), keeping others for later."""
        skipped: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    frame = await self.recv(timeout)
                    if frame["type"] == type_ and all(frame.get(k) == v for k, v in fields.items()):
                        return frame
                    skipped.append(frame)
        finally:
            self._pending[:0] = skipped

    async def messages(self, room: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next `count` message frames of a room, in arrival order."""
        return [await self.expect("message", timeout, room=room) for _ in range(count)]

    async def closed(self, timeout: float = 10.0) -> int | None:
        """Wait for the server to close; return the close code."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                    return self.ws.close_code
                if msg.type is WSMsgType.ERROR:
                    return self.ws.close_code

    async def close(self) -> None:
        """Close from the client side."""
        await self.ws.close()


def produce_orphan(settings: Settings, room: str, user: str, text: str) -> protocol.Message:
    """Put a message on the bus as a dead instance would have: acknowledged, not in history."""
    orphan = protocol.Message(
        room=room,
        id=protocol.message_id(room, user, "orphan"),
        user=user,
        text=text,
        ts=int(time.time() * 1000),
        cid="orphan",
    )
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "acks": "all"})
    producer.produce(settings.kafka_topic, value=protocol.encode(orphan), key=room.encode())
    assert producer.flush(10) == 0
    return orphan


def new_cid() -> str:
    """A client id for one message."""
    return uuid.uuid4().hex


async def send(peer: Peer, room: str, text: str, timeout: float = 10.0) -> dict[str, Any]:
    """Send and wait for the sender's own message: its acknowledgement."""
    c = new_cid()
    await peer.send(type="send", room=room, text=text, cid=c)
    return await peer.expect("message", timeout, cid=c)


async def register(client: TestClient[Any, Any], username: str | None = None) -> tuple[str, str]:
    """Create a client; return (username, token)."""
    username = username or unique("u")[:24]
    resp = await client.post("/api/clients", json={"username": username})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return body["username"], body["token"]


async def connect(client: TestClient[Any, Any], token: str, **headers: str) -> Peer:
    """Open /ws and authenticate; waits for ready."""
    peer = Peer(await client.ws_connect("/ws", headers=headers or None))
    await peer.send(type="auth", token=token)
    ready = await peer.expect("ready")
    assert ready["user"]
    return peer


async def joined_peer(
    client: TestClient[Any, Any], room: str = "general", username: str | None = None
) -> tuple[str, str, Peer, dict[str, Any]]:
    """Register, connect and join a room; return (username, token, peer, joined frame)."""
    username, token = await register(client, username)
    peer = await connect(client, token)
    joined = await peer.join(room)
    return username, token, peer, joined


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Wait for a condition that has no event of its own (an HTTP status, a backlog)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def peers() -> AsyncIterator[list[Peer]]:
    """A list tests append their peers to, so they are closed at the end."""
    opened: list[Peer] = []
    yield opened
    for peer in opened:
        await peer.close()
