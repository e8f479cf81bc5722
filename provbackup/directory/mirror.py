"""The local mirror of the service subtree, keyed by entryUUID, and the cookie beside it.

The mirror is a small SQLite database next to COOKIE_FILE (`<COOKIE_FILE>.mirror`).
It has to persist: after a restart slapd sends only what changed since the cookie
(or, without its session log, the UUIDs of what is still there), so the entries that
did not change must already be here. Changes and the cookie that covers them are
committed in one transaction; COOKIE_FILE, which operators know from the original
daemon, is rewritten atomically after that commit, never before.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import re
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Iterable

from provbackup.directory import wire
from provbackup.directory.dn import normalize_dn, normalize_plain, split_normalized
from provbackup.directory.entry import Entry
from provbackup.directory.schema import STATE

log = logging.getLogger(__name__)

# Version 2: attributes kept as the server's BER bytes; the DN as a path of RDNs, root
# first, so that a subtree is one index range. A mirror of another version is dropped
# (a full refresh rebuilds it).
FORMAT = b"2"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    uuid    TEXT PRIMARY KEY,
    dn      TEXT NOT NULL,      -- as the server sent it
    path    TEXT NOT NULL,      -- normalized RDNs, root first, joined by _SEP below
    pending INTEGER NOT NULL,   -- sstProvisioningState is "0": a request may wait here
    attrs   BLOB NOT NULL       -- the PartialAttributeList as the server sent it
);
CREATE INDEX IF NOT EXISTS entries_path ON entries (path);
CREATE INDEX IF NOT EXISTS entries_pending ON entries (pending) WHERE pending = 1;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
"""
_INSERT = "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)"
BATCH = 512  # entries handed to the writer thread at once
_SEP = "\x01"  # below every character a DN holds; NUL is avoided (C strings)
_STATE_NAME = re.compile(b"(?i:" + STATE.encode() + b")").search
_STATE_LOWER = STATE.lower().encode()


# A DN already in normal form but for case: single-valued RDNs, no escapes, no spaces
# next to a separator. Nearly every DN slapd sends is one; its path is then made with
# str methods alone, a third of the time of _path below (a refresh makes 90,000).
_VALUE = r'[^\s,=\\"+;<>#](?:[^,=\\"+;<>#]*[^\s,=\\"+;<>#])?'
_RDN = r"[A-Za-z][A-Za-z0-9-]*=" + _VALUE
_CANONICAL = re.compile(f"{_RDN}(?:,{_RDN})*").fullmatch


def dn_path(dn: str) -> str:
    """The normalized RDNs of `dn`, root first, joined by _SEP: one index covers get(),
    children(), subtree() and named(), and each row stays small (a refresh writes
    every one of them)."""
    if _CANONICAL(dn):
        parts = dn.lower().split(",")
        parts.reverse()
        return _SEP.join(parts)
    return _path(dn)


@functools.lru_cache(maxsize=8192)
def _path(dn: str) -> str:
    """The normalized RDNs of `dn`, root first, joined by _SEP.

    Built from the parent's path, which the cache almost always holds: a refresh
    sends an entry's siblings and children next to it, so each DN is parsed once.
    """
    rdn, comma, parent = dn.partition(",")
    plain = normalize_plain(rdn) if "\\" not in dn and (parent or not comma) else None
    if plain is None:  # escapes: the full parser, on the whole DN
        parts = split_normalized(normalize_dn(dn))
        parts.reverse()
        return _SEP.join(parts)
    return _path(parent) + _SEP + plain if parent else plain


def _pending(blob: bytes) -> bool:
    """Whether the entry's first sstProvisioningState value is "0".

    Most entries are not backup leaves: where the name does not occur at all (one
    regular-expression search), the attribute cannot be there. Otherwise the
    attribute list is walked, looking at types only, never inside other values.
    """
    if not _STATE_NAME(blob):
        return False
    pos, end = 0, len(blob)
    while pos < end:
        _, start, pos = wire.element(blob, pos, end)
        _, t_start, t_stop = wire.element(blob, start, pos)
        if blob[t_start:t_stop].lower() == _STATE_LOWER:
            _, v_start, v_stop = wire.element(blob, t_stop, pos)
            if v_start == v_stop:
                return False
            _, f_start, f_stop = wire.element(blob, v_start, v_stop)
            return blob[f_start:f_stop] == b"0"
    return False


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
        self._path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # A rollback journal, not WAL: one connection only, and a first refresh writes
        # every page once instead of twice (WAL, then the checkpoint): 0.3 s, not 0.7 s,
        # to commit 10,000 VMs. TRUNCATE keeps the journal file instead of unlinking it.
        self._db.execute("PRAGMA journal_mode=TRUNCATE")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # 16 MiB of page cache: the indexes of 10,000 VMs stay in memory during a refresh.
        self._db.execute("PRAGMA cache_size=-16384")
        self._lock = threading.RLock()
        self._in_transaction = False
        self._seen: set[str] | None = None
        # Stored entries are written in batches by a thread of their own: SQLite does
        # its part without the GIL while the consumer decodes the next entries, which
        # makes a first refresh of 10,000 VMs about a third faster. Every other access
        # first waits for what is under way (_sync), so the order of changes holds.
        self._rows: list[tuple] = []
        self._writing: concurrent.futures.Future | None = None
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "mirror-writer")
        self._open_format()

    # -- the cookie ---------------------------------------------------------------

    def resume_cookie(self) -> bytes | None:
        """The cookie to resume from, or None (and an emptied mirror) for a full refresh."""
        cookie = self.cookie_file.read()
        with self._lock:
            self._sync()
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
            self._sync()
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
            self._sync()
            self._begin()
            self._db.execute("DELETE FROM entries")
            self._db.execute("DELETE FROM meta WHERE key != 'format'")
            self._db.execute("COMMIT")
            self._in_transaction = False
        self.cookie_file.remove()

    # -- changes (the consumer's hooks) -------------------------------------------

    def upsert(self, uuid: str, dn: str, attributes: dict[str, list[str]]) -> Entry:
        """Store the whole entry under its entryUUID (adds and modifies alike)."""
        self.store(uuid, dn, wire.encode_attributes(attributes))
        return Entry.from_dict(dn, attributes)

    @staticmethod
    def row(uuid: str, dn: str, blob: bytes) -> tuple:
        """The table row of an entry (bench/refresh_parts.py times this alone)."""
        return uuid, dn, dn_path(dn), int(_pending(blob)), blob

    def store(self, uuid: str, dn: str, blob: bytes) -> None:
        """Store an entry as received: `blob` is its PartialAttributeList's content."""
        row = self.row(uuid, dn, blob)
        with self._lock:
            self._rows.append(row)
            if self._seen is not None:
                self._seen.add(uuid)
            if len(self._rows) >= BATCH:
                self._settle()
                self._begin()
                rows, self._rows = self._rows, []
                self._writing = self._writer.submit(self._db.executemany, _INSERT, rows)

    def delete(self, uuids: Iterable[str]) -> int:
        """Forget entries by entryUUID; returns how many were known."""
        with self._lock:
            self._sync()
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
            self._sync()
            known = [row[0] for row in self._db.execute("SELECT uuid FROM entries")]
        gone = [u for u in known if u not in seen]
        return self.delete(gone)

    # -- lookups ------------------------------------------------------------------

    def get(self, dn: str) -> Entry | None:
        """The entry at `dn` (case and spacing of the DN do not matter)."""
        rows = self._query("SELECT dn, attrs FROM entries WHERE path = ?", (dn_path(dn),))
        return next(iter(rows), None)

    def children(self, dn: str) -> list[Entry]:
        """The entries directly below `dn`."""
        path = dn_path(dn)
        return self._query("SELECT dn, attrs FROM entries WHERE path > ? AND path < ? "
                           "AND instr(substr(path, ?), ?) = 0 ORDER BY path",
                           (path + _SEP, path + "\x02", len(path) + 2, _SEP))

    def subtree(self, dn: str) -> list[Entry]:
        """The entry at `dn` and everything below it, parents before children."""
        path = dn_path(dn)
        # Below `path` is exactly the range [path + \x01, path + \x02): one index range.
        return self._query("SELECT dn, attrs FROM entries WHERE path = ? OR "
                           "(path > ? AND path < ?) ORDER BY path",
                           (path, path + _SEP, path + "\x02"))

    def named(self, rdn: str, base: str) -> list[Entry]:
        """The entries with leftmost RDN `rdn` (e.g. cn=x) anywhere below `base`."""
        path, last = dn_path(base), _SEP + normalize_dn(rdn)
        return self._query("SELECT dn, attrs FROM entries WHERE path > ? AND path < ? "
                           "AND substr(path, ?) = ? ORDER BY path",
                           (path + _SEP, path + "\x02", -len(last), last))

    def pending(self) -> list[Entry]:
        """Every entry whose sstProvisioningState is 0 (requests may wait there)."""
        return self._query("SELECT dn, attrs FROM entries WHERE pending = 1", ())

    def __len__(self) -> int:
        with self._lock:
            self._sync()
            return self._db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        """Close the database (uncommitted changes are lost, as after a crash)."""
        with self._lock:
            self._settle()
            self._writer.shutdown()
            self._db.close()

    # -- internals ----------------------------------------------------------------

    def _settle(self) -> None:
        """Wait for the batch the writer has (its error, if any, is raised here)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _sync(self) -> None:
        """Everything stored so far is in the database (in the open transaction)."""
        self._settle()
        if self._rows:
            self._begin()
            rows, self._rows = self._rows, []
            self._db.executemany(_INSERT, rows)

    def _begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True

    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def _query(self, sql: str, params: tuple) -> list[Entry]:
        with self._lock:
            self._sync()
            rows = self._db.execute(sql, params).fetchall()
        return [Entry(dn, wire.decode_attributes(attrs)) for dn, attrs in rows]

    def _open_format(self) -> None:
        """Create the tables, or drop a mirror of another format (a full refresh follows)."""
        with self._lock:
            tables = {row[0] for row in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            stored = self._meta("format") if "meta" in tables else None
            if tables and stored != FORMAT:
                log.warning("%s is a mirror of another version; starting with a full refresh",
                            self._path)
                self._db.executescript("DROP TABLE IF EXISTS entries; DROP TABLE IF EXISTS meta;")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (FORMAT,))
