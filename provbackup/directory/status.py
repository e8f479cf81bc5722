"""The lock and the answer on a backup leaf (CONTRACT.md section 2, both **fix**es).

The lock is one compare-and-set modify: delete the exact request word and the
pending state `0`, add the progress word and `0` back. If either value changed in
the meantime the server refuses the whole modify, so two daemons, or one event seen
twice, can never run the same step twice. The answer is one modify too, so a reader
never sees a completion word beside a stale return value.
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Callable, Mapping

import ldap3
from ldap3.core import exceptions as ldap_errors

from provbackup.directory.connection import DirectoryError, DirectoryUnavailable, is_connection_error
from provbackup.directory.schema import EXECUTION_TIME, MODE, RETURN_VALUE, STATE

log = logging.getLogger(__name__)

PENDING = "0"


def state_timestamp(now: datetime.datetime) -> str:
    """The UTC timestamp written to sstProvisioningState, e.g. 20261122T031502Z."""
    return now.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def merge_execution_times(current: tuple[str, ...], new: Mapping[str, float]) -> list[str]:
    """Replace the values of this step's names, keep every other value as it was."""
    kept = [v for v in current if v.split(":", 1)[0].strip() not in new]
    return kept + [f"{name}: {seconds:.3f}" for name, seconds in new.items()]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class StatusWriter:
    """Writes locks and answers over one shared connection, reconnecting when it breaks."""

    def __init__(self, connect: Callable[[], ldap3.Connection],
                 clock: Callable[[], datetime.datetime] = _utcnow) -> None:
        self._connect = connect
        self._clock = clock
        self._conn: ldap3.Connection | None = None
        # ldap3's SYNC strategy is not safe for concurrent operations on one connection.
        self._mutex = threading.Lock()

    def lock(self, leaf_dn: str, request: str, progress: str) -> bool:
        """Replace `request` by `progress` if the leaf still holds it with state 0."""
        changes = {MODE: [(ldap3.MODIFY_DELETE, [request]), (ldap3.MODIFY_ADD, [progress])],
                   STATE: [(ldap3.MODIFY_DELETE, [PENDING]), (ldap3.MODIFY_ADD, [PENDING])]}
        # Not retried after a lost connection: had the first try reached the server, a
        # retry would fail and the step would look taken by someone else.
        return self._compare_and_set(leaf_dn, changes, retry=False)

    def answer(self, leaf_dn: str, return_value: int, times: Mapping[str, float],
               completion: str | None = None) -> None:
        """One modify: completion word (success only), return value, times, state timestamp."""
        def modify(conn: ldap3.Connection) -> None:
            current = self._read_times(conn, leaf_dn)
            changes = {RETURN_VALUE: [(ldap3.MODIFY_REPLACE, [str(return_value)])],
                       STATE: [(ldap3.MODIFY_REPLACE, [state_timestamp(self._clock())])]}
            if times:
                changes[EXECUTION_TIME] = [(ldap3.MODIFY_REPLACE,
                                            merge_execution_times(current, times))]
            if completion is not None:
                changes[MODE] = [(ldap3.MODIFY_REPLACE, [completion])]
            conn.modify(leaf_dn, changes)
        # Every change is a replace, so a retry after a lost connection is harmless.
        self._run(modify, retry=True)

    def reject(self, leaf_dn: str, request: str, return_value: int) -> bool:
        """Answer a request that is not run (e.g. unknown verb): consume it, keep the word."""
        changes = {MODE: [(ldap3.MODIFY_DELETE, [request]), (ldap3.MODIFY_ADD, [request])],
                   STATE: [(ldap3.MODIFY_DELETE, [PENDING]),
                           (ldap3.MODIFY_ADD, [state_timestamp(self._clock())])],
                   RETURN_VALUE: [(ldap3.MODIFY_REPLACE, [str(return_value)])]}
        return self._compare_and_set(leaf_dn, changes, retry=False)

    def close(self) -> None:
        """Unbind the shared connection."""
        with self._mutex:
            if self._conn is not None:
                try:
                    self._conn.unbind()
                except ldap_errors.LDAPException:
                    pass
                self._conn = None

    def _compare_and_set(self, leaf_dn: str, changes: dict, retry: bool) -> bool:
        try:
            self._run(lambda conn: conn.modify(leaf_dn, changes), retry=retry)
        except _Refused as refused:
            log.info("%s: not taken, it changed meanwhile (%s)", leaf_dn, refused)
            return False
        return True

    @staticmethod
    def _read_times(conn: ldap3.Connection, leaf_dn: str) -> tuple[str, ...]:
        conn.search(leaf_dn, "(objectClass=*)", search_scope=ldap3.BASE,
                    attributes=[EXECUTION_TIME])
        if not conn.entries:
            return ()
        return tuple(conn.entries[0].entry_attributes_as_dict.get(EXECUTION_TIME, ()))

    def _run(self, operation: Callable[[ldap3.Connection], None], retry: bool) -> None:
        with self._mutex:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    operation(self._conn)
                    return
                except (ldap_errors.LDAPNoSuchAttributeResult, ldap_errors.LDAPNoSuchObjectResult,
                        ldap_errors.LDAPAttributeOrValueExistsResult) as e:
                    raise _Refused(e.description or type(e).__name__) from None
                except ldap_errors.LDAPException as e:
                    if not is_connection_error(e):
                        raise DirectoryError(f"modify refused: {e}") from None
                    self._conn = None
                    if not retry or attempt == 2:
                        raise DirectoryUnavailable(f"lost the directory connection: {e}") from None
                    log.warning("directory connection lost (%s); reconnecting once", e)


class _Refused(Exception):
    """The server refused a compare-and-set because a value had changed."""
