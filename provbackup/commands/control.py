"""`backup` and `restore`: act as the control instance on one leaf (CONTRACT.md section 2).

Each step is requested as the broker does (mode = verb and state = 0 in one modify)
and answered by the daemon of the VM's node, which must be running; this module only
waits for the answer (state no longer 0), reports it and stops at the first failure.
"""

from __future__ import annotations

import datetime
import time
from typing import Callable, TextIO

from provbackup import errors
from provbackup.commands import CommandFailed
from provbackup.directory.reader import DirectoryReader
from provbackup.commands.report import load_vm, return_value_text
from provbackup.config import Config
from provbackup.directory import dn as dnlib
from provbackup.directory.entry import Entry
from provbackup.directory.schema import (EXECUTION_DATE, EXECUTION_TIME, MODE,
                                         PROVISIONING_CLASS, RETURN_VALUE, STATE)
from provbackup.directory.status import PENDING, state_timestamp
from provbackup.workflow.verbs import VERBS

BACKUP_STEPS = ("snapshot", "merge", "retain")
#: the domain is destroyed and undefined between unretainLargeFiles and restore
RESTORE_STEPS = ("unretainSmallFiles", "unretainLargeFiles", "restore")
DEFAULT_TIMEOUT = 3600.0


def default_backup_date(now_local: datetime.datetime) -> str:
    """The broker's leaf name for `now_local`: local time, seconds 00, a literal Z."""
    return now_local.strftime("%Y%m%dT%H%M00Z")


def leaf_dn(vm_dn: str, date: str) -> str:
    """The DN of the leaf `date` of the VM at `vm_dn`."""
    return dnlib.child_dn("ou", date, dnlib.child_dn("ou", "backup", vm_dn))


def new_times(before: tuple[str, ...], after: tuple[str, ...]) -> list[str]:
    """The execution-time values this step wrote (new or changed since the request)."""
    return [value for value in after if value not in before]


class Controller:
    """Requests steps on one leaf and waits for the daemon's answers."""

    def __init__(self, reader: DirectoryReader, out: TextIO, timeout: float = DEFAULT_TIMEOUT,
                 poll: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._reader = reader
        self._out = out
        self._timeout = timeout
        self._poll = poll
        self._clock = clock
        self._sleep = sleep

    def create_leaf(self, dn: str, date: str) -> None:
        """Add the leaf as the broker does: mode initialized, nothing pending."""
        self._reader.add(dn, ("top", "organizationalUnit", PROVISIONING_CLASS), {
            "ou": date, MODE: "initialized", EXECUTION_DATE: "0",
            STATE: state_timestamp(datetime.datetime.now(datetime.timezone.utc))})
        self._say(f"created {dn}")

    def run(self, dn: str, verb: str) -> Entry:
        """Request `verb`, wait for its answer and report it; CommandFailed unless it succeeded."""
        before = self._read(dn).values(EXECUTION_TIME)
        self._reader.replace(dn, {MODE: verb, STATE: PENDING})
        self._say(f"{verb}: requested at {datetime.datetime.now():%H:%M:%S}, waiting "
                  f"(up to {self._timeout:.0f} s)")
        started = self._clock()
        while True:
            leaf = self._read(dn)
            if leaf.first(STATE) != PENDING:
                break
            if self._clock() - started >= self._timeout:
                raise CommandFailed(f"{verb}: no answer after {self._timeout:.0f} s; is "
                                    f"`provbackup run` active on the VM's node? The request "
                                    f"stays pending on {dn}")
            self._sleep(self._poll)
        took = self._clock() - started
        times = ", ".join(new_times(before, leaf.values(EXECUTION_TIME))) or "no times"
        raw = leaf.first(RETURN_VALUE)
        self._say(f"{verb}: {return_value_text(raw)}, mode {leaf.first(MODE)}, "
                  f"answered after {took:.1f} s ({times})")
        if raw != str(errors.SUCCESS_CODE) or leaf.first(MODE) != VERBS[verb].completion:
            raise CommandFailed(f"{verb} failed on {dn}: {return_value_text(raw)}")
        return leaf

    def finish(self, dn: str) -> None:
        """Close the iteration as the control instance does: mode finished and a timestamp."""
        self._reader.replace(dn, {MODE: "finished", STATE: state_timestamp(
            datetime.datetime.now(datetime.timezone.utc))})
        self._say(f"finished {dn}")

    def _read(self, dn: str) -> Entry:
        leaf = self._reader.get(dn)
        if leaf is None:
            raise CommandFailed(f"{dn} disappeared from the directory")
        return leaf

    def _say(self, line: str) -> None:
        print(line, file=self._out, flush=True)


def backup(reader: DirectoryReader, cfg: Config, name: str, date: str, out: TextIO,
           timeout: float = DEFAULT_TIMEOUT) -> None:
    """Create the leaf `date` of VM `name` and run snapshot, merge and retain on it."""
    machine = load_vm(reader, cfg, name)
    dn = leaf_dn(machine.dn, date)
    control = Controller(reader, out, timeout)
    control.create_leaf(dn, date)
    for verb in BACKUP_STEPS:
        control.run(dn, verb)
    control.finish(dn)


def restore(reader: DirectoryReader, cfg: Config, name: str, date: str, out: TextIO,
            hypervisor, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Unretain the backup `date` of VM `name`, destroy and undefine the domain, restore it."""
    machine = load_vm(reader, cfg, name)
    dn = leaf_dn(machine.dn, date)
    if reader.get(dn) is None:
        raise CommandFailed(f"{name} has no backup {date} ({dn} does not exist)")
    control = Controller(reader, out, timeout)
    for verb in RESTORE_STEPS:
        if verb == "restore":
            _remove_domain(hypervisor, name, out)
        control.run(dn, verb)
    control.finish(dn)


def _remove_domain(hypervisor, name: str, out: TextIO) -> None:
    """What the broker does before it requests restore: destroy and undefine the domain."""
    if not hypervisor.exists(name):
        print(f"domain {name}: not defined here; nothing to destroy", file=out, flush=True)
        return
    hypervisor.destroy(name)
    hypervisor.undefine(name)
    print(f"domain {name}: destroyed and undefined", file=out, flush=True)
