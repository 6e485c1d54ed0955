"""Property-based fuzzing: no input makes the decoder or the handler misbehave."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat import keys, protocol
from tests.conftest import Peer, connect, eventually, register

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(["room", "text", "cid", "since", "before", "limit", "token", "x"])
frames = st.fixed_dictionaries(
    {"type": st.sampled_from([*sorted(protocol.CLIENT_TYPES), "nope", ""]) | json_scalars},
    optional={name: json_values for name in ["room", "text", "cid", "since", "before", "limit"]},
).map(lambda d: {k: v for k, v in d.items() if k != "type" or v is not None}) | st.dictionaries(
    field_names, json_values, max_size=5
)


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_decoding_any_bytes_yields_a_frame_or_a_frame_error(data: bytes | str) -> None:
    try:
        frame = protocol.decode_client_frame(data)
    except protocol.FrameError as exc:
        assert exc.code in ("bad_frame", "unknown_type")
    else:
        assert isinstance(frame, protocol.Frame)


@given(frames)
def test_decoding_any_json_object_yields_a_frame_or_a_frame_error(obj: dict[str, Any]) -> None:
    try:
        protocol.decode_client_frame(json.dumps(obj))
    except protocol.FrameError as exc:
        expected = "unknown_type" if isinstance(obj.get("type"), str) else "bad_frame"
        if exc.code != expected:
            assert exc.code == "bad_frame" and obj.get("type") in protocol.CLIENT_TYPES


async def test_the_handler_answers_every_frame_and_survives(client: TestClient[Any, Any]) -> None:
    _, token = await register(client)
    peer = await connect(client, token)
    await peer.join("general")

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(frame=frames)
    def check(frame: dict[str, Any]) -> None:
        # Hypothesis drives sync functions: draw the examples here, replay them below.
        examples.append(frame)

    examples: list[dict[str, Any]] = []
    check()
    for frame in examples:
        await peer.ws.send_str(json.dumps(frame))
        await peer.send(type="ping")
        await answered(peer, frame)
    assert not peer.ws.closed
    await peer.send(type="send", room="general", text="still alive", cid="alive")
    await peer.expect("message", cid="alive")
    await peer.close()
    hub = client.app[keys.HUB]

    async def cleaned_up() -> bool:
        return not hub.connections and not connection_tasks()

    await eventually(cleaned_up, what="no connection, writer or ack task left behind")


def connection_tasks() -> list[asyncio.Task[Any]]:
    """Tasks that belong to a connection: its writer, pending acks, presence updates."""
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_coro().__qualname__.startswith(("Connection.", "Session."))  # type: ignore[union-attr]
    ]


async def answered(peer: Peer, frame: dict[str, Any]) -> None:
    """Every frame is followed by a pong; anything before it is a valid server frame."""
    while True:
        reply = await peer.recv(timeout=10)
        assert reply["type"] in {
            "pong",
            "error",
            "joined",
            "history",
            "message",
            "presence",
            "typing",
        }, (frame, reply)
        if reply["type"] == "pong":
            return
