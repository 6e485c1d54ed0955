"""One client connection: its socket, its rooms, and the one task that writes to it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

log = logging.getLogger(__name__)

DROP_GRACE_S = 1.0

Buffer = list[bytes]


class Connection:
    """A socket fed through a bounded queue; a client that cannot keep up is dropped."""

    __slots__ = ("_on_drop", "_queue", "_transport", "_writer", "closing", "rooms", "user", "ws")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        user: str,
        queue_size: int,
        on_drop: Callable[[Connection], None],
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self.ws = ws
        self._transport = transport
        self.user = user
        # room -> None when live, or the frames held back while its join is being answered.
        self.rooms: dict[str, Buffer | None] = {}
        self.closing = False
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self._on_drop = on_drop
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{user}")

    def send(self, frame: bytes) -> bool:
        """Queue a frame without waiting; drop the connection if its queue is full."""
        if self.closing:
            return False
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.drop(WSCloseCode.TRY_AGAIN_LATER, "too slow: frames were not read")
            return False
        return True

    async def _write_loop(self) -> None:
        queue, ws = self._queue, self.ws
        try:
            while True:
                frame = await queue.get()
                await ws.send_frame(frame, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            # The peer went away; the handler notices on its next read and cleans up.
            pass

    def drop(self, code: int, reason: str) -> None:
        """Cut off a client that does not read, without waiting on it.

        Its socket is not draining, so a polite close would wait forever: queue the close
        frame behind what is already buffered, and abort the connection shortly after.
        """
        if self.closing:
            return
        self.closing = True
        self._on_drop(self)
        self._writer.cancel()
        transport = self._transport
        if isinstance(transport, asyncio.Transport) and not transport.is_closing():
            transport.write(_close_frame(code, reason))
            asyncio.get_running_loop().call_later(DROP_GRACE_S, transport.abort)

    async def close(self, code: int, reason: str = "", timeout: float = 1.0) -> None:
        """Stop writing and close politely; abort the transport if the peer is stuck."""
        self.closing = True
        self._writer.cancel()
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            if isinstance(self._transport, asyncio.Transport):
                self._transport.abort()

    async def finish(self) -> None:
        """Stop the writer once the handler is done with the socket."""
        self.closing = True
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer


def _close_frame(code: int, reason: str) -> bytes:
    """An unmasked close frame, as a server sends it (RFC 6455, section 5.5.1)."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return bytes([0x88, len(payload)]) + payload
