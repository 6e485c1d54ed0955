"""An instance killed with -9: its browser clients move to another instance by themselves.

Two `python app.py` instances, A and B, share a real Kafka-protocol broker and Redis.
A small TCP proxy stands in front of them the way Fly's proxy does: each new connection
goes to the current upstream; when a machine dies its connections are cut and new ones
go elsewhere. The victim's tab talks to A through the proxy; the writer's tab talks to
B directly. A is killed, the proxy is switched to B, and the victim must reconnect on
its own and show exactly what it missed, once, in the server's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, WebSocket, expect

from tests.services import AppProcess, start_app, stop

from .helpers import Watch, bubbles, expect_connected, message, send
from .server import TEST_SECRET, backend_env, free_port, register_client

pytestmark = pytest.mark.distributed

RECONNECT_TIMEOUT_MS = 30_000


class TcpProxy:
    """Forwards each new TCP connection to the current upstream port, byte for byte.

    When the upstream closes (or dies), the client side of that connection is closed
    too; a connection that cannot reach the upstream is closed at once.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tcp-proxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop
        ).result(10)

    def switch(self, upstream: int) -> None:
        """Send new connections to another port; open ones stay where they are."""
        self.upstream = upstream

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            if self._server is not None:
                await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            except OSError:
                return  # nobody there: the client sees its connection closed
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
        finally:
            self._writers.discard(writer)
            writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until either side ends, then close the other side so both ends see it."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.close()


@dataclass
class Cluster:
    a: AppProcess
    b: AppProcess
    proxy: TcpProxy


@pytest.fixture
def cluster(broker: Any, redis_server: Any) -> Iterator[Cluster]:
    """Instances A and B on one topic and key prefix of their own, A behind the proxy."""
    env = {
        **backend_env(broker.bootstrap, redis_server.url, "e2e-failover"),
        "SECRET_KEY": TEST_SECRET,
        "ALLOWED_ORIGINS": "",
        "PYTHONUNBUFFERED": "1",
    }
    # One after the other: the first creates the topic.
    a = start_app({**env, "INSTANCE_ID": "instance-a"})
    b = None
    proxy = None
    try:
        b = start_app({**env, "INSTANCE_ID": "instance-b"})
        proxy = TcpProxy(upstream=a.port)
        proxy.start()
        yield Cluster(a, b, proxy)
    finally:
        if proxy is not None:
            proxy.close()
        a.kill()
        if b is not None:
            stop(b.proc)
            assert "Traceback" not in b.log(), b.log()


@dataclass
class Sockets:
    """Every WebSocket a page opened, with the frames it received, in order."""

    received: list[list[dict[str, Any]]] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("websocket", self._opened)

    def _opened(self, ws: WebSocket) -> None:
        frames: list[dict[str, Any]] = []
        self.received.append(frames)
        ws.on("framereceived", lambda payload: frames.append(json.loads(payload)))

    def answered(self) -> list[list[dict[str, Any]]]:
        """The sockets the server answered (ready), oldest first."""
        return [frames for frames in self.received if frames and frames[0]["type"] == "ready"]


def open_chat_at(
    context: BrowserContext,
    base_url: str,
    client: dict[str, str],
    room: str,
    watch: Watch,
    sockets: Sockets | None = None,
) -> Page:
    """Store the client's token for this origin, then open its chat page there."""
    page = watch.attach(context.new_page())
    if sockets is not None:
        sockets.attach(page)
    page.goto(f"{base_url}/")
    page.evaluate("(c) => localStorage.setItem('chat.clients', JSON.stringify([c]))", client)
    page.goto(f"{base_url}/chat/{client['username']}?room={room}")
    return page


def message_ids(frames: list[dict[str, Any]]) -> list[str]:
    """Ids of messages a socket carried: inside `joined`, `history` and live, in order."""
    ids: list[str] = []
    for frame in frames:
        if frame["type"] in ("joined", "history"):
            ids += [m["id"] for m in frame["messages"]]
        elif frame["type"] == "message":
            ids.append(frame["id"])
    return ids


def test_killed_instance_clients_reconnect_elsewhere_and_recover_exactly_what_they_missed(
    cluster: Cluster, context: BrowserContext
) -> None:
    watch = Watch()
    room = "failover"
    tag = uuid.uuid4().hex[:6]
    victim_client = register_client(cluster.b.url, f"victim-{tag}")
    writer_client = register_client(cluster.b.url, f"writer-{tag}")

    sockets = Sockets()
    victim = open_chat_at(context, cluster.proxy.url, victim_client, room, watch, sockets)
    expect_connected(victim)
    writer = open_chat_at(context, cluster.b.url, writer_client, room, watch)
    expect_connected(writer)

    # Through the proxy the victim is on A; the writer is on B.
    assert [s[0]["instance"] for s in sockets.answered()] == ["instance-a"]

    before = ["hello from the victim", "hello from the writer", "both on one room"]
    send(victim, before[0])
    expect(message(writer, before[0])).to_have_count(1)
    send(writer, before[1])
    send(victim, before[2])
    for page in (victim, writer):
        expect(bubbles(page)).to_have_text(before)
        expect(page.locator("#messages .msg--pending")).to_have_count(0)

    # kill -9 A: its sockets are cut without a close frame. The proxy still points at
    # the dead machine for a moment, as Fly's does until its checks notice.
    cluster.a.kill()
    expect(victim.locator("#status")).to_have_attribute(
        "data-state", re.compile("reconnecting|offline")
    )
    expect(victim.locator("#banner")).to_be_visible()
    expect(victim.locator("#composer-input")).to_be_enabled()

    # While the victim is away, the writer carries on...
    missed = ["missed one", "missed two", "missed three"]
    for text in missed:
        send(writer, text)
        expect(message(writer, text)).to_have_class(re.compile(r"\bmsg--delivered\b"))
    # ...and the victim writes too: it waits, pending, in the tab.
    offline_text = "typed while disconnected"
    send(victim, offline_text)
    expect(message(victim, offline_text)).to_have_class(re.compile(r"\bmsg--pending\b"))
    for text in missed:
        expect(message(victim, text)).to_have_count(0)
    expect(victim.locator("#status")).not_to_have_attribute("data-state", "connected")

    # The platform routes new connections to the surviving machine.
    cluster.proxy.switch(cluster.b.port)
    expect_connected(victim, timeout=RECONNECT_TIMEOUT_MS)
    expect(victim.locator("#banner")).to_be_hidden()

    expected = [*before, *missed, offline_text]
    expect(message(victim, offline_text)).to_have_class(
        re.compile(r"\bmsg--delivered\b"), timeout=15_000
    )
    for page in (victim, writer):
        expect(bubbles(page)).to_have_text(expected)
        expect(page.locator("#messages .msg--pending, #messages .msg--failed")).to_have_count(0)

    # A later message is a barrier: once it is shown, any late duplicate would be too.
    send(writer, "after the failover")
    expected.append("after the failover")
    for page in (victim, writer):
        expect(bubbles(page)).to_have_text(expected)
        for text in expected:
            expect(message(page, text)).to_have_count(1)
    ids = victim.locator("#messages .msg").evaluate_all("els => els.map((e) => e.dataset.id)")
    assert ids == writer.locator("#messages .msg").evaluate_all(
        "els => els.map((e) => e.dataset.id)"
    )
    assert len(set(ids)) == len(ids) == len(expected)

    # On the wire: the new socket is B's, and its join carried exactly the gap; nothing
    # shown before the kill came again, and the offline message came once.
    answered = sockets.answered()
    assert [s[0]["instance"] for s in answered] == ["instance-a", "instance-b"]
    old, new = answered
    joined = [f for f in new if f["type"] == "joined"]
    assert len(joined) == 1 and joined[0]["reset"] is False
    assert [m["text"] for m in joined[0]["messages"]] == missed
    assert not set(message_ids(old)) & set(message_ids(new))
    assert message_ids(old) == ids[: len(before)]
    assert message_ids(new) == ids[len(before) :]
    watch.assert_clean(allow_websocket_errors=True)
