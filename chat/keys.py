"""Every piece of typed application state, declared in one place."""

from __future__ import annotations

from aiohttp import web

from chat.bus import Bus
from chat.history import HistoryStore
from chat.hub import Hub
from chat.metrics import Metrics
from chat.ratelimit import UserLimits
from chat.registry import UserRegistry
from chat.relay import Relay
from chat.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
BUS = web.AppKey("bus", Bus)
HISTORY = web.AppKey("history", HistoryStore)
REGISTRY = web.AppKey("registry", UserRegistry)
HUB = web.AppKey("hub", Hub)
RELAY = web.AppKey("relay", Relay)
METRICS = web.AppKey("metrics", Metrics)
SEND_LIMITS = web.AppKey("send_limits", UserLimits)
FRAME_LIMITS = web.AppKey("frame_limits", UserLimits)
