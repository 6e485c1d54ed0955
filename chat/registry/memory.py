"""The embedded user registry: one process's dictionaries."""

from __future__ import annotations

from collections.abc import Iterable

from chat.registry.base import UserRegistry
from chat.settings import Secret


class MemoryRegistry(UserRegistry):
    """Usernames and presence for a single instance."""

    name = "memory (embedded, one instance)"

    def __init__(self, secret_key: Secret) -> None:
        super().__init__(secret_key)
        self._names: dict[str, str] = {}
        self._present: dict[str, set[str]] = {}

    async def _claim(self, key: str, username: str) -> bool:
        if key in self._names:
            return False
        self._names[key] = username
        return True

    async def enter(self, room: str, user: str) -> None:
        """Mark a user online in a room."""
        self._present.setdefault(room, set()).add(user)

    async def leave(self, room: str, user: str) -> None:
        """Mark a user offline in a room."""
        users = self._present.get(room)
        if users is not None:
            users.discard(user)
            if not users:
                del self._present[room]

    async def online(self, room: str) -> list[str]:
        """Users online in a room, sorted."""
        return sorted(self._present.get(room, ()))

    async def refresh(self, present: Iterable[tuple[str, str]]) -> None:
        """Nothing expires in one process."""

    async def check(self) -> str | None:
        """Memory always answers."""
        return None
