"""From directory changes to queued steps: gate, lock, queue (CONTRACT.md section 2).

The syncrepl consumer calls `changed()` for every entry that changed and
`refreshed()` when its mirror is complete. The intake asks the gate, takes the lock
(the compare-and-set modify) and puts the request on the queue; it never runs a
step itself, so the consumer is never held up. Requests for a later day wait here
and are taken by `tick()` when their day has come, without another LDAP change.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
from typing import Callable, Protocol

from provbackup.directory.dn import child_dn
from provbackup.directory.entry import Entry
from provbackup.directory.schema import NODE
from provbackup.workflow import gate
from provbackup.workflow.verbs import Verb

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Request:
    """A locked request, ready for a worker."""

    leaf: gate.Leaf
    verb: Verb
    entry: Entry


class Entries(Protocol):
    """The lookups the intake needs (the Mirror has them)."""

    def get(self, dn: str) -> Entry | None: ...
    def children(self, dn: str) -> list[Entry]: ...
    def pending(self) -> list[Entry]: ...


class Locker(Protocol):
    """The writes the intake needs (the StatusWriter has them)."""

    def lock(self, leaf_dn: str, request: str, progress: str) -> bool: ...
    def reject(self, leaf_dn: str, request: str, return_value: int) -> bool: ...


def _today() -> datetime.date:
    # The execution date is a local date (CONTRACT.md section 2).
    return datetime.date.today()


class Intake:
    """Implements the consumer's Listener: decides, locks and queues."""

    def __init__(self, node: str, entries: Entries, locker: Locker,
                 enqueue: Callable[[Request], None],
                 today: Callable[[], datetime.date] = _today) -> None:
        self.node = node
        self.entries = entries
        self.locker = locker
        self.enqueue = enqueue
        self.today = today
        self._deferred: dict[str, datetime.date] = {}  # leaf DN -> the day it is due
        self._mutex = threading.Lock()

    def changed(self, entry: Entry) -> None:
        """An entry changed: a leaf is considered; a VM's pending leaves are looked at again."""
        if gate.locate(entry.dn) is not None:
            self._consider(entry)
        elif entry.first(NODE) is not None:
            # The VM may have moved to this node with requests waiting.
            for leaf in self.entries.children(child_dn("ou", "backup", entry.dn)):
                if leaf.first("sstProvisioningState") == gate.PENDING:
                    self._consider(leaf)

    def refreshed(self) -> None:
        """The mirror is complete: every pending leaf is considered (after start or outage)."""
        for entry in self.entries.pending():
            if gate.locate(entry.dn) is not None:
                self._consider(entry)

    def tick(self) -> None:
        """Take the deferred requests whose day has come."""
        today = self.today()
        with self._mutex:
            due = [dn for dn, day in self._deferred.items() if day <= today]
        for dn in due:
            entry = self.entries.get(dn)
            if entry is None:
                with self._mutex:
                    self._deferred.pop(dn, None)
            else:
                self._consider(entry)

    @property
    def deferred(self) -> dict[str, datetime.date]:
        """The requests waiting for their day (a copy), for status and tests."""
        with self._mutex:
            return dict(self._deferred)

    def _consider(self, entry: Entry) -> None:
        with self._mutex:
            leaf = gate.locate(entry.dn)
            vm = self.entries.get(leaf.vm_dn) if leaf else None
            decision = gate.decide(entry, vm, self.node, self.today())
            if not isinstance(decision, gate.Defer):
                self._deferred.pop(entry.dn, None)
            if isinstance(decision, gate.Ignore):
                return
            if isinstance(decision, gate.Defer):
                if self._deferred.get(entry.dn) != decision.until:
                    log.info("%s %s: %s deferred to %s", decision.leaf.vm_name,
                             decision.leaf.backup_date, entry.first("sstProvisioningMode"),
                             decision.until.isoformat())
                self._deferred[entry.dn] = decision.until
                return
            if isinstance(decision, gate.Reject):
                if self.locker.reject(entry.dn, decision.request, decision.error.code):
                    log.error("%s %s: %s", decision.leaf.vm_name, decision.leaf.backup_date,
                              decision.error)
                return
            verb = decision.verb
            if self.locker.lock(entry.dn, verb.request, verb.progress):
                log.info("%s %s: %s locked", decision.leaf.vm_name, decision.leaf.backup_date,
                         verb.request)
                self.enqueue(Request(decision.leaf, verb, entry))
