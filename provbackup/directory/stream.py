"""One never-ending search, read straight from the socket of a bound connection.

ldap3 opens, secures (StartTLS or ldaps) and binds the connection; from then on this
module owns its socket. Reading it here rather than through ldap3's asynchronous
strategy gives three things a node following a large directory needs: the first
refresh is decoded at the speed of wire.py, not of ldap3's generic decoder; a
consumer that falls behind leaves the data in the kernel's socket buffer (TCP flow
control), where ldap3 would queue every decoded entry in memory; and a read timeout
that works (ldap3 2.9.1's receiver thread spins on a closed socket when given one).
"""

from __future__ import annotations

import socket
import ssl

import ldap3

from provbackup.directory import wire

READ_SIZE = 256 * 1024
# Far above what ldap3 uses for the bind and StartTLS on this connection.
SEARCH_ID = 0x7FFF0001


class StreamClosed(Exception):
    """The server closed the connection, or it broke."""


class SearchStream:
    """Sends one search on `conn` and returns its messages one by one."""

    def __init__(self, conn: ldap3.Connection, poll: float) -> None:
        self._conn = conn
        self._sock: socket.socket = conn.socket
        self._sock.settimeout(poll)
        self._buffer = bytearray()
        self._pos = 0

    def search(self, base: str, controls: list[tuple[str, bool, bytes | None]]) -> None:
        """Ask for every entry below `base` with all user attributes."""
        self._send(wire.search_request(SEARCH_ID, base, "objectClass", ["*"], controls))

    def next(self) -> wire.Message | None:
        """The next message of the search, or None if none came within `poll` seconds."""
        while True:
            message = self._take()
            if message is not None:
                return message
            if not self._receive():
                return None

    def close(self) -> None:
        """Abandon the search (politely, if the connection still works) and unbind."""
        try:
            self._send(wire.abandon_request(SEARCH_ID + 1, SEARCH_ID))
        except StreamClosed:
            pass
        try:
            self._conn.unbind()
        except Exception:  # noqa: BLE001 - closing a connection that may be broken
            pass

    # -- internals --------------------------------------------------------------

    def _take(self) -> wire.Message | None:
        size = wire.frame_size(self._buffer, self._pos)
        if size is None or len(self._buffer) - self._pos < size:
            return None
        start = self._pos
        self._pos += size
        data = bytes(self._buffer[start:self._pos])
        if self._pos > READ_SIZE:  # drop what was read, now and then, not per message
            del self._buffer[:self._pos]
            self._pos = 0
        return wire.parse(data)

    def _receive(self) -> bool:
        """Read what the socket has; False after a timeout without data."""
        try:
            chunk = self._sock.recv(READ_SIZE)
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        except (OSError, ValueError) as e:  # ValueError: the socket was closed under us
            raise StreamClosed(f"reading from the directory failed: {e}") from None
        if not chunk:
            raise StreamClosed("the server closed the connection")
        self._buffer += chunk
        return True

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except (OSError, ValueError) as e:
            raise StreamClosed(f"writing to the directory failed: {e}") from None
