"""The wire contract, run against both backends: embedded, and Kafka + Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from chat import keys
from tests.conftest import Peer, connect, joined_peer, new_cid, register, send, unique

Client = TestClient[Any, Any]


async def test_register_returns_a_token(client: Client) -> None:
    resp = await client.post("/api/clients", json={"username": "alice.B-2_"})
    assert resp.status == 201
    body = await resp.json()
    assert body["username"] == "alice.B-2_"
    assert isinstance(body["token"], str) and body["token"]


async def test_usernames_are_unique_ignoring_case(client: Client) -> None:
    await register(client, "Carol")
    resp = await client.post("/api/clients", json={"username": "cAROL"})
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "username_taken"


async def test_lookalike_usernames_cannot_squat(client: Client) -> None:
    await register(client, "look")
    for lookalike in ("L00K", "lo0k"):
        resp = await client.post("/api/clients", json={"username": lookalike})
        assert resp.status == 409, lookalike


async def test_invalid_registrations_get_json_400(client: Client) -> None:
    for body in (
        {"username": ""},
        {"username": "x" * 25},
        {"username": "a b"},
        {"username": "émile"},
        {"name": "bob"},
        {"username": 5},
        [1],
    ):
        resp = await client.post("/api/clients", json=body)
        assert resp.status == 400, body
        assert (await resp.json())["error"]["code"] in ("invalid_username", "bad_request")
    resp = await client.post("/api/clients", data=b"not json")
    assert resp.status == 400


async def test_unknown_routes_and_methods_answer_json(client: Client) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await client.delete("/api/clients")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_pages_render_with_security_headers(client: Client) -> None:
    for path in ("/", "/chat/alice", "/chat/alice?room=dev-ops"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert "text/html" in resp.headers["Content-Type"]
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    resp = await client.get("/chat/alice?room=Bad Room")
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_room"


async def test_healthz_and_readyz(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"bus": "ok", "history": "ok"}


async def test_rest_history_needs_a_valid_token(client: Client) -> None:
    resp = await client.get("/api/rooms/general/messages")
    assert resp.status == 401
    _, token = await register(client)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    resp = await client.get(
        "/api/rooms/general/messages", headers={"Authorization": f"Bearer {forged}"}
    )
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_rest_history_pages_oldest_first(client: Client, peers: list[Peer]) -> None:
    room = unique("r")[:20]
    _, token, peer, _ = await joined_peer(client, room)
    peers.append(peer)
    sent = [await send(peer, room, f"m{i}") for i in range(5)]
    auth = {"Authorization": f"Bearer {token}"}
    resp = await client.get(f"/api/rooms/{room}/messages?limit=2", headers=auth)
    body = await resp.json()
    assert [m["id"] for m in body["messages"]] == [m["id"] for m in sent[3:]]
    assert body["has_more"] is True
    resp = await client.get(
        f"/api/rooms/{room}/messages?limit=100&before={sent[3]['id']}", headers=auth
    )
    body = await resp.json()
    assert [m["text"] for m in body["messages"]] == ["m0", "m1", "m2"]
    assert body["has_more"] is False
    for bad in ("0", "101", "x", "-1"):
        resp = await client.get(f"/api/rooms/{room}/messages?limit={bad}", headers=auth)
        assert resp.status == 400, bad
    resp = await client.get("/api/rooms/NO!/messages", headers=auth)
    assert resp.status == 400


async def test_metrics_are_prometheus_text(client: Client, peers: list[Peer]) -> None:
    _, _, peer, _ = await joined_peer(client)
    peers.append(peer)
    await send(peer, "general", "hello")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert "chat_connections 1.0" in text
    assert 'chat_frames_in_total{type="send"} 1.0' in text
    assert "chat_messages_produced_total 1.0" in text


# WebSocket: authentication


async def test_ready_names_user_and_instance(client: Client, peers: list[Peer]) -> None:
    username, token = await register(client)
    peer = Peer(await client.ws_connect("/ws"))
    peers.append(peer)
    await peer.send(type="auth", token=token)
    ready = await peer.expect("ready")
    assert ready == {
        "type": "ready",
        "user": username,
        "instance": client.app[keys.SETTINGS].instance_id,
    }


async def test_no_auth_within_deadline_closes_4401(make_client: Any) -> None:
    client = await make_client(auth_timeout=0.3)
    peer = Peer(await client.ws_connect("/ws"))
    assert await peer.closed() == 4401


async def test_forged_token_closes_4401(client: Client) -> None:
    _, token = await register(client)
    for frame in (
        {"type": "auth", "token": token + "x"},
        {"type": "auth", "token": "bob.sig"},
        {"type": "join", "room": "general"},
        {"type": "auth"},
    ):
        peer = Peer(await client.ws_connect("/ws"))
        await peer.send(**frame)
        error = await peer.expect("error")
        assert error["code"] == "unauthorized"
        assert await peer.closed() == 4401


async def test_no_impersonation_the_token_names_the_sender(
    client: Client, peers: list[Peer]
) -> None:
    alice, _, peer, _ = await joined_peer(client)
    peers.append(peer)
    c = new_cid()
    await peer.send(type="send", room="general", text="hi", cid=c, user="mallory")
    message = await peer.expect("message", cid=c)
    assert message["user"] == alice


# WebSocket: frames and errors


async def test_ping_pong(client: Client, peers: list[Peer]) -> None:
    _, token = await register(client)
    peer = await connect(client, token)
    peers.append(peer)
    await peer.send(type="ping")
    await peer.expect("pong")


async def test_bad_frames_get_errors_and_the_connection_stays(
    client: Client, peers: list[Peer]
) -> None:
    _, token = await register(client)
    peer = await connect(client, token)
    peers.append(peer)
    cases: list[tuple[str | bytes, str]] = [
        ("not json", "bad_frame"),
        ("[1, 2]", "bad_frame"),
        ('{"no": "type"}', "bad_frame"),
        ('{"type": 7}', "bad_frame"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "send", "room": "general"}', "bad_frame"),
        ('{"type": "send", "room": "general", "text": "x", "cid": ""}', "bad_frame"),
        (
            json.dumps({"type": "send", "room": "general", "text": "x", "cid": "c" * 65}),
            "bad_frame",
        ),
        ('{"type": "history", "room": "general", "limit": 0}', "bad_frame"),
        ('{"type": "history", "room": "general", "limit": 101}', "bad_frame"),
        ('{"type": "join", "room": "Not A Room"}', "invalid_room"),
        ('{"type": "join", "room": ""}', "invalid_room"),
        ('{"type": "join", "room": "' + "a" * 33 + '"}', "invalid_room"),
        ('{"type": "send", "room": "general", "text": "x", "cid": "c1"}', "not_joined"),
        ('{"type": "leave", "room": "general"}', "not_joined"),
        ('{"type": "typing", "room": "general"}', "not_joined"),
        ('{"type": "auth", "token": "again"}', "bad_frame"),
    ]
    for raw, code in cases:
        await peer.ws.send_str(raw) if isinstance(raw, str) else await peer.ws.send_bytes(raw)
        error = await peer.expect("error")
        assert error["code"] == code, raw
        assert isinstance(error["message"], str) and error["message"]
    await peer.ws.send_bytes(b'{"type": "ping"}')
    assert (await peer.expect("error"))["code"] == "bad_frame"
    await peer.send(type="ping")
    await peer.expect("pong")


async def test_send_errors_carry_the_cid(client: Client, peers: list[Peer]) -> None:
    _, _, peer, _ = await joined_peer(client)
    peers.append(peer)
    for text, code in (("   \n ", "empty_text"), ("x" * 2001, "text_too_long")):
        c = new_cid()
        await peer.send(type="send", room="general", text=text, cid=c)
        error = await peer.expect("error", cid=c)
        assert error["code"] == code
    ok = await send(peer, "general", "  " + "y" * 2000 + "  ")
    assert ok["text"] == "y" * 2000


async def test_sending_too_fast_is_rate_limited(make_client: Any, peers: list[Peer]) -> None:
    client = await make_client(send_rate=0.5, send_burst=3)
    _, _, peer, _ = await joined_peer(client)
    peers.append(peer)
    cids = [new_cid() for _ in range(5)]
    for c in cids:
        await peer.send(type="send", room="general", text="spam", cid=c)
    for c in cids[:3]:
        await peer.expect("message", cid=c)
    for c in cids[3:]:
        assert (await peer.expect("error", cid=c))["code"] == "rate_limited"


async def test_frame_over_16_kib_closes_1009(client: Client) -> None:
    _, token = await register(client)
    peer = await connect(client, token)
    await peer.ws.send_str(json.dumps({"type": "ping", "pad": "x" * 17000}))
    assert await peer.closed() == 1009


async def test_unavailable_bus_refuses_with_the_cid(client: Client, peers: list[Peer]) -> None:
    _, _, peer, _ = await joined_peer(client)
    peers.append(peer)
    await client.app[keys.BUS].close()
    c = new_cid()
    await peer.send(type="send", room="general", text="into the void", cid=c)
    error = await peer.expect("error", cid=c)
    assert error["code"] == "unavailable"


# Guarantees on one instance


async def test_ack_is_own_message_after_the_bus_stored_it(
    client: Client, peers: list[Peer]
) -> None:
    user, token, peer, _ = await joined_peer(client)
    peers.append(peer)
    message = await send(peer, "general", "hello <b>world</b>")
    assert message["user"] == user
    assert message["text"] == "hello <b>world</b>"
    assert isinstance(message["id"], str) and isinstance(message["ts"], int)
    resp = await client.get(
        "/api/rooms/general/messages", headers={"Authorization": f"Bearer {token}"}
    )
    assert [m["id"] for m in (await resp.json())["messages"]] == [message["id"]]


async def test_resending_a_cid_never_makes_a_second_message(
    client: Client, peers: list[Peer]
) -> None:
    _, token, peer, _ = await joined_peer(client)
    peers.append(peer)
    c = new_cid()
    await peer.send(type="send", room="general", text="once", cid=c)
    first = await peer.expect("message", cid=c)
    await peer.close()
    retry = await connect(client, token)
    peers.append(retry)
    assert (await retry.join("general", first["id"]))["messages"] == []
    await retry.send(type="send", room="general", text="once", cid=c)
    again = await retry.expect("message", cid=c)
    assert again == first
    await send(retry, "general", "after")
    resp = await client.get(
        "/api/rooms/general/messages", headers={"Authorization": f"Bearer {token}"}
    )
    assert [m["text"] for m in (await resp.json())["messages"]] == ["once", "after"]


async def test_resend_while_the_first_is_in_flight_yields_one_message(
    client: Client, peers: list[Peer]
) -> None:
    _, token, peer, _ = await joined_peer(client)
    peers.append(peer)
    c = new_cid()
    for _ in range(3):
        await peer.send(type="send", room="general", text="dup", cid=c)
    first = await peer.expect("message", cid=c)
    marker = await send(peer, "general", "marker")
    resp = await client.get(
        "/api/rooms/general/messages", headers={"Authorization": f"Bearer {token}"}
    )
    ids = [m["id"] for m in (await resp.json())["messages"]]
    assert ids == [first["id"], marker["id"]]
    extra = [f for f in peer._pending if f["type"] == "message" and f.get("cid") == c]
    assert all(f == first for f in extra)


async def test_one_order_for_every_client_and_history(client: Client, peers: list[Peer]) -> None:
    room = unique("o")[:20]
    members = [await joined_peer(client, room) for _ in range(3)]
    peers.extend(p for _, _, p, _ in members)
    per_sender = 10
    await asyncio.gather(
        *(
            p.send(type="send", room=room, text=f"{n}-{i}", cid=new_cid())
            for n, (_, _, p, _) in enumerate(members)
            for i in range(per_sender)
        )
    )
    total = per_sender * len(members)
    orders = [[m["id"] for m in await p.messages(room, total)] for _, _, p, _ in members]
    assert orders[0] == orders[1] == orders[2]
    assert len(set(orders[0])) == total
    token = members[0][1]
    resp = await client.get(
        f"/api/rooms/{room}/messages?limit=100", headers={"Authorization": f"Bearer {token}"}
    )
    assert [m["id"] for m in (await resp.json())["messages"]] == orders[0]
    joined = await members[0][2].join(room)
    assert [m["id"] for m in joined["messages"]] == orders[0]
    await members[0][2].send(type="history", room=room, before=orders[0][-1], limit=100)
    history = await members[0][2].expect("history", room=room)
    assert [m["id"] for m in history["messages"]] == orders[0][:-1]


async def test_join_shows_the_latest_50(client: Client, peers: list[Peer]) -> None:
    room = unique("h")[:20]
    _, _, writer, _ = await joined_peer(client, room)
    peers.append(writer)
    sent = [await send(writer, room, f"m{i}") for i in range(55)]
    _, _, reader, joined = await joined_peer(client, room)
    peers.append(reader)
    assert [m["id"] for m in joined["messages"]] == [m["id"] for m in sent[5:]]
    assert joined["has_more"] is True
    assert joined["reset"] is False
    await reader.send(type="history", room=room, before=sent[5]["id"], limit=3)
    page = await reader.expect("history", room=room)
    assert [m["text"] for m in page["messages"]] == ["m2", "m3", "m4"]
    assert page["has_more"] is True


async def test_join_with_since_recovers_exactly_the_gap(client: Client, peers: list[Peer]) -> None:
    room = unique("g")[:20]
    _, _, writer, _ = await joined_peer(client, room)
    _, token, reader, _ = await joined_peer(client, room)
    peers.extend([writer])
    seen = await send(writer, room, "before")
    assert (await reader.expect("message", room=room))["id"] == seen["id"]
    await reader.close()
    missed = [await send(writer, room, f"missed {i}") for i in range(4)]
    back = await connect(client, token)
    peers.append(back)
    joined = await back.join(room, seen["id"])
    assert [m["id"] for m in joined["messages"]] == [m["id"] for m in missed]
    assert joined["reset"] is False
    live = await send(writer, room, "live")
    assert (await back.expect("message", room=room))["id"] == live["id"]


async def test_join_with_unknown_since_resets(client: Client, peers: list[Peer]) -> None:
    room = unique("u")[:20]
    _, _, writer, _ = await joined_peer(client, room)
    peers.append(writer)
    latest = await send(writer, room, "x")
    _, token = await register(client)
    peer = await connect(client, token)
    peers.append(peer)
    joined = await peer.join(room, "no-such-id")
    assert joined["reset"] is True
    assert [m["id"] for m in joined["messages"]] == [latest["id"]]


async def test_messages_during_a_join_are_neither_lost_nor_doubled(
    client: Client, peers: list[Peer]
) -> None:
    room = unique("j")[:20]
    _, _, writer, _ = await joined_peer(client, room)
    peers.append(writer)
    cids = [new_cid() for _ in range(40)]

    async def write() -> None:
        for c in cids:
            await writer.send(type="send", room=room, text=c, cid=c)
            await asyncio.sleep(0)

    _, token = await register(client)
    reader = await connect(client, token)
    peers.append(reader)
    writing = asyncio.create_task(write())
    joined = await reader.join(room)
    await writing
    await writer.messages(room, len(cids))
    got = [m["cid"] for m in joined["messages"]]
    while len(got) < len(cids):
        got.append((await reader.expect("message", room=room))["cid"])
    assert got == cids


async def test_typing_reaches_others_not_the_sender(client: Client, peers: list[Peer]) -> None:
    room = unique("t")[:20]
    alice, _, a, _ = await joined_peer(client, room)
    _, _, b, _ = await joined_peer(client, room)
    peers.extend([a, b])
    await a.send(type="typing", room=room)
    notice = await b.expect("typing", room=room)
    assert notice == {"type": "typing", "room": room, "user": alice}
    await a.send(type="ping")
    await a.expect("pong")
    assert not [f for f in a.seen if f["type"] == "typing"]


async def test_presence_follows_joins_and_leaves(client: Client, peers: list[Peer]) -> None:
    room = unique("p")[:20]
    alice, _, a, joined = await joined_peer(client, room)
    peers.append(a)
    assert joined["users"] == [alice]
    bob, _, b, joined_b = await joined_peer(client, room)
    assert joined_b["users"] == sorted([alice, bob])
    await a.expect("presence", room=room, users=sorted([alice, bob]))
    await b.send(type="leave", room=room)
    await a.expect("presence", room=room, users=[alice])
    await b.close()


async def test_a_bad_client_does_not_disturb_others(client: Client, peers: list[Peer]) -> None:
    room = unique("i")[:20]
    _, _, good, _ = await joined_peer(client, room)
    _, _, bad, _ = await joined_peer(client, room)
    peers.extend([good, bad])
    for junk in ("{", "null", '{"type":"send","room":"x"}', "\x00" * 100):
        await bad.ws.send_str(junk)
    sent = await send(good, room, "still here")
    assert (await bad.expect("message", room=room))["id"] == sent["id"]
    huge = Peer(await client.ws_connect("/ws"))
    await huge.ws.send_str("x" * 20000)
    assert await huge.closed() == 1009
    assert (await send(good, room, "and here"))["text"] == "and here"


async def test_binary_and_close_frames_are_handled(client: Client) -> None:
    _, token = await register(client)
    peer = await connect(client, token)
    await peer.ws.send_bytes(b"\x00\x01")
    assert (await peer.expect("error"))["code"] == "bad_frame"
    await peer.ws.close()
    assert peer.ws.closed
    msg = await peer.ws.receive()
    assert msg.type is WSMsgType.CLOSED
