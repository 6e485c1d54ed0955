"""The embedded bus: an in-process log for a single instance."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from chat.bus.base import Bus, BusUnavailable, Deliver, Record


class EmbeddedBus(Bus):
    """Appends to an in-memory log and delivers each tick's records as one batch."""

    name = "embedded (in-process, one instance)"

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._next_offset = 0
        self._pending: list[Record] = []
        self._flush_scheduled = False
        self._closed = False

    async def start(self, deliver: Deliver, resume: Mapping[int, int]) -> None:
        """Deliver from now on, numbering after what history already holds."""
        self._deliver = deliver
        self._next_offset = max(self._next_offset, resume.get(0, -1) + 1)
        self._schedule_flush()

    async def publish(self, room: str, value: bytes) -> None:
        """Append a record; in-process, it is as durable as it will ever be at once."""
        self._append(room, value)

    def signal(self, room: str, value: bytes) -> None:
        """Append an ephemeral record."""
        if self.live:
            self._append(room, value)

    def _append(self, room: str, value: bytes) -> None:
        if not self.live:
            # Before start, offsets are not yet numbered after what history holds.
            raise BusUnavailable("the bus is not running")
        record = Record(room, 0, self._next_offset, value, int(time.time() * 1000))
        self._next_offset += 1
        self._pending.append(record)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._deliver is not None and self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if batch and self._deliver is not None:
            self._deliver(batch)

    @property
    def live(self) -> bool:
        """Live between start and close."""
        return self._deliver is not None and not self._closed

    async def check(self) -> str | None:
        """The embedded bus answers while it is open."""
        return None if self.live else "not started" if not self._closed else "closed"

    async def close(self) -> None:
        """Deliver what is pending, then refuse new records."""
        self._flush()
        self._closed = True
