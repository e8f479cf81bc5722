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
from typing import Callable, Protocol

import ldap3
from ldap3.core import exceptions as ldap_errors

from provbackup.config import LdapSettings
from provbackup.directory import syncproto
from provbackup.directory.connection import DirectoryError, DirectoryUnavailable, connect
from provbackup.directory.entry import Entry
from provbackup.directory.mirror import Mirror

log = logging.getLogger(__name__)

#: longest wait between reconnect attempts once the quick retries are used up
MAX_BACKOFF = 300.0
#: how often the loop looks up from the stream (stop requests, a closed connection)
POLL = 0.2


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
        self._search = None
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
        try:
            self._search = conn.extend.standard.funnel_search(
                search_base=self.settings.service_subtree, search_filter="(objectClass=*)",
                search_scope=ldap3.SUBTREE, dereference_aliases=ldap3.DEREF_NEVER,
                attributes=[ldap3.ALL_ATTRIBUTES],
                controls=[syncproto.encode_sync_request("refreshAndPersist", request_cookie)])
            self.mirror.start_refresh()
            while not self._stop.is_set():
                message = self._search.next(block=True, timeout=POLL)
                if message is None:
                    if conn.closed:
                        raise _Reconnect("the connection closed")
                    continue
                self._handle(message)
        except ldap_errors.LDAPException as e:
            raise _Reconnect(f"{type(e).__name__}: {e}") from None
        except syncproto.SyncProtocolError as e:
            log.error("syncrepl: malformed message from the server: %s", e)
            raise _Reconnect(str(e)) from None
        finally:
            self.mirror.commit()  # keep applied entries; the cookie stays where it was
            self._close(conn)

    def _close(self, conn: ldap3.Connection) -> None:
        search, self._search = self._search, None
        try:
            if search is not None and not conn.closed:
                search.stop(unbind=False)
            conn.unbind()
        except (ldap_errors.LDAPException, OSError):
            pass

    def _handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "searchResEntry":
            self._entry(message)
        elif kind == "intermediateResponse" and message.get("responseName") == \
                syncproto.SYNC_INFO_OID:
            self._info(syncproto.decode_sync_info(message.get("responseValue") or b""))
        elif kind == "searchResDone":
            self._done(message)

    def _entry(self, message: dict) -> None:
        control = (message.get("controls") or {}).get(syncproto.SYNC_STATE_OID)
        if control is None:
            log.warning("syncrepl: entry %s without Sync State, ignored", message.get("dn"))
            return
        state = syncproto.decode_sync_state(control["value"])
        if state.state == "delete":
            self.mirror.delete([state.uuid])
        elif state.state == "present":
            self.mirror.present([state.uuid])
        else:
            attributes = {name: list(values) for name, values in
                          (message.get("raw_attributes") or {}).items()}
            entry = self.mirror.upsert(state.uuid, message["dn"], attributes)
            if state.cookie is not None:  # persist phase: tell the daemon, then commit
                self._tell(entry)
        if state.cookie is not None:
            self.mirror.commit(state.cookie)

    def _info(self, info: syncproto.SyncInfo) -> None:
        if info.kind == "newcookie":
            self.mirror.commit(info.cookie)
        elif info.kind == "syncIdSet":
            uuids = [syncproto.uuid_text(u) for u in info.uuids]
            if info.refresh_deletes:
                self.mirror.delete(uuids)
            else:
                self.mirror.present(uuids)
        elif info.refresh_done:  # refreshDelete or refreshPresent: the refresh is over
            dropped = self.mirror.end_refresh(present_phase=info.kind == "refreshPresent")
            self.mirror.commit(info.cookie)
            self.refreshes += 1
            log.info("syncrepl: refresh done (%d entries, %d dropped)", len(self.mirror), dropped)
            self.listener.refreshed()

    def _done(self, message: dict) -> None:
        if message.get("result") == syncproto.SYNC_REFRESH_REQUIRED:
            log.warning("syncrepl: the cookie is too old (e-syncRefreshRequired); "
                        "dropping the mirror for a full refresh")
            self.mirror.clear()
            raise _Reconnect("refresh required", backoff=False)
        control = (message.get("controls") or {}).get(syncproto.SYNC_DONE_OID)
        if control is not None:
            self.mirror.commit(syncproto.decode_sync_done(control["value"]).cookie)
        raise _Reconnect(f"the search ended: {message.get('result')} "
                         f"{message.get('description')} {message.get('message') or ''}".strip())

    def _tell(self, entry: Entry) -> None:
        try:
            self.listener.changed(entry)
        except Exception:  # noqa: BLE001 - one bad entry must not stop the consumer
            log.exception("syncrepl: handling the change of %s failed", entry.dn)
