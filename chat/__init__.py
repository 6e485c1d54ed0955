"""A real-time chat server: aiohttp WebSockets, a message bus and a history store."""

from chat.app import create_app

__all__ = ["create_app"]
