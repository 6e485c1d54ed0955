#!/usr/bin/env python3
"""Load generator for the chat server and its Socket.IO peer.

Registers N clients, spreads them over M instance URLs and P worker processes,
connects each over a raw WebSocket, authenticates and joins one room; then K of
them send R messages/s in total for a warm-up and a measured window, and every
client records the send -> receive latency of every message it gets. Prints one
JSON line on stdout and a table on stderr. See bench/README.md.

    python bench/loadgen.py --urls http://127.0.0.1:8081,http://127.0.0.1:8082 \\
        --clients 1000 --senders 10 --deliveries 20000 --duration 20 \\
        --server-pids 1234,1235

    python bench/loadgen.py --urls ... --idle 10000 --server-pids 1234,1235

Both targets (`--target ours|socketio`) go through the same minimal WebSocket
client below (an asyncio.Protocol that parses frames itself), so they cost the
load generator the same: aiohttp's client adds a task wake-up per frame that we
cannot afford at 80,000 deliveries/s on two shared cores. aiohttp is used only
for the HTTP registration calls.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import multiprocessing as mp
import os
import resource
import secrets
import signal
import sys
import time
import traceback
from array import array
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

import msgspec

CLK_TCK = os.sysconf("SC_CLK_TCK")
STEP_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------
# Targets: what differs between our protocol and Socket.IO's.
# ---------------------------------------------------------------------------


class OursFrame(msgspec.Struct):
    """The fields of our server frames that the load generator reads."""

    type: str
    text: str = ""
    code: str = ""


class SioMessage(msgspec.Struct):
    """The payload of a Socket.IO "message" event."""

    text: str = ""


_ours_frame = msgspec.json.Decoder(OursFrame)
_sio_message = msgspec.json.Decoder(tuple[str, SioMessage])
_any = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()


class Target:
    """What differs between the two servers' protocols; everything else is shared."""

    name: ClassVar[str]
    path: ClassVar[str]  # of the WebSocket endpoint
    needs_token: ClassVar[bool]  # register over HTTP first

    @staticmethod
    def message_text(payload: bytes) -> str | None:
        """The text of a chat message frame; None for any other frame. The hot path."""
        raise NotImplementedError

    @staticmethod
    def control(conn: WSConn, payload: bytes) -> None:
        """Answer a protocol-level frame (a ping) if this is one."""

    @staticmethod
    def error_code(payload: bytes) -> str | None:
        """The code of an error frame; None for any other frame."""
        raise NotImplementedError

    @staticmethod
    async def setup(conn: WSConn, user: str, token: str | None, room: str) -> None:
        """Authenticate and join; raise SetupError on refusal."""
        raise NotImplementedError

    @staticmethod
    def decode_setup(payload: bytes) -> Any:
        """A frame received during setup, decoded enough for `setup` to match it."""
        raise NotImplementedError

    @staticmethod
    def encode_send(room: str, text: str, cid: str) -> bytes:
        """The frame that posts `text` to `room`."""
        raise NotImplementedError


class Ours(Target):
    """Our contract: JSON frames with a `type`."""

    name = "ours"
    path = "/ws"
    needs_token = True

    @staticmethod
    def message_text(payload: bytes) -> str | None:
        """The text of a `message` frame; None for any other frame."""
        if b'"message"' not in payload:  # cheap filter; error frames also pass it
            return None
        frame = _ours_frame.decode(payload)
        return frame.text if frame.type == "message" else None

    @staticmethod
    def error_code(payload: bytes) -> str | None:
        if b'"error"' not in payload:
            return None
        try:
            frame = _ours_frame.decode(payload)
        except msgspec.MsgspecError:
            return "undecodable"
        return (frame.code or "error") if frame.type == "error" else None

    @staticmethod
    async def setup(conn: WSConn, user: str, token: str | None, room: str) -> None:
        conn.send_text(_enc.encode({"type": "auth", "token": token}))
        await conn.expect(lambda f: f.get("type") == "ready", "ready")
        conn.send_text(_enc.encode({"type": "join", "room": room, "since": None}))
        await conn.expect(lambda f: f.get("type") == "joined", "joined")

    @staticmethod
    def decode_setup(payload: bytes) -> dict[str, Any]:
        if b'"presence"' in payload[:32]:
            return {"type": "presence"}  # can be large: do not decode what we skip
        frame = _any.decode(payload)
        if isinstance(frame, dict) and frame.get("type") == "error":
            raise SetupError(f"error {frame.get('code')}: {frame.get('message')}")
        return frame if isinstance(frame, dict) else {}

    @staticmethod
    def encode_send(room: str, text: str, cid: str) -> bytes:
        return _enc.encode({"type": "send", "room": room, "text": text, "cid": cid})


class SocketIO(Target):
    """Engine.IO v4 / Socket.IO v5 over a WebSocket: `0` open, `40` connect,
    `42[...]` events, `2`/`3` ping/pong (the server pings, the client answers)."""

    name = "socketio"
    path = "/socket.io/?EIO=4&transport=websocket"
    needs_token = False

    @staticmethod
    def message_text(payload: bytes) -> str | None:
        if not payload.startswith(b'42["message",'):
            return None
        return _sio_message.decode(memoryview(payload)[2:])[1].text

    @staticmethod
    def control(conn: WSConn, payload: bytes) -> None:
        if payload == b"2":
            conn.send_text(b"3")

    @staticmethod
    def error_code(payload: bytes) -> str | None:
        if payload.startswith(b'42["failed"'):
            try:
                return str(_any.decode(payload[2:])[1].get("code", "failed"))
            except (msgspec.MsgspecError, AttributeError, IndexError):
                return "undecodable"
        if payload.startswith(b"44"):
            return "connect_error"
        return None

    @staticmethod
    async def setup(conn: WSConn, user: str, token: str | None, room: str) -> None:
        await conn.expect(lambda f: f[0] == "0", "open")
        conn.send_text(b"40" + _enc.encode({"user": user}))
        await conn.expect(lambda f: f[0] == "40", "connect")
        conn.send_text(b"42" + _enc.encode(["join", room]))
        await conn.expect(lambda f: f[0] == "42" and f[1][0] == "joined", "joined")

    @staticmethod
    def decode_setup(payload: bytes) -> tuple[str, Any]:
        text = payload.decode()
        if text == "2":
            return ("2", None)
        if text.startswith("44"):
            raise SetupError(f"connect refused: {text[2:]}")
        if text.startswith("0"):
            return ("0", json.loads(text[1:]))
        if text.startswith("40"):
            return ("40", text[2:])
        if text.startswith("42"):
            event = json.loads(text[2:])
            if event and event[0] == "failed":
                raise SetupError(f"failed: {event[1:]}")
            return ("42", event)
        return (text[:2], None)

    @staticmethod
    def encode_send(room: str, text: str, cid: str) -> bytes:
        return b"42" + _enc.encode(["send", {"room": room, "text": text, "cid": cid}])


TARGETS: dict[str, type[Target]] = {t.name: t for t in (Ours, SocketIO)}


class SetupError(Exception):
    """A client could not connect, authenticate or join."""


# ---------------------------------------------------------------------------
# A minimal WebSocket client (RFC 6455): enough for text frames, ping/pong, close.
# ---------------------------------------------------------------------------


def _mask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def _frame(opcode: int, data: bytes) -> bytes:
    n = len(data)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return header + key + _mask(data, key)


class WSConn(asyncio.Protocol):
    """One client connection; `message` frames go straight to the receiver stats."""

    def __init__(self, worker: Worker, host: str, port: int, path: str) -> None:
        self.w = worker
        self.target = worker.target
        self.message_text = worker.target.message_text
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: "
            f"{base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.handshaken = False
        self.buf = b""
        self.fragments: list[bytes] | None = None
        self.fragments_opcode = 0
        self.setup = True
        self.inbox: deque[bytes] = deque()
        self.inbox_waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.closing = False  # we closed it: not a disconnect to report
        self.close_code: int | None = None
        # Receiver state.
        self.order = array("q")  # (sender << 32 | seq) in arrival order
        self.seen: dict[int, bytearray] = {}
        self.last: dict[int, int] = {}

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are no subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(SetupError(f"connection lost: {exc!r}"))
        self._wake()
        if not self.setup and not self.closing:
            self.w.disconnects[str(self.close_code or "lost")] += 1

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.w.rx_bytes += len(data)
        if self.handshaken and not self.buf and data[0] == 0x81:
            # Most reads hold exactly one small text frame: skip the general loop.
            size = data[1]
            if size < 126:
                if len(data) == size + 2:
                    self.on_text(data[2:], now)
                    return
            elif size == 126 and len(data) == ((data[2] << 8) | data[3]) + 4:
                self.on_text(data[4:], now)
                return
        elif not self.handshaken:
            data = self._handshake(data)
            if not data:
                return
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            size = buf[pos + 1] & 0x7F
            head = 2
            if size == 126:
                if n - pos < 4:
                    break
                size = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif size == 127:
                if n - pos < 10:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + size
            if end > n:
                break
            payload = buf[pos + head : end]
            pos = end
            if b0 == 0x81:  # a whole text frame: the hot path
                self.on_text(payload, now)
            else:
                self._other_frame(b0, payload, now)
        self.buf = buf[pos:] if pos < n else b""

    # frames

    def on_text(self, payload: bytes, now: int) -> None:
        text = self.message_text(payload)
        if text is not None:
            self.w.record(self, text, now)
            return
        self.target.control(self, payload)
        self.w.other_frames += 1
        if self.setup:
            self.inbox.append(payload)
            self._wake()
            return
        code = self.target.error_code(payload)
        if code is not None:
            self.w.errors[code] += 1

    def _other_frame(self, b0: int, payload: bytes, now: int) -> None:
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode in (0x1, 0x2, 0x0):  # text, binary, continuation
            if opcode != 0x0:
                self.fragments = [payload]
                self.fragments_opcode = opcode
            elif self.fragments is not None:
                self.fragments.append(payload)
            if fin and self.fragments is not None:
                whole = b"".join(self.fragments)
                self.fragments = None
                if self.fragments_opcode == 0x2:
                    self.w.errors["binary_frame"] += 1
                else:
                    self.on_text(whole, now)
        elif opcode == 0x9:  # ping
            self._write(_frame(0xA, payload))
        elif opcode == 0x8:  # close
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._write(_frame(0x8, payload[:2]))
            if self.transport is not None:
                self.transport.close()

    def _handshake(self, data: bytes) -> bytes:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self._fail("handshake too long")
            return b""
        head, rest = self.buf[:end], self.buf[end + 4 :]
        self.buf = b""
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            self._fail(f"handshake refused: {status.decode(errors='replace')}")
            return b""
        self.handshaken = True
        if not self.opened.done():
            self.opened.set_result(None)
        return rest

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(SetupError(reason))
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self.inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # API for the setup and the senders

    def send_text(self, data: bytes) -> bool:
        """Send one text frame; False if the connection is gone."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(_frame(0x1, data))
        return True

    async def expect(self, match: Any, what: str, timeout: float = STEP_TIMEOUT_S) -> Any:
        """Wait for the setup frame that `match` accepts, skipping others (presence...)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self.inbox:
                frame = self.target.decode_setup(self.inbox.popleft())
                if match(frame):
                    return frame
            if self.closed:
                raise SetupError(f"closed ({self.close_code}) while waiting for {what}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SetupError(f"timed out waiting for {what}")
            self.inbox_waiter = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.inbox_waiter, remaining)
            self.inbox_waiter = None

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self._write(_frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()


# ---------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------


@dataclass
class ClientPlan:
    """One simulated client."""

    index: int
    url: str
    user: str
    room: str
    sender: int | None  # global sender number, or None for a pure receiver


class Worker:
    """Drives a share of the clients in one process and keeps their statistics."""

    def __init__(self, pipe: Any, cfg: dict[str, Any], plans: list[ClientPlan]) -> None:
        self.pipe = pipe
        self.cfg = cfg
        self.plans = plans
        self.target = TARGETS[cfg["target"]]
        self.tokens: dict[int, str] = {}
        self.conns: dict[int, WSConn] = {}
        self.failures: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.disconnects: Counter[str] = Counter()
        self.other_frames = 0
        self.rx_bytes = 0
        self.foreign = 0
        # Window, in time.time_ns(); nothing counts until "go" sets it.
        self.ws_ns = 1 << 62
        self.we_ns = 1 << 62
        self.latency_us = array("I")
        self.rx_in_window = 0
        self.window_deliveries = 0
        self.window_unique = 0
        self.duplicated = 0
        self.out_of_order = 0
        self.last_rx_ns = 0
        self.sent_window = 0
        self.sent_total = 0
        self.send_failures = 0
        self.send_lag_us = array("I")

    # the hot path: one call per received message frame

    def record(self, conn: WSConn, text: str, now: int) -> None:
        try:
            t_part, s_part, n_part, *_ = text.split(" ", 3)
            t = int(t_part[2:])
            s = int(s_part[2:])
            n = int(n_part[2:])
        except ValueError:
            self.foreign += 1
            return
        if self.ws_ns <= now < self.we_ns:
            self.rx_in_window += 1
        conn.order.append((s << 32) | n)
        seen = conn.seen.get(s)
        if seen is None:
            seen = conn.seen[s] = bytearray(max(1024, n + 1))
        elif n >= len(seen):
            seen.extend(bytes(max(len(seen), n + 1 - len(seen))))
        first = not seen[n]
        if first:
            seen[n] = 1
        else:
            self.duplicated += 1
        if n < conn.last.get(s, -1):
            self.out_of_order += 1
        else:
            conn.last[s] = n
        if self.ws_ns <= t < self.we_ns:
            self.window_deliveries += 1
            if first:
                self.window_unique += 1
                self.latency_us.append(max(0, now - t) // 1000)
        self.last_rx_ns = now

    # phases

    async def run(self) -> None:
        self.send("hello", pid=os.getpid())
        await self.register()
        self.send("registered", failures=dict(self.failures))
        self.failures.clear()  # from here on: connect failures
        await self.command("connect")
        started = time.monotonic()
        await self.connect_all()
        setup_frames, setup_bytes = self.other_frames, self.rx_bytes
        self.other_frames = self.rx_bytes = 0
        self.errors.clear()
        self.send(
            "connected",
            ok=len(self.conns),
            failures=dict(self.failures),
            seconds=time.monotonic() - started,
            setup_frames=setup_frames,
            setup_bytes=setup_bytes,
        )
        cmd = await self.command("go", "close")
        if cmd["cmd"] == "go":
            await self.measure(cmd)
            cmd = await self.command("ref", "close")
            if cmd["cmd"] == "ref":
                self.send("order", **self.check_order(cmd["ref"]))
                await self.command("close")
        for conn in self.conns.values():
            conn.close()
        await asyncio.sleep(0.2)
        self.send("bye")

    async def register(self) -> None:
        if not self.target.needs_token:
            return
        import aiohttp

        limit = asyncio.Semaphore(self.cfg["register_concurrency"])
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.cfg["register_concurrency"]),
            timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S),
        ) as http:

            async def one(plan: ClientPlan) -> None:
                async with limit:
                    try:
                        async with http.post(
                            plan.url.rstrip("/") + "/api/clients", json={"username": plan.user}
                        ) as resp:
                            body = await resp.json(content_type=None)
                            if resp.status != 201:
                                code = (body.get("error") or {}).get("code", "")
                                self.failures[f"register {resp.status} {code}"] += 1
                                return
                            self.tokens[plan.index] = body["token"]
                    except Exception as exc:
                        self.failures[f"register {type(exc).__name__}"] += 1

            await asyncio.gather(*(one(p) for p in self.plans))

    async def connect_all(self) -> None:
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(self.cfg["connect_concurrency"])

        async def one(plan: ClientPlan) -> None:
            token = self.tokens.get(plan.index)
            if self.target.needs_token and token is None:
                return
            parts = urlsplit(plan.url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            async with limit:
                conn: WSConn | None = None
                try:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(
                            lambda: WSConn(self, host, port, self.target.path), host, port
                        ),
                        STEP_TIMEOUT_S,
                    )
                    assert conn is not None
                    await asyncio.wait_for(conn.opened, STEP_TIMEOUT_S)
                    await self.target.setup(conn, plan.user, token, plan.room)
                except Exception as exc:
                    reason = str(exc) if isinstance(exc, SetupError) else type(exc).__name__
                    self.failures[f"connect: {reason}"[:120]] += 1
                    if conn is not None:
                        conn.close()
                    return
                conn.setup = False
                conn.inbox.clear()
                self.conns[plan.index] = conn

        await asyncio.gather(*(one(p) for p in self.plans))

    async def measure(self, cmd: dict[str, Any]) -> None:
        t0, warmup, duration = cmd["t0"], cmd["warmup"], cmd["duration"]
        self.ws_ns = int((t0 + warmup) * 1e9)
        self.we_ns = int((t0 + warmup + duration) * 1e9)
        await self.run_senders(t0, t0 + warmup + duration, cmd["rate"], cmd["senders"])
        # Drain: until nothing arrived for `quiet` seconds, or `drain` seconds at most.
        drain_until = time.time_ns() + int(self.cfg["drain"] * 1e9)
        quiet_ns = int(self.cfg["quiet"] * 1e9)
        self.last_rx_ns = max(self.last_rx_ns, time.time_ns())
        while True:  # polls the clock the hot path sets: no event per frame
            now = time.time_ns()
            if now >= drain_until or now - self.last_rx_ns >= quiet_ns:
                break
            await asyncio.sleep(0.1)
        first = min(self.conns) if self.conns else None
        self.send(
            "done",
            rx_in_window=self.rx_in_window,
            window_deliveries=self.window_deliveries,
            window_unique=self.window_unique,
            duplicated=self.duplicated,
            out_of_order=self.out_of_order,
            latency_us=self.latency_us.tobytes(),
            sent_window=self.sent_window,
            sent_total=self.sent_total,
            send_failures=self.send_failures,
            send_lag_us=self.send_lag_us.tobytes(),
            errors=dict(self.errors),
            disconnects=dict(self.disconnects),
            other_frames=self.other_frames,
            foreign=self.foreign,
            order=self.conns[first].order.tobytes() if first is not None else b"",
        )

    async def run_senders(self, t0: float, end: float, rate: float, total_senders: int) -> None:
        """Sender j sends its n-th message at t0 + (n*K + j)/rate: one even global schedule."""
        mine = sorted(
            (p.sender, p.room, self.conns[p.index])
            for p in self.plans
            if p.sender is not None and p.index in self.conns
        )
        if not mine or rate <= 0:
            await asyncio.sleep(max(0.0, end - time.time()))
            return
        pad = self.cfg["pad"]
        run = self.cfg["run"]
        encode_send = self.target.encode_send
        n = 0
        while True:
            for j, room, conn in mine:
                due = t0 + (n * total_senders + j) / rate
                if due >= end:
                    return
                delay = due - time.time()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                now = time.time_ns()
                text = f"t={now} s={j} n={n}{pad}"
                if conn.send_text(encode_send(room, text, f"{run}-{j}-{n}")):
                    self.sent_total += 1
                    if self.ws_ns <= now < self.we_ns:
                        self.sent_window += 1
                        self.send_lag_us.append(max(0, now - int(due * 1e9)) // 1000)
                elif self.ws_ns <= now < self.we_ns:
                    self.send_failures += 1
            n += 1

    def check_order(self, ref_bytes: bytes) -> dict[str, int]:
        """Compare every receiver's order with the reference, on the messages both saw."""
        ref = array("q")
        ref.frombytes(ref_bytes)
        position = {key: i for i, key in enumerate(ref)}
        mismatched = inversions = 0
        for conn in self.conns.values():
            last = -1
            bad = 0
            for key in conn.order:
                p = position.get(key)
                if p is None:
                    continue
                if p < last:
                    bad += 1
                else:
                    last = p
            if bad:
                mismatched += 1
                inversions += bad
        return {"mismatched": mismatched, "inversions": inversions}

    # pipe to the main process

    def send(self, kind: str, **fields: Any) -> None:
        self.pipe.send({"kind": kind, **fields})

    async def command(self, *expected: str) -> dict[str, Any]:
        cmd: dict[str, Any] = await asyncio.to_thread(self.pipe.recv)
        if cmd["cmd"] not in expected:
            raise RuntimeError(f"expected {expected}, got {cmd['cmd']}")
        return cmd


def raise_fd_limit() -> None:
    """Thousands of sockets per process need more than the default 1,024 descriptors."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_main(pipe: Any, cfg: dict[str, Any], plans: list[ClientPlan]) -> None:
    """Entry point of a worker process."""
    raise_fd_limit()
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(Worker(pipe, cfg, plans).run())
    except (KeyboardInterrupt, BrokenPipeError, EOFError):
        pass
    except Exception:
        with contextlib.suppress(Exception):
            pipe.send({"kind": "fatal", "error": traceback.format_exc()})


# ---------------------------------------------------------------------------
# /proc sampling of server and worker processes
# ---------------------------------------------------------------------------


def proc_cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # utime + stime


def proc_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
        return " ".join(a.decode(errors="replace") for a in args if a)[:80]
    except OSError:
        return "?"


def machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Sampler:
    """CPU between two snapshots, and RSS samples in between, for a set of pids."""

    def __init__(self, pids: dict[int, str]) -> None:
        self.pids = pids
        self.rss: dict[int, list[int]] = {pid: [] for pid in pids}
        self.t0 = 0.0
        self.ticks0: dict[int, int | None] = {}
        self.busy0 = (0, 0)
        self.result: dict[int, dict[str, Any]] = {}

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.ticks0 = {pid: proc_cpu_ticks(pid) for pid in self.pids}
        self.busy0 = machine_busy()
        self.sample()

    def sample(self) -> None:
        for pid in self.pids:
            rss = proc_rss_kb(pid)
            if rss is not None:
                self.rss[pid].append(rss)

    def stop(self) -> None:
        self.sample()
        elapsed = max(1e-6, time.monotonic() - self.t0)
        busy1 = machine_busy()
        self.machine_cpu_pct = round(
            100 * (busy1[0] - self.busy0[0]) / max(1, busy1[1] - self.busy0[1]), 1
        )
        for pid, label in self.pids.items():
            t0, t1 = self.ticks0.get(pid), proc_cpu_ticks(pid)
            rss = self.rss[pid]
            self.result[pid] = {
                "pid": pid,
                "name": label,
                "alive": t1 is not None,
                "cpu_pct": round(100 * (t1 - t0) / CLK_TCK / elapsed, 1)
                if t0 is not None and t1 is not None
                else None,
                "rss_mb": round(rss[-1] / 1024, 1) if rss else None,
                "rss_mb_max": round(max(rss) / 1024, 1) if rss else None,
            }


def wait_steady_rss(pids: list[int], settle: float) -> dict[int, int]:
    """Sample RSS each second until it stops moving (3 samples within 1%) or `settle` s."""
    history: dict[int, list[int]] = {pid: [] for pid in pids}
    deadline = time.monotonic() + settle
    while True:
        for pid in pids:
            history[pid].append(proc_rss_kb(pid) or 0)
        steady = all(
            len(h) >= 3 and max(h[-3:]) - min(h[-3:]) <= 0.01 * max(h[-3:])
            for h in history.values()
        )
        if steady or time.monotonic() >= deadline:
            return {pid: h[-1] for pid, h in history.items()}
        time.sleep(1.0)


# ---------------------------------------------------------------------------
# The main process
# ---------------------------------------------------------------------------


def parse_pids(spec: str) -> dict[int, str]:
    """`123,456` or `ours-1=123,redis=456`; the label defaults to the command line."""
    pids: dict[int, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        label, _, pid = item.rpartition("=")
        pids[int(pid)] = label or proc_name(int(pid))
    return pids


def tally(reports: list[dict[str, Any]], key: str) -> Counter[str]:
    """The workers' counts under `key`, added up."""
    return sum((Counter(r[key]) for r in reports), Counter())


def percentiles(samples_us: array[int]) -> dict[str, float | None]:
    """p50, p95, p99, p99.9, max and mean in ms, of samples in µs (an array of "I")."""
    keys = ("p50", "p95", "p99", "p999")
    if not samples_us:
        return dict.fromkeys((*keys, "max", "mean"))
    try:
        import numpy as np
    except ImportError:
        ordered = sorted(samples_us)
        n = len(ordered)
        out = {
            k: float(ordered[min(n - 1, int(q * n))])
            for k, q in zip(keys, (0.5, 0.95, 0.99, 0.999), strict=True)
        }
        out["max"], out["mean"] = float(ordered[-1]), sum(ordered) / n
    else:
        values = np.frombuffer(samples_us, dtype=np.uint32)
        q = np.percentile(values, [50, 95, 99, 99.9])
        out = dict(zip(keys, (float(v) for v in q), strict=True))
        out["max"], out["mean"] = float(values.max()), float(values.mean())
    return {k: round(v / 1000, 2) for k, v in out.items()}


class Main:
    """Starts the workers, steps them through the phases, samples, reports."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.urls = [u.strip().rstrip("/") for u in args.urls.split(",") if u.strip()]
        self.server_pids = parse_pids(args.server_pids or "")
        self.run_id = secrets.token_hex(3)
        self.procs: list[mp.process.BaseProcess] = []
        self.pipes: list[Any] = []
        self.worker_pids: list[int] = []
        self.report: dict[str, Any] = {}

    def plan(self) -> list[ClientPlan]:
        a = self.args
        n = a.idle if a.idle else a.clients
        room_size = a.room_size if a.room_size > 0 else n
        plans = []
        for i in range(n):
            plans.append(
                ClientPlan(
                    index=i,
                    url=self.urls[i % len(self.urls)],
                    user=f"lg{self.run_id}-{i}",
                    room=a.room if room_size >= n else f"{a.room}-{i // room_size}",
                    sender=i if (not a.idle and i < a.senders) else None,
                )
            )
        return plans

    def start_workers(self, plans: list[ClientPlan]) -> None:
        a = self.args
        ctx = mp.get_context("spawn")
        cfg = {
            "target": a.target,
            "register_concurrency": a.register_concurrency,
            "connect_concurrency": a.connect_concurrency,
            "drain": a.drain,
            "quiet": a.quiet,
            "pad": " " + "x" * a.pad if a.pad else "",
            "run": self.run_id,
        }
        m = len(self.urls)
        shares: list[list[ClientPlan]] = [[] for _ in range(a.procs)]
        for p in plans:
            # Client i goes to URL i % M; workers take turns within each URL's clients.
            shares[(p.index // m) % a.procs].append(p)
        for share in shares:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, cfg, share), daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.pipes.append(parent)

    def gather(self, kind: str, timeout: float) -> list[dict[str, Any]]:
        """One report of `kind` from every worker."""
        out: list[dict[str, Any] | None] = [None] * len(self.pipes)
        deadline = time.monotonic() + timeout
        while any(o is None for o in out):
            for i, pipe in enumerate(self.pipes):
                if out[i] is not None:
                    continue
                if pipe.poll(0.05):
                    msg = pipe.recv()
                    if msg["kind"] == "fatal":
                        raise RuntimeError(f"worker {i} failed:\n{msg['error']}")
                    if msg["kind"] != kind:
                        raise RuntimeError(f"worker {i}: expected {kind}, got {msg['kind']}")
                    out[i] = msg
                elif not self.procs[i].is_alive():
                    raise RuntimeError(f"worker {i} died (exit {self.procs[i].exitcode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for workers: {kind}")
        return [o for o in out if o is not None]

    def broadcast(self, **cmd: Any) -> None:
        for pipe in self.pipes:
            pipe.send(cmd)

    def run(self) -> dict[str, Any]:
        a = self.args
        plans = self.plan()
        started = time.monotonic()
        self.start_workers(plans)
        try:
            hello = self.gather("hello", 60)
            self.worker_pids = [h["pid"] for h in hello]
            registered = self.gather("registered", 60 + len(plans) * 0.05)
            reg_failures = tally(registered, "failures")
            before = {pid: proc_rss_kb(pid) or 0 for pid in self.server_pids}
            self.broadcast(cmd="connect")
            connected = self.gather("connected", 120 + len(plans) * 0.05)
            conn_failures = tally(connected, "failures")
            n_connected = sum(r["ok"] for r in connected)
            self.report = {
                "mode": "idle" if a.idle else "rate",
                "target": a.target,
                "label": a.label or a.target,
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "urls": self.urls,
                "instances": len(self.urls),
                "procs": a.procs,
                "clients": len(plans),
                "connected": n_connected,
                "rooms": len({p.room for p in plans}),
                "failures": dict(reg_failures + conn_failures),
                "connect_s": round(max(r["seconds"] for r in connected), 2),
                # Frames and bytes the clients received while connecting and joining
                # (ready, joined, presence...): what a wave of joins costs the server.
                "setup_frames": sum(r["setup_frames"] for r in connected),
                "setup_mb": round(sum(r["setup_bytes"] for r in connected) / 1e6, 1),
            }
            if n_connected == 0:
                raise RuntimeError(f"no client connected: {dict(reg_failures + conn_failures)}")
            if a.idle:
                self.idle(plans, before)
            else:
                self.rate(n_connected)
            self.broadcast(cmd="close")
            self.gather("bye", 30)
        except BaseException:
            for proc in self.procs:
                proc.kill()
            raise
        finally:
            for proc in self.procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
        self.report["wall_s"] = round(time.monotonic() - started, 1)
        return self.report

    def idle(self, plans: list[ClientPlan], before: dict[int, int]) -> None:
        a = self.args
        after = wait_steady_rss(list(self.server_pids), a.settle)
        per_url = Counter(p.url for p in plans)
        servers = []
        for i, (pid, label) in enumerate(self.server_pids.items()):
            delta = after.get(pid, 0) - before.get(pid, 0)
            url = self.urls[i] if i < len(self.urls) else None
            conns = per_url[url] if url is not None else len(plans)
            servers.append(
                {
                    "pid": pid,
                    "name": label,
                    "url": url,
                    "connections": conns,
                    "rss_mb_before": round(before.get(pid, 0) / 1024, 1),
                    "rss_mb_after": round(after.get(pid, 0) / 1024, 1),
                    "rss_kb_per_conn": round(delta / conns, 2) if conns else None,
                }
            )
        self.report.update({"idle": len(plans), "servers": servers})

    def rate(self, n_connected: int) -> None:
        a = self.args
        rate = a.deliveries / n_connected if a.deliveries else a.rate
        senders = min(a.senders, a.clients)
        t0 = time.time() + 1.0
        self.broadcast(
            cmd="go",
            t0=t0,
            warmup=a.warmup,
            duration=a.duration,
            rate=rate,
            senders=senders,
        )
        watched = dict(self.server_pids)
        for i, pid in enumerate(self.worker_pids):
            watched[pid] = f"loadgen-{i}"
        watched[os.getpid()] = "loadgen-main"
        sampler = Sampler(watched)
        time.sleep(max(0.0, t0 + a.warmup - time.time()))
        sampler.start()
        window_end = t0 + a.warmup + a.duration
        while time.time() < window_end:
            time.sleep(min(1.0, max(0.0, window_end - time.time())))
            sampler.sample()
        sampler.stop()
        done = self.gather("done", a.drain + 120)
        ref = done[0]["order"]
        self.broadcast(cmd="ref", ref=ref)
        order = self.gather("order", 300)

        def total(key: str) -> int:
            return sum(d[key] for d in done)

        latency = array("I")
        lag = array("I")
        for d in done:
            latency.frombytes(d["latency_us"])
            lag.frombytes(d["send_lag_us"])
        sent = total("sent_window")
        expected = sent * n_connected
        unique = total("window_unique")
        servers = [sampler.result[pid] for pid in self.server_pids]
        loadgen = [sampler.result[pid] for pid in self.worker_pids]
        self.report.update(
            {
                "senders": senders,
                "rate": round(rate, 3),
                "target_deliveries_per_s": round(rate * n_connected),
                "warmup_s": a.warmup,
                "duration_s": a.duration,
                "sent": sent,
                "sent_total": total("sent_total"),
                "send_failures": total("send_failures"),
                "expected": expected,
                "delivered": total("window_deliveries"),
                "lost": max(0, expected - unique),
                "duplicated": total("duplicated"),
                "out_of_order": total("out_of_order"),
                "order_mismatches": sum(o["mismatched"] for o in order),
                "order_inversions": sum(o["inversions"] for o in order),
                "latency_ms": percentiles(latency),
                "deliveries_per_s": round(total("rx_in_window") / a.duration),
                "send_lag_ms": percentiles(lag),
                "errors": dict(tally(done, "errors")),
                "disconnects": dict(tally(done, "disconnects")),
                "other_frames": total("other_frames"),
                "foreign_messages": total("foreign"),
                "servers": servers,
                "servers_cpu_pct": round(sum(s["cpu_pct"] or 0 for s in servers), 1),
                "loadgen": {
                    "cpu_pct": [w["cpu_pct"] for w in loadgen],
                    "cpu_pct_total": round(sum(w["cpu_pct"] or 0 for w in loadgen), 1),
                    "rss_mb": [w["rss_mb"] for w in loadgen],
                    "main_cpu_pct": sampler.result[os.getpid()]["cpu_pct"],
                },
                "machine_cpu_pct": sampler.machine_cpu_pct,
                "cores": os.cpu_count(),
            }
        )


def table(r: dict[str, Any]) -> str:
    """A readable summary of one report."""
    lines = [
        f"== {r['label']} ({r['target']}) {r['mode']}: {r['connected']}/{r['clients']} clients "
        f"on {r['instances']} instance(s), {r['rooms']} room(s), connected in {r['connect_s']} s"
    ]
    if r.get("failures"):
        lines.append(f"   failures: {r['failures']}")
    if r["mode"] == "idle":
        for s in r["servers"]:
            lines.append(
                f"   pid {s['pid']:>7} {s['name'][:32]:<32} conns {s['connections']:>6}  "
                f"rss {s['rss_mb_before']:>7.1f} -> {s['rss_mb_after']:>7.1f} MB  "
                f"{s['rss_kb_per_conn']} KB/conn"
            )
        return "\n".join(lines)
    lat, lag = r["latency_ms"], r["send_lag_ms"]
    lines += [
        f"   target {r['target_deliveries_per_s']:,} deliveries/s = {r['rate']} msg/s x "
        f"{r['connected']} clients, {r['senders']} senders; achieved {r['deliveries_per_s']:,}/s",
        f"   sent {r['sent']:,}  expected {r['expected']:,}  delivered {r['delivered']:,}  "
        f"lost {r['lost']:,}  duplicated {r['duplicated']:,}  out-of-order {r['out_of_order']:,}  "
        f"order mismatches {r['order_mismatches']:,} receivers "
        f"({r['order_inversions']:,} inversions)",
        f"   latency ms: p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  "
        f"p99.9 {lat['p999']}  max {lat['max']}   (send lag p99 {lag['p99']} max {lag['max']})",
    ]
    if r["errors"] or r["disconnects"] or r["send_failures"]:
        lines.append(
            f"   errors {r['errors']}  disconnects {r['disconnects']}  "
            f"send failures {r['send_failures']}"
        )
    for s in r["servers"]:
        lines.append(
            f"   pid {s['pid']:>7} {s['name'][:40]:<40} cpu {s['cpu_pct']!s:>6}%  "
            f"rss {s['rss_mb']} MB (max {s['rss_mb_max']})"
        )
    g = r["loadgen"]
    lines.append(
        f"   loadgen cpu {' + '.join(f'{c}%' for c in g['cpu_pct'])} = {g['cpu_pct_total']}% "
        f"(main {g['main_cpu_pct']}%), machine {r['machine_cpu_pct']}% of {r['cores']} cores"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--target", choices=sorted(TARGETS), default="ours")
    p.add_argument("--urls", default="http://127.0.0.1:8080", help="comma-separated instance URLs")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--senders", type=int, default=10)
    p.add_argument("--rate", type=float, default=20.0, help="messages/s sent in total")
    p.add_argument(
        "--deliveries",
        type=float,
        default=0,
        help="target deliveries/s; sets --rate to this / connected clients",
    )
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument(
        "--drain",
        type=float,
        default=15.0,
        help="at most this long after the last send for deliveries to arrive",
    )
    p.add_argument(
        "--quiet", type=float, default=2.0, help="stop draining once nothing arrived for this long"
    )
    p.add_argument("--procs", type=int, default=2, help="worker processes")
    p.add_argument("--room", default="bench")
    p.add_argument("--room-size", type=int, default=0, help="clients per room (0: all in one room)")
    p.add_argument("--pad", type=int, default=0, help="extra characters in each message text")
    p.add_argument(
        "--idle",
        type=int,
        default=0,
        help="idle mode: open this many connections in total, report RSS/connection",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="idle mode: wait at most this long for server RSS to settle",
    )
    p.add_argument(
        "--server-pids",
        default="",
        help="pids to sample, in --urls order (then any others): 123,456 or name=123",
    )
    p.add_argument("--register-concurrency", type=int, default=32)
    p.add_argument("--connect-concurrency", type=int, default=100)
    p.add_argument("--label", default="", help="a name for this run in the report")
    p.add_argument("--quiet-table", action="store_true", help="no table on stderr")
    args = p.parse_args(argv)
    if args.procs < 1 or args.clients < 1 or args.senders < 0:
        p.error("--procs and --clients must be at least 1")
    if args.room_size and not args.idle:
        p.error("--room-size is for --idle runs; rate runs put every client in one room")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    raise_fd_limit()
    try:
        report = Main(args).run()
    except RuntimeError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loadgen: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(report), flush=True)
    if not args.quiet_table:
        print(table(report), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
