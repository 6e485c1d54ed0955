"""HTTP views: the two pages, registration, REST history, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable

import aiohttp_jinja2
import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chat import keys, protocol
from chat.errors import json_error
from chat.registry import UsernameTaken

routes = web.RouteTableDef()
CHECK_TIMEOUT_S = 2.0


class Registration(msgspec.Struct, forbid_unknown_fields=False):
    """The body of POST /api/clients."""

    username: str


_registration = msgspec.json.Decoder(Registration)


@routes.get("/", name="index")
@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, object]:
    """The client registration page."""
    return {"title": "Chat"}


@routes.get("/chat/{username}", name="chat")
async def chat_page(request: web.Request) -> web.StreamResponse:
    """The chat page of one client."""
    username = request.match_info["username"]
    room = request.query.get("room", "general")
    if not protocol.valid_username(username):
        return json_error(404, "not_found", "no such client")
    if not protocol.valid_room(room):
        return json_error(400, "invalid_room", "room names are 1-32 of a-z 0-9 _ -")
    return aiohttp_jinja2.render_template(
        "chat.html", request, {"username": username, "room": room}
    )


@routes.post("/api/clients")
async def register(request: web.Request) -> web.Response:
    """Create a client: a unique username and its token."""
    try:
        body = _registration.decode(await request.read())
    except msgspec.MsgspecError:
        return json_error(400, "bad_request", 'send JSON like {"username": "alice"}')
    username = body.username
    if not protocol.valid_username(username):
        return json_error(400, "invalid_username", "usernames are 1 to 24 of A-Z a-z 0-9 _ . -")
    try:
        token = await asyncio.wait_for(request.app[keys.REGISTRY].register(username), 3.0)
    except UsernameTaken:
        return json_error(409, "username_taken", f"{username!r} or a name like it is taken")
    return web.json_response({"username": username, "token": token}, status=201)


@routes.get("/api/rooms/{room}/messages")
async def room_messages(request: web.Request) -> web.Response:
    """A page of a room's history, oldest first."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or request.app[keys.REGISTRY].authenticate(token) is None:
        return json_error(401, "unauthorized", "send Authorization: Bearer <token>")
    room = request.match_info["room"]
    if not protocol.valid_room(room):
        return json_error(400, "invalid_room", "room names are 1-32 of a-z 0-9 _ -")
    raw_limit = request.query.get("limit", str(protocol.DEFAULT_PAGE))
    if not re.fullmatch(r"[0-9]{1,3}", raw_limit) or not 1 <= int(raw_limit) <= protocol.MAX_PAGE:
        return json_error(400, "bad_request", f"limit must be 1 to {protocol.MAX_PAGE}")
    limit = int(raw_limit)
    history = request.app[keys.HISTORY]
    before = request.query.get("before")
    lookup = history.before(room, before, limit) if before else history.latest(room, limit)
    page = await asyncio.wait_for(lookup, 3.0)
    body = b'{"messages":[' + b",".join(page.messages) + b'],"has_more":'
    body += b"true}" if page.has_more else b"false}"
    return web.Response(body=body, content_type="application/json")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Alive while the process serves."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when the backends answer and this instance's consumer is live."""
    app = request.app
    bus, history = app[keys.BUS], app[keys.HISTORY]

    async def probe(check: Awaitable[str | None]) -> str:
        try:
            problem = await asyncio.wait_for(check, CHECK_TIMEOUT_S)
        except Exception as exc:
            return f"down: {exc!r}"
        return "ok" if problem is None else f"down: {problem}"

    bus_state, history_state = await asyncio.gather(probe(bus.check()), probe(history.check()))
    if bus_state == "ok" and not bus.live:
        bus_state = "down: consumer is not live"
    body: dict[str, object] = {"bus": bus_state, "history": history_state}
    if bus_state == "ok" and history_state == "ok":
        return web.json_response(body)
    failing = ", ".join(f"{k} {v}" for k, v in body.items() if v != "ok")
    body["error"] = {"code": "not_ready", "message": failing}
    return web.json_response(body, status=503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    response = web.Response(body=generate_latest(request.app[keys.METRICS].registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
