"""The syncrepl consumer: one refreshAndPersist search, followed for as long as we run.

It decodes each message (syncproto.py), applies it to the mirror, hands changed
entries to a listener and commits the cookie after that. It never runs a step: the
listener only decides and queues, so a long merge never delays the next message. A
lost connection or a slapd restart is retried with the configured backoff and the
search resumes from the cookie. docs/syncrepl.md says how slapd behaves.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

import ldap3

from provbackup.config import LdapSettings
from provbackup.directory import syncproto, wire
from provbackup.directory.connection import DirectoryError, DirectoryUnavailable, connect
from provbackup.directory.entry import Entry
from provbackup.directory.mirror import Mirror
from provbackup.directory.stream import SearchStream, StreamClosed

log = logging.getLogger(__name__)

#: longest wait between reconnect attempts once the quick retries are used up
MAX_BACKOFF = 300.0
#: how often the loop looks up from the stream (stop requests, a closed connection)
POLL = 0.2
#: longest time a received cookie waits before it is written, while changes keep coming.
#: Writing one costs a commit and two fsyncs: done per change, a burst of a thousand
#: changes for other nodes would hold up this node's next request for seconds.
FLUSH_INTERVAL = 1.0


class Listener(Protocol):
    """What the consumer tells the rest of the daemon."""

    def changed(self, entry: Entry) -> None:
        """An entry was added or modified in the persist phase (already in the mirror)."""

    def refreshed(self) -> None:
        """A refresh phase ended: the mirror is complete and current."""


class _Reconnect(Exception):
    """End this search and start another (`backoff` False: at once, no outage)."""

    def __init__(self, reason: str, backoff: bool = True) -> None:
        super().__init__(reason)
        self.backoff = backoff


def backoff_delay(failures: int, sleep: float, attempts: int) -> float:
    """Seconds to wait after the n-th failure in a row: SLEEP for ATTEMPTS, then doubling."""
    if failures <= attempts:
        return float(sleep)
    return min(MAX_BACKOFF, float(sleep) * 2 ** (failures - attempts))


class SyncreplConsumer:
    """Follows SERVICE_SUBTREE into a Mirror and tells a Listener about changes."""

    def __init__(self, settings: LdapSettings, mirror: Mirror, listener: Listener, *,
                 reconnect_sleep: float = 30, reconnect_attempts: int = 3,
                 connector: Callable[[LdapSettings], ldap3.Connection] | None = None) -> None:
        self.settings = settings
        self.mirror = mirror
        self.listener = listener
        self.reconnect_sleep = reconnect_sleep
        self.reconnect_attempts = reconnect_attempts
        self._connector = connector or (lambda s: connect(s, streaming=True))
        self._stop = threading.Event()
        # The newest cookie received and not yet written: a cookie is written (two
        # fsyncs) when the stream goes quiet, not after each of a burst of changes.
        self._cookie: bytes | None = None
        self._flushed = 0.0
        self._refreshing = True
        self._started = 0.0
        self._stored = self._deleted = 0  # entries received/removed in this search
        self.refreshes = 0  # completed refresh phases, for tests and status

    def stop(self) -> None:
        """Ask the loop to end; it does within POLL seconds."""
        self._stop.set()

    def run(self) -> None:
        """Follow the directory until stop(), reconnecting for ever with backoff."""
        failures = 0
        while not self._stop.is_set():
            refreshes = self.refreshes
            try:
                self._follow()
            except (_Reconnect, DirectoryUnavailable) as e:
                if self.refreshes > refreshes:
                    failures = 0  # the search had worked: this is a new outage
                if isinstance(e, _Reconnect) and not e.backoff:
                    log.info("syncrepl: %s; searching again", e)
                    continue
                failures += 1
                delay = backoff_delay(failures, self.reconnect_sleep, self.reconnect_attempts)
                level = logging.WARNING if failures <= self.reconnect_attempts else logging.ERROR
                log.log(level, "syncrepl: directory unavailable (%s); attempt %d, retrying in "
                        "%.0f s", e, failures, delay)
                self._stop.wait(delay)
                continue
            except DirectoryError as e:
                # Bad credentials or TLS: retrying fast would only hammer the server.
                failures += 1
                delay = backoff_delay(failures, self.reconnect_sleep, 0)
                log.error("syncrepl: %s; retrying in %.0f s", e, delay)
                self._stop.wait(delay)
                continue
            failures = 0

    def _follow(self) -> None:
        """One search: connect, refresh, persist until stop or a broken connection."""
        conn = self._connector(self.settings)
        cookie = self.mirror.resume_cookie()
        request_cookie = cookie or self.settings.default_cookie.encode()
        log.info("syncrepl: following %s from %s", self.settings.service_subtree,
                 "cookie " + cookie.decode(errors="replace") if cookie else "scratch")
        stream = SearchStream(conn, POLL)
        self._refreshing, self._started = True, time.monotonic()
        self._stored = self._deleted = 0
        try:
            stream.search(self.settings.service_subtree,
                          [syncproto.encode_sync_request("refreshAndPersist", request_cookie)])
            self.mirror.start_refresh()
            while not self._stop.is_set():
                message = stream.next()
                if message is None:
                    self._flush()  # quiet for POLL seconds: make the cookie durable now
                    continue
                self._handle(message)
                if time.monotonic() - self._flushed > FLUSH_INTERVAL:
                    self._flush()  # changes keep coming: still, at least once a second
        except StreamClosed as e:
            raise _Reconnect(str(e)) from None
        except (syncproto.SyncProtocolError, wire.WireError) as e:
            log.error("syncrepl: malformed message from the server: %s", e)
            raise _Reconnect(str(e)) from None
        finally:
            self._flush()
            self.mirror.commit()  # keep applied entries; the cookie stays where it was
            stream.close()

    def _flush(self) -> None:
        """Store the newest cookie seen, after the changes it covers (fsync: not per entry)."""
        cookie, self._cookie = self._cookie, None
        self._flushed = time.monotonic()
        if cookie is not None:
            self.mirror.commit(cookie)

    def _handle(self, message: wire.Message) -> None:
        operation = message.operation
        if message.message_id == wire.UNSOLICITED:
            raise _Reconnect(f"the server ends the connection: {_result_text(operation)}")
        if isinstance(operation, wire.SearchEntry):
            self._entry(operation, message.controls)
        elif isinstance(operation, wire.Intermediate) and operation.name == \
                syncproto.SYNC_INFO_OID:
            self._info(syncproto.decode_sync_info(operation.value or b""))
        elif message.tag == wire.SEARCH_RESULT_DONE:
            self._done(operation, message.controls)

    def _entry(self, entry: wire.SearchEntry, controls) -> None:
        value = controls.get(syncproto.SYNC_STATE_OID)
        if value is None:
            log.warning("syncrepl: entry %s without Sync State, ignored", entry.dn)
            return
        state = syncproto.decode_sync_state(value)
        if state.state == "delete":
            self._deleted += self.mirror.delete([state.uuid])
        elif state.state == "present":
            self.mirror.present([state.uuid])
        else:
            self.mirror.store(state.uuid, entry.dn, entry.attributes)
            self._stored += 1
            if not self._refreshing:  # persist phase: tell the daemon, then the cookie
                self._tell(Entry(entry.dn, wire.decode_attributes(entry.attributes)))
        if state.cookie is not None:
            self._cookie = state.cookie

    def _info(self, info: syncproto.SyncInfo) -> None:
        if info.kind == "newcookie":
            self._cookie = info.cookie
        elif info.kind == "syncIdSet":
            uuids = [syncproto.uuid_text(u) for u in info.uuids]
            if info.refresh_deletes:
                self._deleted += self.mirror.delete(uuids)
            else:
                self.mirror.present(uuids)
        elif info.refresh_done:  # refreshDelete or refreshPresent: the refresh is over
            self._deleted += self.mirror.end_refresh(
                present_phase=info.kind == "refreshPresent")
            self._cookie = info.cookie or self._cookie
            self._flush()
            self._refreshing = False
            self.refreshes += 1
            log.info("syncrepl: refresh done in %.3f s: %d entries, %d added or changed, "
                     "%d deleted", time.monotonic() - self._started, len(self.mirror),
                     self._stored, self._deleted)
            self.listener.refreshed()

    def _done(self, result: wire.Result, controls) -> None:
        if result.code == syncproto.SYNC_REFRESH_REQUIRED:
            log.warning("syncrepl: the cookie is too old (e-syncRefreshRequired); "
                        "dropping the mirror for a full refresh")
            self._cookie = None
            self.mirror.clear()
            raise _Reconnect("refresh required", backoff=False)
        value = controls.get(syncproto.SYNC_DONE_OID)
        if value is not None:
            self._cookie = syncproto.decode_sync_done(value).cookie or self._cookie
        raise _Reconnect(f"the search ended: {_result_text(result)}")

    def _tell(self, entry: Entry) -> None:
        try:
            self.listener.changed(entry)
        except Exception:  # noqa: BLE001 - one bad entry must not stop the consumer
            log.exception("syncrepl: handling the change of %s failed", entry.dn)


def _result_text(result: object) -> str:
    if not isinstance(result, wire.Result):
        return "no result"
    return f"result {result.code} {result.message}".strip()
