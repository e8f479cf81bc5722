"""The local mirror of the service subtree, keyed by entryUUID, and the cookie beside it.

The mirror is a small SQLite database next to COOKIE_FILE (`<COOKIE_FILE>.mirror`).
It has to persist: after a restart slapd sends only what changed since the cookie
(or, without its session log, the UUIDs of what is still there), so the entries that
did not change must already be here. Changes and the cookie that covers them are
committed in one transaction; COOKIE_FILE, which operators know from the original
daemon, is rewritten atomically after that commit, never before.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from provbackup.directory.dn import normalize_dn, parent_dn
from provbackup.directory.entry import Entry
from provbackup.directory.schema import STATE

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    uuid    TEXT PRIMARY KEY,
    dn      TEXT NOT NULL,
    ndn     TEXT NOT NULL,
    parent  TEXT NOT NULL,
    pending INTEGER NOT NULL,   -- sstProvisioningState is "0": a request may wait here
    attrs   TEXT NOT NULL       -- JSON: attribute name -> list of values
);
CREATE INDEX IF NOT EXISTS entries_ndn ON entries (ndn);
CREATE INDEX IF NOT EXISTS entries_parent ON entries (parent);
CREATE INDEX IF NOT EXISTS entries_pending ON entries (pending) WHERE pending = 1;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
"""


class CookieFile:
    """COOKIE_FILE: one line, the raw cookie; written atomically, read leniently."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> bytes | None:
        """The stored cookie, or None when absent or not a cookie slapd can resume from."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        # A trailing newline makes slapd ignore the cookie (docs/syncrepl.md).
        cookie = raw.strip(b"\r\n")
        if not cookie.startswith(b"rid="):
            log.warning("%s does not hold a syncrepl cookie; starting with a full refresh",
                        self.path)
            return None
        return cookie

    def write(self, cookie: bytes) -> None:
        """Replace the file's content with `cookie`: temporary file, fsync, rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(cookie + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def remove(self) -> None:
        """Forget the cookie (the next start refreshes fully)."""
        self.path.unlink(missing_ok=True)


class Mirror:
    """The entries of the followed subtree, with the refresh-phase bookkeeping."""

    def __init__(self, cookie_file: Path, database: Path | None = None) -> None:
        self.cookie_file = CookieFile(cookie_file)
        path = database or cookie_file.with_name(cookie_file.name + ".mirror")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._in_transaction = False
        self._seen: set[str] | None = None

    # -- the cookie ---------------------------------------------------------------

    def resume_cookie(self) -> bytes | None:
        """The cookie to resume from, or None (and an emptied mirror) for a full refresh."""
        cookie = self.cookie_file.read()
        with self._lock:
            stored = self._meta("cookie")
        if cookie is None or stored is None:
            # Without both, unchanged entries would be missing: start from nothing.
            self.clear()
            return None
        return cookie

    def commit(self, cookie: bytes | None = None) -> None:
        """Make the applied changes durable; then, if given, store the cookie covering them."""
        usable = bool(cookie) and cookie.startswith(b"rid=")
        with self._lock:
            self._begin()
            if usable:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('cookie', ?)", (cookie,))
            self._db.execute("COMMIT")
            self._in_transaction = False
        if usable:
            self.cookie_file.write(cookie)

    def clear(self) -> None:
        """Drop every entry and the cookie (e.g. after e-syncRefreshRequired)."""
        with self._lock:
            self._begin()
            self._db.execute("DELETE FROM entries")
            self._db.execute("DELETE FROM meta")
            self._db.execute("COMMIT")
            self._in_transaction = False
        self.cookie_file.remove()

    # -- changes (the consumer's hooks) -------------------------------------------

    def upsert(self, uuid: str, dn: str, attributes: dict[str, list[str]]) -> Entry:
        """Store the whole entry under its entryUUID (adds and modifies alike)."""
        entry = Entry.from_dict(dn, attributes)
        pending = int(entry.first(STATE) == "0")
        with self._lock:
            self._begin()
            self._db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                (uuid, dn, normalize_dn(dn), normalize_dn(parent_dn(dn)), pending,
                 json.dumps({k: list(v) for k, v in entry.attributes.items()})))
            if self._seen is not None:
                self._seen.add(uuid)
        return entry

    def delete(self, uuids: Iterable[str]) -> int:
        """Forget entries by entryUUID; returns how many were known."""
        with self._lock:
            self._begin()
            return sum(self._db.execute("DELETE FROM entries WHERE uuid = ?", (u,)).rowcount
                       for u in uuids)

    def start_refresh(self) -> None:
        """A refresh phase begins: remember every UUID the server mentions."""
        self._seen = set()

    def present(self, uuids: Iterable[str]) -> None:
        """The server says these entries still exist, unchanged."""
        if self._seen is not None:
            self._seen.update(uuids)

    def end_refresh(self, present_phase: bool) -> int:
        """The refresh is over; after a present phase drop what was not mentioned."""
        seen, self._seen = self._seen or set(), None
        if not present_phase:
            return 0
        with self._lock:
            known = [row[0] for row in self._db.execute("SELECT uuid FROM entries")]
        gone = [u for u in known if u not in seen]
        return self.delete(gone)

    # -- lookups ------------------------------------------------------------------

    def get(self, dn: str) -> Entry | None:
        """The entry at `dn` (case and spacing of the DN do not matter)."""
        rows = self._query("SELECT dn, attrs FROM entries WHERE ndn = ?", (normalize_dn(dn),))
        return next(rows, None)

    def children(self, dn: str) -> list[Entry]:
        """The entries directly below `dn`."""
        return list(self._query("SELECT dn, attrs FROM entries WHERE parent = ? ORDER BY ndn",
                                (normalize_dn(dn),)))

    def subtree(self, dn: str) -> list[Entry]:
        """The entry at `dn` and everything below it, parents before children."""
        base = normalize_dn(dn)
        suffix = "," + base
        return sorted(self._query(
            "SELECT dn, attrs FROM entries WHERE ndn = ? OR substr(ndn, -?) = ?",
            (base, len(suffix), suffix)), key=lambda e: len(e.key))

    def pending(self) -> list[Entry]:
        """Every entry whose sstProvisioningState is 0 (requests may wait there)."""
        return list(self._query("SELECT dn, attrs FROM entries WHERE pending = 1", ()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        """Close the database (uncommitted changes are lost, as after a crash)."""
        with self._lock:
            self._db.close()

    # -- internals ----------------------------------------------------------------

    def _begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True

    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def _query(self, sql: str, params: tuple) -> Iterator[Entry]:
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return (Entry.from_dict(dn, json.loads(attrs)) for dn, attrs in rows)
