"""The distributed user registry: usernames and presence in Redis, shared by every instance."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from chat.errors import Unavailable
from chat.redis_client import answer
from chat.registry.base import UserRegistry
from chat.settings import Secret


class RegistryUnavailable(Unavailable):
    """Redis did not answer."""


class RedisRegistry(UserRegistry):
    """Usernames claimed with HSETNX; presence as per-room sorted sets scored by expiry."""

    def __init__(
        self,
        redis: Redis,
        secret_key: Secret,
        *,
        prefix: str,
        instance_id: str,
        ttl: float,
    ) -> None:
        super().__init__(secret_key)
        self.name = "redis"
        self._redis = redis
        self._prefix = prefix
        self._instance = instance_id
        self._ttl_ms = int(ttl * 1000)

    def _presence(self, room: str) -> str:
        return f"{self._prefix}presence:{room}"

    def _member(self, user: str) -> str:
        # Per instance, so one instance's leave does not hide the user's tabs on another.
        return f"{self._instance}\x00{user}"

    async def _claim(self, key: str, username: str) -> bool:
        return bool(await self._call(self._redis.hsetnx(f"{self._prefix}users", key, username)))

    async def enter(self, room: str, user: str) -> None:
        """Mark a user online here until the TTL runs out without a refresh."""
        expiry = time.time() * 1000 + self._ttl_ms
        await self._call(self._redis.zadd(self._presence(room), {self._member(user): expiry}))

    async def leave(self, room: str, user: str) -> None:
        """Remove this instance's presence entry for a user."""
        await self._call(self._redis.zrem(self._presence(room), self._member(user)))

    async def online(self, room: str) -> list[str]:
        """Users with an unexpired entry from any instance; expired ones are pruned."""
        key = self._presence(room)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", time.time() * 1000)
            pipe.zrange(key, 0, -1)
            _, members = await self._call(pipe.execute())
        return sorted({bytes(m).split(b"\x00", 1)[1].decode() for m in members})

    async def refresh(self, present: Iterable[tuple[str, str]]) -> None:
        """Push every local (room, user) expiry forward."""
        expiry = time.time() * 1000 + self._ttl_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            for room, user in present:
                pipe.zadd(self._presence(room), {self._member(user): expiry})
            await self._call(pipe.execute())

    async def check(self) -> str | None:
        """PING Redis."""
        await self._call(self._redis.ping())
        return None

    async def _call(self, pending: Any) -> Any:
        return await answer(pending, RegistryUnavailable)
