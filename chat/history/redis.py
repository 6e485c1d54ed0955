"""The distributed history store: per-room sorted sets in Redis, ordered by bus offset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from chat.history.base import Entry, HistoryStore, HistoryUnavailable, Page
from chat.redis_client import answer

DEDUP_WINDOW_S = 600

# One call per batch, so a batch is stored whole or not at all. Per entry: 1 when stored
# (or already stored from this very record), 0 when the id is kept at another offset
# (a re-sent message that the bus carried twice). The position marker advances either way.
_APPEND = """
local limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local positions = KEYS[#KEYS]
local results = {}
for i = 0, (#KEYS - 1) / 3 - 1 do
  local order, frames, recent = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  local id, raw_offset = ARGV[3 + i * 4], ARGV[4 + i * 4]
  local offset = tonumber(raw_offset)
  local partition, frame = ARGV[5 + i * 4], ARGV[6 + i * 4]
  local known = redis.call('ZSCORE', order, id)
  if not known then
    local held = redis.call('GET', recent)
    if held then known = string.sub(held, 1, string.find(held, '\\n', 1, true) - 1) end
  end
  if known then
    results[i + 1] = (tonumber(known) == offset) and 1 or 0
  else
    redis.call('ZADD', order, raw_offset, id)
    redis.call('HSET', frames, id, frame)
    redis.call('SET', recent, raw_offset .. '\\n' .. frame, 'EX', ttl)
    local size = redis.call('ZCARD', order)
    if size > limit then
      local old = redis.call('ZRANGE', order, 0, size - limit - 1)
      redis.call('ZREMRANGEBYRANK', order, 0, size - limit - 1)
      for _, gone in ipairs(old) do redis.call('HDEL', frames, gone) end
    end
    results[i + 1] = 1
  end
  local stored = tonumber(redis.call('HGET', positions, partition) or '-1')
  if offset > stored then redis.call('HSET', positions, partition, raw_offset) end
end
return results
"""

# Reads one page atomically, so a concurrent trim never leaves an id without its frame.
# Returns false for an unknown id (after), else {has_more, through, frame, frame, ...}.
_PAGE = """
local order, frames = KEYS[1], KEYS[2]
local mode, id, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids, more, through = {}, 0, '-1'
if mode == 'latest' then
  ids = redis.call('ZRANGE', order, -(limit + 1), -1)
  if #ids > limit then table.remove(ids, 1); more = 1 end
else
  local score = redis.call('ZSCORE', order, id)
  if not score then
    if mode == 'after' then return false end
    return {0, through}
  end
  if mode == 'after' then
    ids = redis.call('ZRANGEBYSCORE', order, '(' .. score, '+inf')
    more, through = 1, score
  else
    local newest_first = redis.call('ZREVRANGEBYSCORE', order, '(' .. score, '-inf',
                                    'LIMIT', 0, limit + 1)
    if #newest_first > limit then table.remove(newest_first); more = 1 end
    for i = #newest_first, 1, -1 do ids[#ids + 1] = newest_first[i] end
  end
end
if #ids == 0 then return {more, through} end
if mode ~= 'before' then through = redis.call('ZSCORE', order, ids[#ids]) end
local page = redis.call('HMGET', frames, unpack(ids))
table.insert(page, 1, through)
table.insert(page, 1, more)
return page
"""


class RedisHistory(HistoryStore):
    """Keeps the latest `limit` messages per room; any instance may write any batch."""

    def __init__(self, redis: Redis, prefix: str, limit: int, log: str) -> None:
        self.name = "redis"
        self.limit = limit
        # Offsets order a room only within one log (one Kafka topic): keys are per log.
        self._log = log
        self._redis = redis
        self._prefix = prefix
        self._append = redis.register_script(_APPEND)
        self._page = redis.register_script(_PAGE)

    def _order(self, room: str) -> str:
        return f"{self._prefix}history:{self._log}:{room}:order"

    def _frames(self, room: str) -> str:
        return f"{self._prefix}history:{self._log}:{room}:frames"

    def _recent(self, room: str, message_id: str) -> str:
        return f"{self._prefix}recent:{self._log}:{room}:{message_id}"

    @property
    def _positions(self) -> str:
        return f"{self._prefix}history:positions:{self._log}"

    async def append(self, entries: Sequence[Entry]) -> list[bool]:
        """Store a batch atomically; False where the id is kept at another offset."""
        if not entries:
            return []
        keys: list[str] = []
        args: list[Any] = [self.limit, DEDUP_WINDOW_S]
        for entry in entries:
            keys += [
                self._order(entry.room),
                self._frames(entry.room),
                self._recent(entry.room, entry.id),
            ]
            args += [entry.id, entry.offset, entry.partition, entry.frame]
        keys.append(self._positions)
        results = await self._call(self._append(keys=keys, args=args))
        return [bool(r) for r in results]

    async def _read(self, room: str, mode: str, message_id: str, limit: int) -> Page | None:
        reply = await self._call(
            self._page(keys=[self._order(room), self._frames(room)], args=[mode, message_id, limit])
        )
        if reply is None:
            return None
        more, through, *frames = reply
        # A frame can only be missing if the keys were edited by hand; skip rather than fail.
        return Page([f for f in frames if f is not None], bool(more), int(float(through)))

    async def latest(self, room: str, limit: int) -> Page:
        """The newest `limit` messages."""
        page = await self._read(room, "latest", "", limit)
        assert page is not None
        return page

    async def after(self, room: str, message_id: str) -> Page | None:
        """Everything after a kept id, or None."""
        return await self._read(room, "after", message_id, 0)

    async def before(self, room: str, message_id: str, limit: int) -> Page:
        """Up to `limit` messages older than a kept id."""
        page = await self._read(room, "before", message_id, limit)
        assert page is not None
        return page

    async def find(self, room: str, message_id: str) -> bytes | None:
        """A recently sent or kept message by id."""
        # Both lookups in one round trip: this runs for every send.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._recent(room, message_id))
            pipe.hget(self._frames(room), message_id)
            held, kept = await self._call(pipe.execute())
        if held is not None:
            return bytes(held).split(b"\n", 1)[1]
        return None if kept is None else bytes(kept)

    async def positions(self) -> dict[int, int]:
        """Per partition, the offset up to which every message is stored."""
        stored = await self._call(self._redis.hgetall(self._positions))
        return {int(k): int(v) for k, v in stored.items()}

    async def check(self) -> str | None:
        """PING Redis."""
        await self._call(self._redis.ping())
        return None

    async def _call(self, pending: Any) -> Any:
        return await answer(pending, HistoryUnavailable)
