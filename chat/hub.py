"""The local hub: which of this instance's connections are in which room."""

from __future__ import annotations

from collections.abc import Iterator

from chat.connection import Connection, wire_frame


class Hub:
    """Fans encoded frames out to local connections; knows sockets, not the bus."""

    def __init__(self) -> None:
        self._rooms: dict[str, set[Connection]] = {}
        self._users: dict[str, set[Connection]] = {}

    @property
    def connections(self) -> list[Connection]:
        """Every authenticated connection on this instance."""
        return [conn for conns in self._users.values() for conn in conns]

    def connect(self, conn: Connection) -> None:
        """Register an authenticated connection."""
        self._users.setdefault(conn.user, set()).add(conn)

    def disconnect(self, conn: Connection) -> list[str]:
        """Forget a connection; return the rooms its user no longer has any connection in."""
        gone = [room for room in list(conn.rooms) if self.leave(conn, room)]
        users = self._users.get(conn.user)
        if users is not None:
            users.discard(conn)
            if not users:
                del self._users[conn.user]
        return gone

    def connection_count(self, user: str) -> int:
        """How many connections a user has on this instance."""
        return len(self._users.get(user, ()))

    def join(self, conn: Connection, room: str) -> bool:
        """Subscribe, holding frames back until go_live; True if the user is new in the room."""
        newcomer = not self._present(conn.user, room)
        conn.rooms[room] = []
        self._rooms.setdefault(room, set()).add(conn)
        return newcomer

    def go_live(self, conn: Connection, room: str, through: int) -> None:
        """Release held-back frames newer than what the join answer carried up to `through`."""
        held = conn.rooms.get(room)
        if not isinstance(held, list):
            return
        conn.rooms[room] = through
        for offset, frame in held:
            if offset < 0 or offset > through:
                conn.send(frame)

    def leave(self, conn: Connection, room: str) -> bool:
        """Unsubscribe; True if that was the user's last connection in the room here."""
        if room not in conn.rooms:
            return False
        del conn.rooms[room]
        members = self._rooms.get(room)
        if members is not None:
            members.discard(conn)
            if not members:
                del self._rooms[room]
        return not self._present(conn.user, room)

    def _present(self, user: str, room: str) -> bool:
        return any(room in c.rooms for c in self._users.get(user, ()))

    def has_room(self, room: str) -> bool:
        """Whether any local connection is in a room."""
        return room in self._rooms

    def rooms(self) -> list[str]:
        """Rooms with at least one local connection."""
        return list(self._rooms)

    def presence(self) -> Iterator[tuple[str, str]]:
        """Every (room, user) pair present on this instance."""
        for room, members in self._rooms.items():
            for user in {c.user for c in members}:
                yield room, user

    def broadcast(
        self,
        room: str,
        frame: bytes,
        *,
        offset: int = -1,
        exclude_user: str | None = None,
    ) -> int:
        """Queue one encoded frame for every local connection in a room; never waits.

        `offset` is the message's place in the room's log (-1 for ephemeral frames): a
        connection whose join answer already reached it does not get it twice, which
        happens when another instance wrote history before this one consumed the record.
        """
        members = self._rooms.get(room)
        if not members:
            return 0
        wire = wire_frame(frame)  # once, shared by every recipient
        sent = 0
        for conn in tuple(members):
            if conn.user == exclude_user:
                continue
            state = conn.rooms.get(room)
            if isinstance(state, list):
                state.append((offset, frame))
            elif (offset < 0 or state is None or offset > state) and conn.send_wire(frame, wire):
                sent += 1
        return sent
