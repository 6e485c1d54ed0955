"""The application factory: wires the parts together and does no I/O."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import WSCloseCode, web
from redis.asyncio import Redis

from chat import keys, views
from chat.bus import Bus
from chat.bus.embedded import EmbeddedBus
from chat.bus.kafka import KafkaBus
from chat.errors import Unavailable, error_middleware, security_headers
from chat.history import HistoryStore
from chat.history.memory import MemoryHistory
from chat.history.redis import RedisHistory
from chat.hub import Hub
from chat.metrics import Metrics
from chat.ratelimit import UserLimits
from chat.redis_client import connect as connect_redis
from chat.registry import UserRegistry
from chat.registry.memory import MemoryRegistry
from chat.registry.redis import RedisRegistry
from chat.relay import Relay
from chat.settings import Settings
from chat.ws import websocket_handler

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"


def create_app(
    settings: Settings,
    *,
    bus: Bus | None = None,
    history: HistoryStore | None = None,
    registry: UserRegistry | None = None,
) -> web.Application:
    """Build the application; backends default to what the settings name."""
    app = web.Application(
        middlewares=[security_headers, error_middleware], client_max_size=64 * 1024
    )
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics = Metrics()

    redis_client = None
    if settings.redis_url is not None and (history is None or registry is None):
        redis_client = connect_redis(settings)
        app.cleanup_ctx.append(_close_redis(redis_client))
    if history is None:
        history = (
            RedisHistory(
                redis_client,
                settings.redis_prefix,
                settings.history_limit,
                log=settings.kafka_topic if settings.distributed_bus else "embedded",
            )
            if redis_client is not None
            else MemoryHistory(settings.history_limit)
        )
    if registry is None:
        registry = (
            RedisRegistry(
                redis_client,
                settings.secret_key,
                prefix=settings.redis_prefix,
                instance_id=settings.instance_id,
                ttl=settings.presence_ttl,
            )
            if redis_client is not None
            else MemoryRegistry(settings.secret_key)
        )
    if bus is None:
        bus = KafkaBus(settings, metrics) if settings.distributed_bus else EmbeddedBus()
    metrics.instance.info(
        {"instance": settings.instance_id, "bus": bus.name, "history": history.name}
    )

    hub = Hub()
    app[keys.BUS] = bus
    app[keys.HISTORY] = history
    app[keys.REGISTRY] = registry
    app[keys.HUB] = hub
    app[keys.RELAY] = Relay(hub, history, registry, bus, metrics, settings.presence_ttl)
    app[keys.SEND_LIMITS] = UserLimits(settings.send_rate, settings.send_burst)
    app[keys.FRAME_LIMITS] = UserLimits(settings.frame_rate, settings.frame_burst)

    aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape()
    )
    app.add_routes(views.routes)
    app.router.add_get("/ws", websocket_handler, name="ws")
    app.router.add_static("/static", STATIC, name="static")

    app.cleanup_ctx.extend([_relay, _bus])
    app.on_shutdown.append(_close_sockets)
    return app


def _close_redis(client: Redis) -> Callable[[web.Application], AsyncIterator[None]]:
    async def redis_connection(app: web.Application) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return redis_connection


async def _relay(app: web.Application) -> AsyncIterator[None]:
    relay = app[keys.RELAY]
    await relay.start()
    yield
    await relay.stop()


async def _bus(app: web.Application) -> AsyncIterator[None]:
    """Start consuming where history stops, so nothing the bus took is missing from it.

    If history cannot say where it stops, the consumer waits until it can: starting from
    the end would skip messages that only a dead instance held for history. Until then the
    instance is not ready, and sends are refused with `unavailable`.
    """
    bus, history, relay = app[keys.BUS], app[keys.HISTORY], app[keys.RELAY]
    resume = await _positions(history)
    waiting: asyncio.Task[None] | None = None
    if resume is not None:
        await bus.start(relay.deliver, resume)
    else:
        log.warning("history did not say where it stops; the bus starts once it does")
        waiting = asyncio.create_task(_start_when_history_answers(app))
    yield
    if waiting is not None:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    await bus.close()


async def _positions(history: HistoryStore) -> dict[int, int] | None:
    try:
        return await asyncio.wait_for(history.positions(), 5.0)
    except (TimeoutError, Unavailable):
        return None


async def _start_when_history_answers(app: web.Application) -> None:
    delay = 0.5
    while (resume := await _positions(app[keys.HISTORY])) is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
    log.info("history answered; starting the bus")
    await app[keys.BUS].start(app[keys.RELAY].deliver, resume)


async def _close_sockets(app: web.Application) -> None:
    """Close every socket at once with 1001 so clients reconnect elsewhere."""
    await asyncio.gather(
        *(
            c.close(WSCloseCode.GOING_AWAY, "server shutting down")
            for c in app[keys.HUB].connections
        ),
        return_exceptions=True,
    )
