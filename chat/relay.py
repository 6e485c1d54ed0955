"""The relay: carries records from the bus into history and out through the hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence

import msgspec

from chat import protocol
from chat.bus import Bus, Record
from chat.history import Entry, HistoryStore
from chat.hub import Hub
from chat.metrics import Metrics
from chat.registry import UserRegistry

log = logging.getLogger(__name__)

HISTORY_TIMEOUT_S = 2.0
SEEN_IDS = 100_000
BACKLOG_LIMIT = 200_000
PRESENCE_COALESCE_S = 0.5
STOP_TIMEOUT_S = 1.0


class Relay:
    """Writes each batch of messages to history before any local socket sees it.

    Writing first is what closes the join race: a message this instance has broadcast
    is already in history, so a join that subscribes, then reads history, misses nothing.
    If history is down, live chat keeps flowing and the batch waits in a backlog.
    """

    def __init__(
        self,
        hub: Hub,
        history: HistoryStore,
        registry: UserRegistry,
        bus: Bus,
        metrics: Metrics,
        presence_ttl: float,
    ) -> None:
        self._hub = hub
        self._history = history
        self._registry = registry
        self._bus = bus
        self._metrics = metrics
        self._presence_interval = presence_ttl / 3
        self._batches: asyncio.Queue[Sequence[Record]] = asyncio.Queue()
        self._backlog: deque[Entry] = deque()
        self._backlog_wake = asyncio.Event()
        # id -> offset of recent messages: tells a re-sent record from the original.
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._shown_presence: dict[str, list[str]] = {}
        self._presence_due: set[str] = set()
        self._presence_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        metrics.history_backlog.set_function(lambda: len(self._backlog))
        # Bound once: these move for every message.
        self._messages_out = metrics.frames_out.labels("message")
        self._typing_out = metrics.frames_out.labels("typing")
        self._presence_out = metrics.frames_out.labels("presence")

    def deliver(self, batch: Sequence[Record]) -> None:
        """Take a batch from the bus; called on the event loop."""
        self._batches.put_nowait(batch)

    async def start(self) -> None:
        """Start the tasks that handle batches, retry history, and keep presence fresh."""
        self._tasks = [
            asyncio.create_task(self._run_batches(), name="relay-batches"),
            asyncio.create_task(self._run_backlog(), name="relay-history-backlog"),
            asyncio.create_task(self._run_presence(), name="relay-presence"),
        ]

    async def stop(self) -> None:
        """Handle the batches already delivered, then stop; try the backlog once more."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._batches.join(), STOP_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._backlog:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._history.append(list(self._backlog)), STOP_TIMEOUT_S)
                self._backlog.clear()
            if self._backlog:
                log.warning(
                    "%d messages not yet in history; any instance replays them from the bus",
                    len(self._backlog),
                )

    @property
    def history_healthy(self) -> bool:
        """False while history is failing and batches wait in the backlog."""
        return not self._backlog

    async def _run_batches(self) -> None:
        while True:
            batch = await self._batches.get()
            try:
                await self._handle(batch)
            except Exception:
                log.exception("failed to relay a batch of %d records", len(batch))
            finally:
                self._batches.task_done()

    async def _handle(self, batch: Sequence[Record]) -> None:
        self._metrics.batch_size.observe(len(batch))
        events: list[tuple[Record, protocol.BusEvent]] = []
        entries: list[Entry] = []
        for record in batch:
            try:
                event = protocol.decode_bus_event(record.value)
            except msgspec.MsgspecError:
                log.warning("skipping undecodable record %s:%d", record.partition, record.offset)
                continue
            events.append((record, event))
            if isinstance(event, protocol.Message):
                entries.append(
                    Entry(event.room, event.id, record.partition, record.offset, record.value)
                )
        stored = await self._store(entries)
        now_ms = time.time() * 1000
        hub, metrics = self._hub, self._metrics
        for record, event in events:
            if isinstance(event, protocol.Message):
                if not stored.get(event.id, True) or not self._first_sighting(event.id, record):
                    continue
                sent = hub.broadcast(event.room, record.value, offset=record.offset)
                metrics.messages_delivered.inc(sent)
                self._messages_out.inc(sent)
                metrics.deliver_latency.observe(max(0.0, now_ms - record.timestamp_ms) / 1000)
            elif isinstance(event, protocol.TypingNotice):
                sent = hub.broadcast(event.room, record.value, exclude_user=event.user)
                self._typing_out.inc(sent)
            elif hub.has_room(event.room):
                self._presence_due.add(event.room)
                self._presence_wake.set()

    async def _store(self, entries: list[Entry]) -> dict[str, bool]:
        """Write to history in bus order; on failure keep the entries for the backlog task."""
        if not entries:
            return {}
        if not self._backlog:
            try:
                results = await asyncio.wait_for(self._history.append(entries), HISTORY_TIMEOUT_S)
            except Exception as exc:
                self._metrics.history_write_failures.inc()
                log.warning("history write failed, keeping %d messages: %r", len(entries), exc)
            else:
                # A duplicate id in one batch: the first occurrence is the message.
                verdict: dict[str, bool] = {}
                for entry, ok in zip(entries, results, strict=True):
                    verdict.setdefault(entry.id, ok)
                return verdict
        self._backlog.extend(entries)
        while len(self._backlog) > BACKLOG_LIMIT:
            # Bounded memory over completeness: after this, only an instance that was
            # running and writing at the time fills the gap (docs/reliability.md).
            self._backlog.popleft()
            self._metrics.history_dropped.inc()
        self._backlog_wake.set()
        return {}

    def _first_sighting(self, message_id: str, record: Record) -> bool:
        offset = self._seen.get(message_id)
        if offset is not None:
            return offset == record.offset
        self._seen[message_id] = record.offset
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        return True

    async def _run_backlog(self) -> None:
        delay = 0.2
        while True:
            await self._backlog_wake.wait()
            while self._backlog:
                chunk = [self._backlog[i] for i in range(min(500, len(self._backlog)))]
                try:
                    await asyncio.wait_for(self._history.append(chunk), HISTORY_TIMEOUT_S)
                except Exception as exc:
                    log.debug("history still unavailable: %r", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.2
                # The backlog may have been trimmed meanwhile: pop only what was written.
                for entry in chunk:
                    if self._backlog and self._backlog[0] is entry:
                        self._backlog.popleft()
            self._backlog_wake.clear()
            log.info("history caught up")

    async def _run_presence(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self._presence_interval
        while True:
            with contextlib.suppress(TimeoutError):
                timeout = max(0.0, next_refresh - loop.time())
                await asyncio.wait_for(self._presence_wake.wait(), timeout)
            self._presence_wake.clear()
            if self._presence_due:
                # Let a burst of joins settle: one presence frame per room, not one per join.
                await asyncio.sleep(PRESENCE_COALESCE_S)
            due, self._presence_due = self._presence_due, set()
            try:
                if loop.time() >= next_refresh:
                    next_refresh = loop.time() + self._presence_interval
                    # Renew our own presence, and notice users of instances that died.
                    await self._registry.refresh(self._hub.presence())
                    due.update(self._hub.rooms())
                for room in due:
                    await self._show_presence(room)
            except Exception as exc:
                log.warning("presence refresh failed: %r", exc)

    async def _show_presence(self, room: str) -> None:
        if not self._hub.has_room(room):
            self._shown_presence.pop(room, None)
            return
        users = await self._registry.online(room)
        if users != self._shown_presence.get(room):
            self._shown_presence[room] = users
            frame = protocol.encode(protocol.Presence(room=room, users=users))
            sent = self._hub.broadcast(room, frame)
            self._presence_out.inc(sent)

    def presence_changed(self, room: str) -> None:
        """Tell every instance that a room's presence changed."""
        self._bus.signal(room, protocol.encode(protocol.PresenceChanged(room=room)))
