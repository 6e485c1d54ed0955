"""Hostile clients and failing parts, against real broker and Redis processes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient

from chat import keys
from chat.settings import Secret, Settings
from tests.conftest import (
    TEST_SECRET,
    Peer,
    connect,
    eventually,
    joined_peer,
    new_cid,
    produce_orphan,
    register,
    send,
    unique,
)
from tests.rawws import RawWebSocket
from tests.services import Broker, RedisServer, run_broker, run_redis, start_app, stop

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
distributed_only = pytest.mark.parametrize("backend", ["distributed"])


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    """A broker this test alone may freeze."""
    with run_broker() as running:
        yield running


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis this test alone may freeze."""
    with run_redis() as running:
        if running.proc is None:
            pytest.fail("this test needs to start its own redis-server; unset REDIS_URL")
        yield running


# Clients


async def test_a_client_that_stops_reading_is_dropped(
    make_client: MakeClient, peers: list[Peer]
) -> None:
    client = await make_client(
        client_queue_size=16,
        heartbeat=600.0,
        send_rate=1e6,
        send_burst=10**6,
        frame_rate=1e6,
        frame_burst=10**6,
    )
    room = unique("slow")[:20]
    good_user, _, good, _ = await joined_peer(client, room)
    peers.append(good)
    stuck_user, token = await register(client)
    stuck = await RawWebSocket.open(client.port)
    await stuck.send(type="auth", token=token)
    await stuck.send(type="join", room=room, since=None)
    await good.expect("presence", room=room, users=sorted([good_user, stuck_user]))
    text = "x" * 1900
    hub = client.app[keys.HUB]
    sent = 0
    while len(hub.connections) > 1:
        burst = [new_cid() for _ in range(8)]  # within the good client's queue of 16
        for c in burst:
            await good.send(type="send", room=room, text=f"{sent} {text}", cid=c)
            sent += 1
        for c in burst:
            await good.expect("message", cid=c)
        assert sent < 20_000, "the stuck client was never dropped"
    assert client.app[keys.METRICS].dropped_clients._value.get() == 1
    assert await stuck.read_until_closed() in (1013, None)
    stuck.close()
    latest = await send(good, room, "still flowing")
    assert latest["text"] == "still flowing"


async def test_connections_per_user_are_capped(make_client: MakeClient, peers: list[Peer]) -> None:
    client = await make_client(max_connections_per_user=2)
    _, token = await register(client)
    peers.extend([await connect(client, token), await connect(client, token)])
    third = Peer(await client.ws_connect("/ws"))
    await third.send(type="auth", token=token)
    assert (await third.expect("error"))["code"] == "rate_limited"
    assert await third.closed() == 1008


async def test_the_send_rate_is_per_user_across_connections(
    make_client: MakeClient, peers: list[Peer]
) -> None:
    client = await make_client(send_rate=0.1, send_burst=2)
    room = unique("flood")[:20]
    _, token, first, _ = await joined_peer(client, room)
    second = await connect(client, token)
    await second.join(room)
    _, _, other, _ = await joined_peer(client, room)
    peers.extend([first, second, other])
    await send(first, room, "one")
    await send(second, room, "two")
    c = new_cid()
    await first.send(type="send", room=room, text="three", cid=c)
    assert (await first.expect("error", cid=c))["code"] == "rate_limited"
    assert (await send(other, room, "others unaffected"))["text"] == "others unaffected"


async def test_frames_of_any_kind_are_rate_limited(
    make_client: MakeClient, peers: list[Peer]
) -> None:
    client = await make_client(frame_rate=0.1, frame_burst=3)
    _, token = await register(client)
    peer = await connect(client, token)
    peers.append(peer)
    for _ in range(5):
        await peer.send(type="ping")
    kinds = [(await peer.recv())["type"] for _ in range(5)]
    assert kinds.count("pong") == 3
    assert kinds.count("error") == 2


async def test_cross_site_websockets_are_refused(make_client: MakeClient) -> None:
    client = await make_client(allowed_origins=("https://chat.example.com",))
    for origin in ("https://evil.example", "null", f"http://127.0.0.1:{client.port + 1}"):
        try:
            await client.ws_connect("/ws", headers={"Origin": origin})
        except WSServerHandshakeError as exc:
            assert exc.status == 403, origin
        else:
            raise AssertionError(f"{origin} was allowed")
    resp = await client.get("/ws", headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden_origin"
    for origin in (f"http://127.0.0.1:{client.port}", "https://chat.example.com"):
        ws = await client.ws_connect("/ws", headers={"Origin": origin})
        await ws.close()


# Kafka and Redis failing


@distributed_only
async def test_kafka_unreachable_then_back(
    make_client: MakeClient, own_broker: Broker, peers: list[Peer]
) -> None:
    client = await make_client(kafka_bootstrap_servers=own_broker.bootstrap, ack_timeout=1.0)
    room = unique("kafka")[:20]
    _, token, peer, _ = await joined_peer(client, room)
    peers.append(peer)
    acked = [await send(peer, room, "before")]
    own_broker.pause()
    try:
        c = new_cid()
        started = time.monotonic()
        await peer.send(type="send", room=room, text="during", cid=c)
        error = await peer.expect("error", cid=c)
        assert error["code"] == "unavailable"
        assert time.monotonic() - started < 3.0
        resp = await client.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["bus"].startswith("down") and body["history"] == "ok"
    finally:
        own_broker.resume()

    async def ready() -> bool:
        return (await client.get("/readyz")).status == 200

    await eventually(ready, what="readiness after the broker came back")
    acked.append(await send(peer, room, "after"))
    assert client.app[keys.BUS].live
    resp = await client.get(
        f"/api/rooms/{room}/messages", headers={"Authorization": f"Bearer {token}"}
    )
    stored = [m["id"] for m in (await resp.json())["messages"]]
    assert [a["id"] for a in acked] == [i for i in stored if i in {a["id"] for a in acked}]


@distributed_only
async def test_redis_unreachable_then_back(
    make_client: MakeClient, own_redis: RedisServer, peers: list[Peer]
) -> None:
    one = await make_client(redis_url=Secret(own_redis.url))
    two = await make_client(redis_url=Secret(own_redis.url))
    room = unique("redis")[:20]
    _, token, a, _ = await joined_peer(one, room)
    _, _, b, _ = await joined_peer(two, room)
    peers.extend([a, b])
    acked = [await send(a, room, "before")]
    await b.expect("message", cid=acked[0]["cid"])
    own_redis.pause()
    try:
        for i in range(3):
            message = await send(a, room, f"during {i}", timeout=15)
            assert (await b.expect("message", 15, cid=message["cid"]))["id"] == message["id"]
            acked.append(message)
        resp = await one.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["history"].startswith("down")
    finally:
        own_redis.resume()

    async def caught_up() -> bool:
        resp = await two.get(
            f"/api/rooms/{room}/messages", headers={"Authorization": f"Bearer {token}"}
        )
        if resp.status != 200:
            return False
        return [m["id"] for m in (await resp.json())["messages"]] == [m["id"] for m in acked]

    await eventually(caught_up, what="history holding every acknowledged message")
    assert (await one.get("/readyz")).status == 200


# Instances dying and stopping


def app_env(settings: Settings, **extra: str) -> dict[str, str]:
    assert settings.redis_url is not None
    return {
        "KAFKA_BOOTSTRAP_SERVERS": str(settings.kafka_bootstrap_servers),
        "KAFKA_TOPIC": settings.kafka_topic,
        "KAFKA_FETCH_WAIT_MS": "10",
        "REDIS_URL": settings.redis_url.reveal(),
        "REDIS_PREFIX": settings.redis_prefix,
        "SECRET_KEY": TEST_SECRET.reveal(),
        "SEND_RATE": "1000",
        "SEND_BURST": "1000",
        **extra,
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


async def remote_peer(session: aiohttp.ClientSession, url: str, token: str) -> Peer:
    peer = Peer(await session.ws_connect(f"{url}/ws"))
    await peer.send(type="auth", token=token)
    await peer.expect("ready")
    return peer


@distributed_only
async def test_a_killed_instance_loses_nothing_for_its_clients(
    make_client: MakeClient,
    make_settings: Callable[..., Settings],
    session: aiohttp.ClientSession,
    peers: list[Peer],
) -> None:
    doomed = await asyncio.to_thread(start_app, app_env(make_settings()))
    try:
        survivor = await make_client()
        room = unique("kill")[:20]
        _, _, writer, _ = await joined_peer(survivor, room)
        peers.append(writer)
        _, token = await register(survivor)
        victim = await remote_peer(session, doomed.url, token)
        await victim.join(room)
        seen = await send(writer, room, "seen by the victim")
        assert (await victim.expect("message", room=room))["id"] == seen["id"]
        await asyncio.to_thread(doomed.kill)
        await victim.closed()
        missed = [await send(writer, room, f"missed {i}") for i in range(3)]
        back = await connect(survivor, token)
        peers.append(back)
        joined = await back.join(room, seen["id"])
        assert [m["id"] for m in joined["messages"]] == [m["id"] for m in missed]
    finally:
        await asyncio.to_thread(doomed.kill)


@distributed_only
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_stop_signals_close_sockets_with_1001_and_exit_0(
    make_settings: Callable[..., Settings], session: aiohttp.ClientSession, sig: int
) -> None:
    instance = await asyncio.to_thread(start_app, app_env(make_settings()))
    try:
        async with session.post(
            f"{instance.url}/api/clients", json={"username": unique("s")[:24]}
        ) as resp:
            token = (await resp.json())["token"]
        peer = await remote_peer(session, instance.url, token)
        await peer.join("general")
        acked = await send(peer, "general", "last words")
        started = time.monotonic()
        instance.proc.send_signal(sig)
        assert await peer.closed() == 1001
        code = await asyncio.to_thread(instance.proc.wait, 10)
        assert code == 0, instance.log()
        assert time.monotonic() - started < 10
        assert "Traceback" not in instance.log()
    finally:
        await asyncio.to_thread(stop, instance.proc, signal.SIGKILL)
    restarted = await asyncio.to_thread(start_app, app_env(make_settings()))
    try:
        async with session.get(
            f"{restarted.url}/api/rooms/general/messages",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert acked["id"] in [m["id"] for m in (await resp.json())["messages"]]
    finally:
        await asyncio.to_thread(stop, restarted.proc)


async def test_bad_settings_exit_2_with_one_line() -> None:
    import subprocess
    import sys

    from tests.services import REPO

    for env in (
        {"PORT": "http"},
        {"REDIS_URL": "mysql://x"},
        {"SEND_RATE": "-1"},
        {"KAFKA_BOOTSTRAP_SERVERS": "nohost"},
        {"LOG_FORMAT": "xml"},
    ):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "app.py"],
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 2, env
        err = done.stderr.decode().strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert next(iter(env)) in err, err


def test_settings_json_logs(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from chat.logs import configure

    configure("INFO", "json", "inst-1")
    logging.getLogger("chat.test").info("hello %s", "world")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["msg"] == "hello world" and entry["instance"] == "inst-1"
    configure("INFO", "text", "inst-1")


async def test_reconnecting_does_not_reset_the_send_rate(
    make_client: MakeClient, peers: list[Peer]
) -> None:
    client = await make_client(send_rate=0.05, send_burst=2)
    room = unique("again")[:20]
    _, token, first, _ = await joined_peer(client, room)
    await send(first, room, "one")
    await send(first, room, "two")
    await first.close()
    back = await connect(client, token)
    peers.append(back)
    await back.join(room)
    c = new_cid()
    await back.send(type="send", room=room, text="three", cid=c)
    assert (await back.expect("error", cid=c))["code"] == "rate_limited"


@distributed_only
async def test_an_instance_started_while_redis_is_down_replays_history_when_it_returns(
    make_client: MakeClient,
    make_settings: Callable[..., Settings],
    own_redis: RedisServer,
    peers: list[Peer],
) -> None:
    redis_url = Secret(own_redis.url)
    first = await make_client(redis_url=redis_url)
    room = unique("late")[:20]
    user, token, peer, _ = await joined_peer(first, room)
    before = await send(peer, room, "before")
    await peer.close()
    await first.close()
    own_redis.pause()
    try:
        orphan = produce_orphan(make_settings(), room, user, "only Kafka has me")
        second = await make_client(redis_url=redis_url)
        resp = await second.get("/readyz")
        assert resp.status == 503
    finally:
        own_redis.resume()

    async def ready() -> bool:
        return (await second.get("/readyz")).status == 200

    await eventually(ready, what="readiness once Redis is back")

    async def replayed() -> bool:
        resp = await second.get(
            f"/api/rooms/{room}/messages", headers={"Authorization": f"Bearer {token}"}
        )
        ids = [m["id"] for m in (await resp.json())["messages"]]
        return ids == [before["id"], orphan.id]

    await eventually(replayed, what="the orphan message in history")


async def test_rooms_per_connection_are_capped(client: Client, peers: list[Peer]) -> None:
    from chat.ws import MAX_ROOMS_PER_CONNECTION

    _, token = await register(client)
    peer = await connect(client, token)
    peers.append(peer)
    for n in range(MAX_ROOMS_PER_CONNECTION):
        await peer.join(f"cap-{n}")
    await peer.send(type="join", room="one-too-many", since=None)
    assert (await peer.expect("error"))["code"] == "rate_limited"
    await peer.join("cap-0")  # a re-join is not a new room


async def test_the_embedded_bus_refuses_records_before_it_starts() -> None:
    from chat.bus import BusUnavailable
    from chat.bus.embedded import EmbeddedBus

    bus = EmbeddedBus()
    with pytest.raises(BusUnavailable):
        await bus.publish("general", b"{}")
    bus.signal("general", b"{}")  # ephemeral: dropped, not raised
    delivered: list[int] = []
    await bus.start(lambda batch: delivered.extend(r.offset for r in batch), {0: 41})
    await bus.publish("general", b"{}")
    await bus.close()
    assert delivered == [42]


@distributed_only
async def test_a_join_while_history_is_behind_is_refused_until_it_catches_up(
    make_client: MakeClient, own_redis: RedisServer, peers: list[Peer]
) -> None:
    client = await make_client(redis_url=Secret(own_redis.url))
    room = unique("behind")[:20]
    _, token, writer, _ = await joined_peer(client, room)
    peers.append(writer)
    own_redis.pause()
    try:
        await send(writer, room, "broadcast, not yet in history", timeout=15)
        late = await connect(client, token)
        peers.append(late)
        started = time.monotonic()
        await late.send(type="join", room=room, since=None)
        refused = await late.expect("error")
        assert refused["code"] == "unavailable" and "catching up" in refused["message"]
        assert time.monotonic() - started < 1.0  # refused before touching Redis
    finally:
        own_redis.resume()

    async def joined() -> bool:
        await late.send(type="join", room=room, since=None)
        frame = await late.recv()
        return frame["type"] == "joined"

    await eventually(joined, what="a join once history caught up")
