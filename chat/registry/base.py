"""The user registry interface: usernames, tokens and presence across instances."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable

from itsdangerous import BadSignature, Signer

from chat.settings import Secret

# Characters that read alike in common UI fonts fold to one; usernames are ASCII only.
_LOOKALIKES = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l"})


class UsernameTaken(Exception):
    """The name, or one that looks like it, belongs to somebody else."""


def skeleton(username: str) -> str:
    """Fold a username so that names differing only in case or look-alike glyphs collide."""
    folded = username.casefold().translate(_LOOKALIKES)
    return folded.replace("rn", "m").replace("vv", "w")


class UserRegistry(abc.ABC):
    """Registers usernames once across instances, signs tokens, tracks who is online where."""

    name: str

    def __init__(self, secret_key: Secret) -> None:
        self._signer = Signer(
            secret_key.reveal(), salt="chat.client-token", digest_method=hashlib.sha256
        )

    def token_for(self, username: str) -> str:
        """Sign a token that names one user."""
        return self._signer.sign(username).decode()

    def authenticate(self, token: str) -> str | None:
        """The username a token names, or None if it was not signed by this deployment."""
        try:
            return self._signer.unsign(token).decode()
        except (BadSignature, UnicodeError, ValueError):
            return None

    async def register(self, username: str) -> str:
        """Claim a username for good and return its token; raise UsernameTaken."""
        if not await self._claim(skeleton(username), username):
            raise UsernameTaken(username)
        return self.token_for(username)

    @abc.abstractmethod
    async def _claim(self, key: str, username: str) -> bool:
        """Atomically record `username` under `key` unless the key is taken."""

    @abc.abstractmethod
    async def enter(self, room: str, user: str) -> None:
        """Mark a user online in a room on this instance."""

    @abc.abstractmethod
    async def leave(self, room: str, user: str) -> None:
        """Mark a user offline in a room on this instance."""

    @abc.abstractmethod
    async def online(self, room: str) -> list[str]:
        """Users online in a room on any live instance, sorted."""

    @abc.abstractmethod
    async def refresh(self, present: Iterable[tuple[str, str]]) -> None:
        """Renew this instance's (room, user) presence so it does not expire."""

    @abc.abstractmethod
    async def check(self) -> str | None:
        """Return None when the registry answers, else what is wrong."""
