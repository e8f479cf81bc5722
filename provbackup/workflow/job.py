"""Running one locked request: gather its inputs, run the step, answer in LDAP.

Every outcome ends in exactly one answer with the right return value and one log
line; an unexpected exception is 1 (UNDEFINED_ERROR) with its traceback in the log,
and the daemon goes on with other VMs.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping, Protocol

from provbackup import errors
from provbackup.directory.machine import read_machine, to_ldif
from provbackup.directory.resolve import resolve
from provbackup.hypervisor.base import Hypervisor
from provbackup.workflow.context import StepContext
from provbackup.workflow.intake import Entries, Request
from provbackup.workflow.journal import JournalStore

log = logging.getLogger(__name__)

Step = Callable[[StepContext], Mapping[str, float]]


class Answerer(Protocol):
    """The write the runner needs (the StatusWriter has it)."""

    def answer(self, leaf_dn: str, return_value: int, times: Mapping[str, float],
               completion: str | None = None) -> None: ...


class StepRunner:
    """Runs requests of this node, one call per request."""

    def __init__(self, steps: Mapping[str, Step], entries: Entries, hypervisor: Hypervisor,
                 journals: JournalStore, answerer: Answerer, service_subtree: str,
                 cloud_wide_dn: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.steps = steps
        self.entries = entries
        self.hypervisor = hypervisor
        self.journals = journals
        self.answerer = answerer
        self.service_subtree = service_subtree
        self.cloud_wide_dn = cloud_wide_dn
        self.clock = clock

    def run(self, request: Request) -> int:
        """Run the request's step and answer it; returns the return value written."""
        leaf, verb = request.leaf, request.verb
        where = f"{leaf.vm_name} {leaf.backup_date} {verb.request}"
        start = self.clock()
        extra = {"vm": leaf.vm_name, "backup_date": leaf.backup_date, "step": verb.request}
        try:
            step = self.steps.get(verb.request)
            if step is None:
                raise errors.WrongStateInformationError(
                    f"{verb.request!r} is not available in this version of provbackup")
            times = step(self._context(request))
            code, completion = errors.SUCCESS_CODE, verb.completion
            log.info("%s: done in %.3f s", where, self.clock() - start,
                     extra={**extra, "return_value": 0})
        except errors.StepError as e:
            times, code, completion = {verb.request: self.clock() - start}, e.code, None
            log.error("%s: failed: %s", where, e, extra={**extra, "return_value": e.code})
        except Exception as e:  # noqa: BLE001 - a bug must not take the daemon down
            times, code, completion = {verb.request: self.clock() - start}, 1, None
            log.exception("%s: failed unexpectedly: %s", where, e,
                          extra={**extra, "return_value": 1})
        self.answerer.answer(leaf.dn, code, times, completion=completion)
        return code

    def _context(self, request: Request) -> StepContext:
        machine = read_machine(self.entries, request.leaf.vm_name, self.service_subtree)
        policy = resolve(machine.subtree[0], self.entries.get, self.service_subtree,
                         self.cloud_wide_dn)
        ldif = to_ldif(machine.entries_for_export) if request.verb.request == "snapshot" else ""
        return StepContext(machine=machine, date=request.leaf.backup_date, policy=policy,
                           hypervisor=self.hypervisor, journals=self.journals, ldif=ldif,
                           clock=self.clock)
