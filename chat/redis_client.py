"""The one Redis client an instance shares between its history store and user registry."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from chat.errors import Unavailable
from chat.settings import Settings

T = TypeVar("T")


def connect(settings: Settings) -> Redis:
    """Build a client from REDIS_URL; it connects lazily, so this does no I/O."""
    assert settings.redis_url is not None
    # rediss:// turns TLS on (Upstash and most hosted Redis require it).
    pool = BlockingConnectionPool.from_url(
        settings.redis_url.reveal(),
        # Wait for a free connection instead of failing under a burst of joins and leaves.
        max_connections=64,
        timeout=5.0,
        socket_timeout=5.0,
        socket_connect_timeout=3.0,
        health_check_interval=15,
        retry_on_timeout=False,
    )
    return Redis(connection_pool=pool)


async def answer(pending: Awaitable[T], unavailable: type[Unavailable]) -> T:
    """Await a Redis call, turning a Redis failure into the caller's kind of Unavailable."""
    try:
        return await pending
    except RedisError as exc:
        raise unavailable(f"redis: {exc}") from exc
