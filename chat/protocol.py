"""The wire protocol: WebSocket frames as msgspec structs, their codecs and limits."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Annotated, Final, Literal

import msgspec

MAX_FRAME_BYTES: Final = 16 * 1024
MAX_TEXT_CHARS: Final = 2000
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 100

ROOM_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
USERNAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,24}")

ErrorCode = Literal[
    "bad_frame",
    "unknown_type",
    "unauthorized",
    "invalid_room",
    "not_joined",
    "empty_text",
    "text_too_long",
    "rate_limited",
    "unavailable",
]

Cid = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
PageSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)]


class Frame(msgspec.Struct, tag_field="type", forbid_unknown_fields=False):
    """Base of every frame: a JSON object with a `type`."""


# Client to server.


class Auth(Frame, tag="auth"):
    """Who this connection is."""

    token: str


class Join(Frame, tag="join"):
    """Subscribe to a room, optionally resuming after the last message seen there."""

    room: str
    since: str | None = None


class Leave(Frame, tag="leave"):
    """Unsubscribe from a room."""

    room: str


class Send(Frame, tag="send"):
    """Post a message; `cid` is the client's own id for it."""

    room: str
    text: str
    cid: Cid


class HistoryRequest(Frame, tag="history"):
    """Ask for messages older than `before` (the latest ones when it is null)."""

    room: str
    before: str | None = None
    limit: PageSize = DEFAULT_PAGE


class Typing(Frame, tag="typing"):
    """This user is typing in a room."""

    room: str


class Ping(Frame, tag="ping"):
    """Keep-alive."""


ClientFrame = Auth | Join | Leave | Send | HistoryRequest | Typing | Ping
CLIENT_TYPES: Final = frozenset(("auth", "join", "leave", "send", "history", "typing", "ping"))


# Server to client.


class Ready(Frame, tag="ready"):
    """Sent after a valid auth."""

    user: str
    instance: str


class Message(Frame, tag="message"):
    """One chat message; also the record carried by the bus and kept in history."""

    room: str
    id: str
    user: str
    text: str
    ts: int
    cid: str


class Joined(Frame, tag="joined"):
    """The answer to join: the messages to show, and who is online."""

    room: str
    messages: list[msgspec.Raw]
    has_more: bool
    users: list[str]
    reset: bool


class History(Frame, tag="history"):
    """The answer to a history request."""

    room: str
    messages: list[msgspec.Raw]
    has_more: bool


class TypingNotice(Frame, tag="typing"):
    """Someone else is typing."""

    room: str
    user: str


class Presence(Frame, tag="presence"):
    """The room's online users changed."""

    room: str
    users: list[str]


class Pong(Frame, tag="pong"):
    """The answer to ping."""


class Error(Frame, tag="error", omit_defaults=True):
    """A refused frame."""

    code: ErrorCode
    message: str
    cid: str | None = None


class PresenceChanged(Frame, tag="presence_changed"):
    """Bus-only event: some instance changed a room's presence."""

    room: str


BusEvent = Message | TypingNotice | PresenceChanged


class FrameError(Exception):
    """A client frame that cannot be decoded; carries the error code to send back."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


_client_decoder: Final = msgspec.json.Decoder(ClientFrame)
_bus_decoder: Final = msgspec.json.Decoder(BusEvent)
_message_decoder: Final = msgspec.json.Decoder(Message)
_encoder: Final = msgspec.json.Encoder()


def decode_client_frame(data: bytes | str) -> ClientFrame:
    """Decode one client frame or raise FrameError with bad_frame or unknown_type."""
    try:
        return _client_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _classify(data, str(exc)) from None
    except msgspec.DecodeError:
        raise FrameError("bad_frame", "frame is not valid JSON") from None


def _classify(data: bytes | str, reason: str) -> FrameError:
    """Tell an unknown type apart from a malformed frame of a known type."""
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:  # pragma: no cover - decode_client_frame parsed it already
        return FrameError("bad_frame", "frame is not valid JSON")
    if not isinstance(obj, dict):
        return FrameError("bad_frame", "frame must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return FrameError("bad_frame", "frame must have a string `type`")
    if kind not in CLIENT_TYPES:
        return FrameError("unknown_type", f"unknown frame type {kind[:40]!r}")
    return FrameError("bad_frame", reason)


def decode_bus_event(data: bytes) -> BusEvent:
    """Decode a record carried by the bus."""
    return _bus_decoder.decode(data)


def decode_message(data: bytes) -> Message:
    """Decode one stored message."""
    return _message_decoder.decode(data)


def encode(frame: Frame) -> bytes:
    """Encode a frame to JSON bytes, once for every recipient."""
    return _encoder.encode(frame)


def error(code: ErrorCode, message: str, cid: str | None = None) -> bytes:
    """Encode an error frame."""
    return _encoder.encode(Error(code=code, message=message, cid=cid))


def message_id(room: str, user: str, cid: str) -> str:
    """Derive a message's id from who sent it and their cid, so a retry names the same message."""
    digest = hashlib.blake2b(f"{room}\x00{user.lower()}\x00{cid}".encode(), digest_size=12).digest()
    return base64.b32encode(digest).decode().rstrip("=").lower()


def valid_room(room: str) -> bool:
    """Whether a room name follows the contract."""
    return ROOM_RE.fullmatch(room) is not None


def valid_username(name: str) -> bool:
    """Whether a username follows the contract."""
    return USERNAME_RE.fullmatch(name) is not None
