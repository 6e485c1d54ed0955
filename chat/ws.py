"""The WebSocket handler: the only code that reads a client socket."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from chat import keys, protocol
from chat.connection import Connection
from chat.errors import Unavailable, json_error
from chat.history import Page

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
STORE_TIMEOUT_S = 3.0
LEAVE_TIMEOUT_S = 30.0
MAX_ROOMS_PER_CONNECTION = 50
T = TypeVar("T")
TYPING_INTERVAL_S = 1.5


def origin_allowed(request: web.Request) -> bool:
    """Browsers send Origin: accept our own host and the configured allow-list only."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser; such clients still need a token
    allowed = request.app[keys.SETTINGS].allowed_origins
    if origin.rstrip("/") in allowed:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """Authenticate, then read frames until the client goes away."""
    if not origin_allowed(request):
        return json_error(403, "forbidden_origin", "this Origin may not open a chat socket")
    app = request.app
    settings = app[keys.SETTINGS]
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat,
        max_msg_size=protocol.MAX_FRAME_BYTES + 1,  # aiohttp refuses frames >= the limit
        # Deflate would compress every broadcast once per recipient; see docs/benchmarks.md.
        compress=False,
    )
    await ws.prepare(request)

    user = await _authenticate(ws, app, settings.auth_timeout)
    if user is None:
        return ws
    hub = app[keys.HUB]
    if hub.connection_count(user) >= settings.max_connections_per_user:
        await ws.send_frame(
            protocol.error("rate_limited", "too many connections for this user"), WSMsgType.TEXT
        )
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many connections")
        return ws

    metrics = app[keys.METRICS]
    conn = Connection(
        ws, user, settings.client_queue_size, _count_drop(app), transport=request.transport
    )
    hub.connect(conn)
    metrics.connections.inc()
    session = Session(app, conn)
    conn.send(protocol.encode(protocol.Ready(user=user, instance=settings.instance_id)))
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                await session.handle(msg.data, binary=msg.type is WSMsgType.BINARY)
    finally:
        await session.close()
        metrics.connections.dec()
    return ws


async def _authenticate(
    ws: web.WebSocketResponse, app: web.Application, timeout: float
) -> str | None:
    """Wait for the auth frame; close with 4401 if it is late, malformed or forged."""
    try:
        msg = await ws.receive(timeout=timeout)
    except TimeoutError:
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"auth timeout")
        return None
    if msg.type is not WSMsgType.TEXT:
        if not ws.closed:
            await ws.close(code=CLOSE_UNAUTHORIZED, message=b"auth required")
        return None
    try:
        frame = protocol.decode_client_frame(msg.data)
    except protocol.FrameError:
        frame = None
    app[keys.METRICS].frames_in.labels(
        "auth" if isinstance(frame, protocol.Auth) else "invalid"
    ).inc()
    user = (
        app[keys.REGISTRY].authenticate(frame.token) if isinstance(frame, protocol.Auth) else None
    )
    if user is None:
        await ws.send_frame(
            protocol.error("unauthorized", "the first frame must be auth with a valid token"),
            WSMsgType.TEXT,
        )
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
    return user


def _count_drop(app: web.Application) -> Callable[[Connection], None]:
    metrics = app[keys.METRICS]

    def on_drop(conn: Connection) -> None:
        metrics.dropped_clients.inc()
        log.info("dropping slow client %s", conn.user)

    return on_drop


class Session:
    """What one authenticated connection may do, frame by frame."""

    __slots__ = (
        "_acks",
        "_bus",
        "_frame_limits",
        "_history",
        "_hub",
        "_metrics",
        "_registry",
        "_relay",
        "_send_limits",
        "_settings",
        "_typed_at",
        "conn",
        "user",
    )

    def __init__(self, app: web.Application, conn: Connection) -> None:
        self.conn = conn
        self.user = conn.user
        self._settings = app[keys.SETTINGS]
        self._hub = app[keys.HUB]
        self._bus = app[keys.BUS]
        self._history = app[keys.HISTORY]
        self._registry = app[keys.REGISTRY]
        self._relay = app[keys.RELAY]
        self._metrics = app[keys.METRICS]
        self._send_limits = app[keys.SEND_LIMITS]
        self._frame_limits = app[keys.FRAME_LIMITS]
        self._acks: set[asyncio.Task[None]] | None = None  # made when first needed
        self._typed_at: dict[str, float] | None = None

    def refuse(self, code: protocol.ErrorCode, message: str, cid: str | None = None) -> None:
        """Answer a frame with an error; the connection stays open."""
        self._metrics.errors.labels(code).inc()
        self.conn.send(protocol.error(code, message, cid))

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a background task until it is done."""
        if self._acks is None:
            self._acks = set()
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    def _too_fast(self, message: str, cid: str | None = None) -> None:
        self._metrics.rate_limited.inc()
        self.refuse("rate_limited", message, cid)

    async def handle(self, data: str | bytes, *, binary: bool = False) -> None:
        """Decode one frame and act on it; nothing a client sends can raise out of here."""
        frame: protocol.ClientFrame | None = None
        refused: protocol.FrameError | None = None
        if binary:
            refused = protocol.FrameError("bad_frame", "frames must be text")
        else:
            try:
                frame = protocol.decode_client_frame(data)
            except protocol.FrameError as exc:
                refused = exc
        if not self._frame_limits.allow(self.user):  # invalid frames count too
            self._too_fast("too many frames; slow down", getattr(frame, "cid", None))
            return
        if frame is None:
            assert refused is not None
            self._metrics.frames_in.labels("invalid").inc()
            self.refuse(refused.code, refused.message)
            return
        kind = type(frame).__struct_config__.tag
        self._metrics.frames_in.labels(str(kind)).inc()
        try:
            match frame:
                case protocol.Send():
                    await self._send(frame)
                case protocol.Join():
                    await self._join(frame)
                case protocol.Leave():
                    await self._leave(frame)
                case protocol.HistoryRequest():
                    await self._history_page(frame)
                case protocol.Typing():
                    self._typing(frame)
                case protocol.Ping():
                    self.conn.send(protocol.encode(protocol.Pong()))
                case protocol.Auth():
                    self.refuse("bad_frame", "this connection is already authenticated")
        except (TimeoutError, Unavailable) as exc:
            log.warning("store unavailable while handling %s: %r", kind, exc)
            self.refuse(
                "unavailable", "storage is unavailable; try again", getattr(frame, "cid", None)
            )

    def _check_room(self, room: str, *, joined: bool, cid: str | None = None) -> bool:
        if not protocol.valid_room(room):
            self.refuse("invalid_room", "room names are 1-32 of a-z 0-9 _ -", cid)
            return False
        if joined and room not in self.conn.rooms:
            self.refuse("not_joined", f"join {room!r} first", cid)
            return False
        return True

    async def _join(self, frame: protocol.Join) -> None:
        room = frame.room
        if not self._check_room(room, joined=False):
            return
        if not self._relay.history_healthy:
            # History is behind what was broadcast: a join now could miss messages.
            self.refuse("unavailable", "history is catching up; join again shortly")
            return
        if room in self.conn.rooms:
            self._hub.leave(self.conn, room)  # a re-join resynchronises; presence is unchanged
        elif len(self.conn.rooms) >= MAX_ROOMS_PER_CONNECTION:
            self.refuse("rate_limited", f"at most {MAX_ROOMS_PER_CONNECTION} rooms per connection")
            return
        newcomer = self._hub.join(self.conn, room)
        try:
            if newcomer:
                await _bounded(self._registry.enter(room, self.user))
                self._relay.presence_changed(room)
            reset = False
            page: Page | None = None
            if frame.since is not None:
                page = await _bounded(self._history.after(room, frame.since))
                reset = page is None
            if page is None:
                page = await _bounded(self._history.latest(room, protocol.DEFAULT_PAGE))
            users = await _bounded(self._registry.online(room))
        except BaseException:
            self._leave_hub(room)
            raise
        self.conn.send(
            protocol.encode(
                protocol.Joined(
                    room=room,
                    messages=[msgspec.Raw(m) for m in page.messages],
                    has_more=page.has_more,
                    users=users,
                    reset=reset,
                )
            )
        )
        self._hub.go_live(self.conn, room, page.through)

    async def _leave(self, frame: protocol.Leave) -> None:
        if self._check_room(frame.room, joined=True):
            self._leave_hub(frame.room)

    def _leave_hub(self, room: str) -> None:
        if self._hub.leave(self.conn, room):
            self._forget_presence(room)

    def _forget_presence(self, room: str) -> None:
        task = asyncio.create_task(self._left(room))
        self._keep(task)

    async def _left(self, room: str) -> None:
        try:
            # Not bounded like a reply: a mass disconnect queues thousands of these.
            await asyncio.wait_for(self._registry.leave(room, self.user), LEAVE_TIMEOUT_S)
        except Exception as exc:
            log.warning("could not record that %s left %s: %r", self.user, room, exc)
        self._relay.presence_changed(room)

    async def _send(self, frame: protocol.Send) -> None:
        cid = frame.cid
        if not self._check_room(frame.room, joined=True, cid=cid):
            return
        text = frame.text.strip()
        if not text:
            self.refuse("empty_text", "the message is empty", cid)
            return
        if len(text) > protocol.MAX_TEXT_CHARS:
            self.refuse("text_too_long", f"at most {protocol.MAX_TEXT_CHARS} characters", cid)
            return
        if not self._send_limits.allow(self.user):
            self._too_fast("you are sending too fast", cid)
            return
        message_id = protocol.message_id(frame.room, self.user, cid)
        original = None
        if self._relay.history_healthy:
            try:
                original = await _bounded(self._history.find(frame.room, message_id))
            except (TimeoutError, Unavailable) as exc:
                # Send anyway: the relay drops a second copy of an id it has seen.
                log.debug("de-duplication lookup failed: %r", exc)
        if original is not None:
            self.conn.send(original)
            return
        message = protocol.Message(
            room=frame.room,
            id=message_id,
            user=self.user,
            text=text,
            ts=int(time.time() * 1000),
            cid=cid,
        )
        # The task starts producing before the next frame is read, so one client's
        # messages reach the bus in the order it sent them.
        task = asyncio.create_task(self._publish(message.room, protocol.encode(message), cid))
        self._keep(task)

    async def _publish(self, room: str, value: bytes, cid: str) -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._bus.publish(room, value), self._settings.ack_timeout)
        except (TimeoutError, Unavailable) as exc:
            self._metrics.bus_publish_failures.inc()
            log.warning("bus did not confirm %s's message: %r", self.user, exc)
            self.refuse("unavailable", "the message was not confirmed; send it again", cid)
            return
        self._metrics.messages_produced.inc()
        self._metrics.produce_latency.observe(time.perf_counter() - started)

    async def _history_page(self, frame: protocol.HistoryRequest) -> None:
        if not self._check_room(frame.room, joined=False):
            return
        if frame.before is None:
            page = await _bounded(self._history.latest(frame.room, frame.limit))
        else:
            page = await _bounded(self._history.before(frame.room, frame.before, frame.limit))
        self.conn.send(
            protocol.encode(
                protocol.History(
                    room=frame.room,
                    messages=[msgspec.Raw(m) for m in page.messages],
                    has_more=page.has_more,
                )
            )
        )

    def _typing(self, frame: protocol.Typing) -> None:
        if not self._check_room(frame.room, joined=True):
            return
        now = time.monotonic()
        if self._typed_at is None:
            self._typed_at = {}
        if now - self._typed_at.get(frame.room, 0.0) < TYPING_INTERVAL_S:
            return  # one notice per burst of keystrokes is enough
        self._typed_at[frame.room] = now
        notice = protocol.TypingNotice(room=frame.room, user=self.user)
        self._bus.signal(frame.room, protocol.encode(notice))

    async def close(self) -> None:
        """Leave every room and stop the writer; acks still in flight finish on their own."""
        for room in self._hub.disconnect(self.conn):
            self._forget_presence(room)
        if self._hub.connection_count(self.user) == 0:
            self._send_limits.forget(self.user)
            self._frame_limits.forget(self.user)
        await self.conn.finish()


async def _bounded(awaitable: Awaitable[T]) -> T:
    """Wait on a store, but not forever."""
    return await asyncio.wait_for(awaitable, STORE_TIMEOUT_S)
