"""The user registry: unique usernames, signed tokens and presence."""

from chat.registry.base import UsernameTaken, UserRegistry, skeleton

__all__ = ["UserRegistry", "UsernameTaken", "skeleton"]
