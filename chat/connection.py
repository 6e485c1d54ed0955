"""One client connection: its socket, its rooms, and the one task that writes to it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import cast

from aiohttp import WSCloseCode, WSMsgType, web

log = logging.getLogger(__name__)

DROP_GRACE_S = 1.0
# Bytes the kernel has not taken yet, above which frames queue instead of being written.
DIRECT_WRITE_LIMIT = 64 * 1024

Held = list[tuple[int, bytes]]
"""Frames (with their bus offsets) held back while a join is being answered."""


class Connection:
    """A socket fed without waiting; a client that cannot keep up is dropped.

    While the socket drains, frames go straight to the transport: no queue, no task
    switch, and a broadcast's wire bytes are shared by every recipient. Once the kernel
    stops taking data, frames wait in a bounded backlog that one writer task drains with
    aiohttp's flow control; when the backlog is full the client is dropped.
    """

    __slots__ = (
        "_backlog",
        "_limit",
        "_on_drop",
        "_transport",
        "_writer",
        "closing",
        "rooms",
        "user",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        user: str,
        queue_size: int,
        on_drop: Callable[[Connection], None],
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self.ws = ws
        self.user = user
        # room -> the frames held back while its join is answered, then, once live, the
        # offset up to which the join answer already carried that room's messages.
        self.rooms: dict[str, Held | int] = {}
        self.closing = False
        # uvloop's transports have the interface without subclassing asyncio's classes.
        self._transport = cast(asyncio.WriteTransport | None, transport)
        self._backlog: deque[bytes] | None = None  # made when first needed
        self._limit = queue_size
        self._on_drop = on_drop
        # Started only while a backlog exists: an idle connection costs no task.
        self._writer: asyncio.Task[None] | None = None

    def send(self, frame: bytes) -> bool:
        """Send one encoded frame to this client without waiting."""
        return self.send_wire(frame, wire_frame(frame))

    def send_wire(self, frame: bytes, wire: bytes) -> bool:
        """Send a frame whose wire bytes were built once for all recipients."""
        if self.closing:
            return False
        transport = self._transport
        backlog = self._backlog
        if (
            not backlog
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
            and not self.ws.closed
        ):
            transport.write(wire)
            return True
        if backlog is None:
            backlog = self._backlog = deque()
        if len(backlog) >= self._limit:
            self.drop(WSCloseCode.TRY_AGAIN_LATER, "too slow: frames were not read")
            return False
        backlog.append(frame)
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain_backlog(), name=f"ws-writer-{self.user}")
        return True

    async def _drain_backlog(self) -> None:
        backlog, ws = self._backlog, self.ws
        assert backlog is not None
        try:
            while backlog:
                # send_frame waits while the transport is paused: flow control.
                await ws.send_frame(backlog.popleft(), WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            # The peer went away; the handler notices on its next read and cleans up.
            pass
        finally:
            self._writer = None

    def _stop_writer(self) -> asyncio.Task[None] | None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
        return writer

    def drop(self, code: int, reason: str) -> None:
        """Cut off a client that does not read, without waiting on it.

        Its socket is not draining, so a polite close would wait forever: queue the close
        frame behind what is already buffered, and abort the connection shortly after.
        """
        if self.closing:
            return
        self.closing = True
        self._on_drop(self)
        self._stop_writer()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_close_frame(code, reason))
            asyncio.get_running_loop().call_later(DROP_GRACE_S, transport.abort)

    async def close(self, code: int, reason: str = "", timeout: float = 1.0) -> None:
        """Stop writing and close politely; abort the transport if the peer is stuck."""
        self.closing = True
        self._stop_writer()
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            if self._transport is not None:
                self._transport.abort()

    async def finish(self) -> None:
        """Stop the writer once the handler is done with the socket."""
        self.closing = True
        writer = self._stop_writer()
        if writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await writer


def wire_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed text frame (RFC 6455, section 5.2): what a server sends."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def _close_frame(code: int, reason: str) -> bytes:
    """An unmasked close frame, as a server sends it (RFC 6455, section 5.5.1)."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return bytes([0x88, len(payload)]) + payload
