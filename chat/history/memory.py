"""The embedded history store: per-room lists in memory."""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from chat.history.base import Entry, HistoryStore, Page

DEDUP_WINDOW_S = 600.0


@dataclass(slots=True)
class _Room:
    offsets: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def position(self, message_id: str) -> int | None:
        offset = self.index.get(message_id)
        if offset is None:
            return None
        return bisect.bisect_left(self.offsets, offset)


class MemoryHistory(HistoryStore):
    """Keeps the latest `limit` messages of each room for as long as the process lives."""

    name = "memory (embedded, one instance)"

    def __init__(self, limit: int = 1000, dedup_window: float = DEDUP_WINDOW_S) -> None:
        self.limit = limit
        self._dedup_window = dedup_window
        self._rooms: dict[str, _Room] = {}
        # id -> (expiry, offset, frame): answers re-sent cids after the message was trimmed.
        self._recent: OrderedDict[str, tuple[float, int, bytes]] = OrderedDict()
        self._positions: dict[int, int] = {}

    async def append(self, entries: Sequence[Entry]) -> list[bool]:
        """Store a batch; an id already kept at another offset is a duplicate."""
        now = time.monotonic()
        self._expire(now)
        results: list[bool] = []
        for entry in entries:
            room = self._rooms.setdefault(entry.room, _Room())
            known = room.index.get(entry.id)
            if known is None and entry.id in self._recent:
                known = self._recent[entry.id][1]
            if known is not None:
                results.append(known == entry.offset)
                continue
            at = bisect.bisect_left(room.offsets, entry.offset)
            room.offsets.insert(at, entry.offset)
            room.ids.insert(at, entry.id)
            room.frames.insert(at, entry.frame)
            room.index[entry.id] = entry.offset
            self._recent[entry.id] = (now + self._dedup_window, entry.offset, entry.frame)
            self._trim(room)
            results.append(True)
            if entry.offset > self._positions.get(entry.partition, -1):
                self._positions[entry.partition] = entry.offset
        return results

    def _trim(self, room: _Room) -> None:
        excess = len(room.offsets) - self.limit
        if excess > 0:
            for message_id in room.ids[:excess]:
                del room.index[message_id]
            del room.offsets[:excess]
            del room.ids[:excess]
            del room.frames[:excess]

    def _expire(self, now: float) -> None:
        while self._recent:
            _, (expiry, _, _) = next(iter(self._recent.items()))
            if expiry > now:
                break
            self._recent.popitem(last=False)

    async def latest(self, room: str, limit: int) -> Page:
        """The newest `limit` messages."""
        kept = self._rooms.get(room)
        if kept is None:
            return Page([], False)
        through = kept.offsets[-1] if kept.offsets else -1
        return Page(kept.frames[-limit:], len(kept.frames) > limit, through)

    async def after(self, room: str, message_id: str) -> Page | None:
        """Everything after a kept id."""
        kept = self._rooms.get(room)
        at = kept.position(message_id) if kept else None
        if kept is None or at is None:
            return None
        return Page(kept.frames[at + 1 :], True, kept.offsets[-1])

    async def before(self, room: str, message_id: str, limit: int) -> Page:
        """Up to `limit` messages older than a kept id."""
        kept = self._rooms.get(room)
        at = kept.position(message_id) if kept else None
        if kept is None or at is None:
            return Page([], False)
        start = max(0, at - limit)
        return Page(kept.frames[start:at], start > 0)

    async def find(self, room: str, message_id: str) -> bytes | None:
        """A kept or recently sent message by id."""
        kept = self._rooms.get(room)
        if kept is not None and (at := kept.position(message_id)) is not None:
            return kept.frames[at]
        recent = self._recent.get(message_id)
        return recent[2] if recent and recent[0] > time.monotonic() else None

    async def positions(self) -> dict[int, int]:
        """The highest offset stored per partition."""
        return dict(self._positions)

    async def check(self) -> str | None:
        """Memory always answers."""
        return None
