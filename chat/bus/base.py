"""The bus interface shared by the embedded and the Kafka implementation."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from chat.errors import Unavailable


class Record(NamedTuple):
    """One record as the bus delivered it: its room, its place in the log, and its bytes."""

    room: str
    partition: int
    offset: int
    value: bytes
    timestamp_ms: int


Deliver = Callable[[Sequence[Record]], None]
"""Called on the event loop with each batch, in log order within a partition."""


class BusUnavailable(Unavailable):
    """The bus did not take a record."""


class Bus(abc.ABC):
    """Carries records keyed by room to every instance, in one order per room."""

    name: str

    @abc.abstractmethod
    async def start(self, deliver: Deliver, resume: Mapping[int, int]) -> None:
        """Start delivering; `resume` maps partitions to the last offset already handled."""

    @abc.abstractmethod
    async def publish(self, room: str, value: bytes) -> None:
        """Return once the record is durable; raise BusUnavailable if it was refused."""

    @abc.abstractmethod
    def signal(self, room: str, value: bytes) -> None:
        """Send an ephemeral record (typing, presence), without waiting for it."""

    @property
    @abc.abstractmethod
    def live(self) -> bool:
        """Whether this instance is receiving records now."""

    @abc.abstractmethod
    async def check(self) -> str | None:
        """Return None when the bus answers, else what is wrong."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush what was published and stop delivering."""
