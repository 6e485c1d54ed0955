"""One client connection: its socket, its rooms, and the one task that writes to it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

log = logging.getLogger(__name__)

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
        """Close from outside the handler, without waiting on the peer."""
        if self.closing:
            return
        self.closing = True
        self._on_drop(self)
        task = asyncio.create_task(self.close(code, reason))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def close(self, code: int, reason: str = "", timeout: float = 1.0) -> None:
        """Stop writing, send a close frame, and abort the transport if the peer is stuck."""
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


_background: set[asyncio.Task[None]] = set()
