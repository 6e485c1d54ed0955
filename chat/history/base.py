"""The history store interface shared by the in-memory and the Redis implementation."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple

from chat.errors import Unavailable


class Entry(NamedTuple):
    """A message to keep: its room, id, place in the bus log, and encoded frame."""

    room: str
    id: str
    partition: int
    offset: int
    frame: bytes


class Page(NamedTuple):
    """Encoded messages, oldest first, and whether older ones exist.

    `through` is the bus offset the page reaches: of its newest message, or for a page
    after an id with nothing newer, of that id. A join answered with this page must not
    deliver that room's records at or below it again (-1: no such bound).
    """

    messages: list[bytes]
    has_more: bool
    through: int = -1


class HistoryUnavailable(Unavailable):
    """The store did not answer."""


class HistoryStore(abc.ABC):
    """Per-room message history in bus order, bounded, written idempotently."""

    name: str
    limit: int

    @abc.abstractmethod
    async def append(self, entries: Sequence[Entry]) -> list[bool]:
        """Store a batch; per entry False when it duplicates an id kept at another offset."""

    @abc.abstractmethod
    async def latest(self, room: str, limit: int) -> Page:
        """The newest `limit` messages of a room."""

    @abc.abstractmethod
    async def after(self, room: str, message_id: str) -> Page | None:
        """Every kept message after `message_id`; None when that id is not kept."""

    @abc.abstractmethod
    async def before(self, room: str, message_id: str, limit: int) -> Page:
        """Up to `limit` messages older than `message_id`; empty when that id is not kept."""

    @abc.abstractmethod
    async def find(self, room: str, message_id: str) -> bytes | None:
        """The stored frame of a message sent recently (de-duplication window) or kept."""

    @abc.abstractmethod
    async def positions(self) -> dict[int, int]:
        """Per bus partition, the offset up to which every message is stored."""

    @abc.abstractmethod
    async def check(self) -> str | None:
        """Return None when the store answers, else what is wrong."""
