"""Several instances on one Kafka and one Redis behave as one chat server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from chat.bus import Deliver, Record
from chat.bus.kafka import KafkaBus
from chat.metrics import Metrics
from chat.settings import Settings
from tests.conftest import (
    TEST_SECRET,
    Peer,
    connect,
    joined_peer,
    new_cid,
    produce_orphan,
    register,
    send,
    unique,
)
from tests.services import start_app

pytestmark = [pytest.mark.distributed, pytest.mark.parametrize("backend", ["distributed"])]

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


async def history_ids(client: Client, token: str, room: str) -> list[str]:
    resp = await client.get(
        f"/api/rooms/{room}/messages?limit=100", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 200
    return [m["id"] for m in (await resp.json())["messages"]]


async def test_a_message_sent_on_one_instance_reaches_the_others(
    make_client: MakeClient, peers: list[Peer]
) -> None:
    one, two = await make_client(), await make_client()
    room = unique("x")[:20]
    alice, _, a, _ = await joined_peer(one, room)
    bob, _, b, _ = await joined_peer(two, room)
    peers.extend([a, b])
    c = new_cid()
    await a.send(type="send", room=room, text="across", cid=c)
    mine = await a.expect("message", cid=c)
    theirs = await b.expect("message", cid=c)
    assert mine == theirs
    await b.send(type="typing", room=room)
    assert (await a.expect("typing", room=room))["user"] == bob
    await a.expect("presence", room=room, users=sorted([alice, bob]))


async def test_concurrent_senders_on_three_instances_see_one_order(
    make_client: MakeClient, peers: list[Peer]
) -> None:
    instances = [await make_client() for _ in range(3)]
    room = unique("o")[:20]
    members = [await joined_peer(inst, room) for inst in instances for _ in range(2)]
    peers.extend(p for _, _, p, _ in members)
    per_sender = 15
    await asyncio.gather(
        *(
            p.send(type="send", room=room, text=f"{n}:{i}", cid=new_cid())
            for n, (_, _, p, _) in enumerate(members)
            for i in range(per_sender)
        )
    )
    total = per_sender * len(members)
    orders = [[m["id"] for m in await p.messages(room, total)] for _, _, p, _ in members]
    assert all(order == orders[0] for order in orders)
    assert len(set(orders[0])) == total
    for inst in instances:
        assert await history_ids(inst, members[0][1], room) == orders[0][-100:]


async def test_the_same_cid_on_another_instance_is_one_message(
    make_client: MakeClient, peers: list[Peer]
) -> None:
    one, two = await make_client(), await make_client()
    room = unique("d")[:20]
    _, token, a, _ = await joined_peer(one, room)
    peers.append(a)
    c = new_cid()
    await a.send(type="send", room=room, text="only once", cid=c)
    first = await a.expect("message", cid=c)
    again = await connect(two, token)
    peers.append(again)
    await again.join(room, first["id"])
    await again.send(type="send", room=room, text="only once", cid=c)
    assert await again.expect("message", cid=c) == first
    marker = await send(again, room, "marker")
    assert await history_ids(one, token, room) == [first["id"], marker["id"]]


async def test_reconnecting_to_another_instance_recovers_exactly_the_gap(
    make_client: MakeClient, peers: list[Peer]
) -> None:
    one, two = await make_client(), await make_client()
    room = unique("g")[:20]
    _, _, writer, _ = await joined_peer(one, room)
    _, token, reader, _ = await joined_peer(one, room)
    peers.append(writer)
    last = await send(writer, room, "seen")
    assert (await reader.expect("message", room=room))["id"] == last["id"]
    await reader.close()
    missed = [await send(writer, room, f"missed {i}") for i in range(5)]
    back = await connect(two, token)
    peers.append(back)
    joined = await back.join(room, last["id"])
    assert [m["id"] for m in joined["messages"]] == [m["id"] for m in missed]
    assert joined["reset"] is False
    live = await send(writer, room, "live")
    assert (await back.expect("message", room=room))["id"] == live["id"]
    assert not [f for f in back._pending if f["type"] == "message"]


async def test_history_survives_restarting_every_instance(
    make_client: MakeClient, peers: list[Peer]
) -> None:
    first = [await make_client(), await make_client()]
    room = unique("s")[:20]
    _, token, peer, _ = await joined_peer(first[0], room)
    sent = [await send(peer, room, f"m{i}") for i in range(3)]
    await peer.close()
    for client in first:
        await client.close()
    restarted = await make_client()
    assert await history_ids(restarted, token, room) == [m["id"] for m in sent]
    again = await connect(restarted, token)
    peers.append(again)
    joined = await again.join(room, sent[0]["id"])
    assert [m["id"] for m in joined["messages"]] == [m["id"] for m in sent[1:]]


async def test_a_message_kafka_took_but_history_never_saw_is_recovered(
    make_client: MakeClient, make_settings: Callable[..., Settings], peers: list[Peer]
) -> None:
    """An instance died after the broker took a message and before Redis had it."""
    settings = make_settings()
    first = await make_client()
    room = unique("k")[:20]
    user, token, peer, _ = await joined_peer(first, room)
    before = await send(peer, room, "before the crash")
    await peer.close()
    await first.close()
    orphan = produce_orphan(settings, room, user, "acknowledged, then the instance died")
    second = await make_client()
    watcher = await connect(second, token)
    peers.append(watcher)
    joined = await watcher.join(room, before["id"])
    if not joined["messages"]:
        await watcher.expect("message", room=room, id=orphan.id)
    else:
        assert [m["id"] for m in joined["messages"]] == [orphan.id]
    assert await history_ids(second, token, room) == [before["id"], orphan.id]


async def test_presence_heals_after_an_instance_is_killed(
    make_client: MakeClient, make_settings: Callable[..., Settings], peers: list[Peer]
) -> None:
    settings = make_settings()
    assert settings.redis_url is not None
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": str(settings.kafka_bootstrap_servers),
        "KAFKA_TOPIC": settings.kafka_topic,
        "KAFKA_FETCH_WAIT_MS": "10",
        "REDIS_URL": settings.redis_url.reveal(),
        "REDIS_PREFIX": settings.redis_prefix,
        "SECRET_KEY": TEST_SECRET.reveal(),
        "PRESENCE_TTL": "3",
    }
    doomed = await asyncio.to_thread(start_app, env)
    survivor = await make_client()
    room = unique("p")[:20]
    alice, _, a, _ = await joined_peer(survivor, room)
    peers.append(a)
    bob, bob_token = await register(survivor)
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{doomed.url}/ws")
            await ws.send_str(json.dumps({"type": "auth", "token": bob_token}))
            await ws.send_str(json.dumps({"type": "join", "room": room, "since": None}))
            await a.expect("presence", room=room, users=sorted([alice, bob]))
            await asyncio.to_thread(doomed.kill)
            started = time.monotonic()
            await a.expect("presence", timeout=30, room=room, users=[alice])
            assert time.monotonic() - started < 30
    finally:
        await asyncio.to_thread(doomed.kill)


async def test_a_new_topic_on_the_same_redis_is_a_new_history(
    make_client: MakeClient, peers: list[Peer]
) -> None:
    """Offsets order a room only within one topic: history and positions are per topic."""
    old = await make_client()
    room = unique("t")[:20]
    _, _, peer, _ = await joined_peer(old, room)
    for i in range(5):
        await send(peer, room, f"old topic {i}")
    await peer.close()
    await old.close()
    fresh = await make_client(kafka_topic=unique("chat-test"))
    _, _, again, joined = await joined_peer(fresh, room)
    peers.append(again)
    assert joined["messages"] == []
    assert (await send(again, room, "new topic"))["text"] == "new topic"


class GatedKafkaBus(KafkaBus):
    """The real Kafka bus, with its deliveries held back on demand: a lagging consumer."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        self.held: list[Sequence[Record]] | None = None
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver, resume: Mapping[int, int]) -> None:
        self._deliver = deliver
        await super().start(self._gate, resume)

    def _gate(self, batch: Sequence[Record]) -> None:
        if self.held is not None:
            self.held.append(batch)
        elif self._deliver is not None:
            self._deliver(batch)

    def release(self) -> None:
        held, self.held = self.held or [], None
        for batch in held:
            self._gate(batch)


async def test_a_lagging_instance_does_not_repeat_what_a_join_already_showed(
    make_client: MakeClient, make_settings: Callable[..., Settings], peers: list[Peer]
) -> None:
    one = await make_client()
    settings = make_settings()
    gated = GatedKafkaBus(settings, Metrics())
    two = await make_client(bus=gated)
    room = unique("lag")[:20]
    _, _, writer, _ = await joined_peer(one, room)
    peers.append(writer)
    gated.held = []
    shown = [await send(writer, room, f"written by one {i}") for i in range(3)]
    _, token = await register(two)
    reader = await connect(two, token)
    peers.append(reader)
    joined = await reader.join(room)
    assert [m["id"] for m in joined["messages"]] == [m["id"] for m in shown]
    gated.release()
    fresh = await send(writer, room, "new")
    assert (await reader.expect("message", room=room))["id"] == fresh["id"]
