"""The gate: does this node act on this backup leaf, and how (CONTRACT.md section 2).

A pure function of the leaf, its VM entry, this node's name and today's local date,
so that every rule is tested without a directory or a clock.
"""

from __future__ import annotations

import dataclasses
import datetime

from provbackup.directory import dn as dnlib
from provbackup.directory.entry import Entry
from provbackup.errors import StepError, WrongStateInformationError
from provbackup.workflow.verbs import LEAVE_ALONE, VERBS, Verb

PENDING = "0"


@dataclasses.dataclass(frozen=True)
class Leaf:
    """Where a backup leaf sits: its VM's DN and name, and the backup date (its ou)."""

    dn: str
    vm_dn: str
    vm_name: str
    backup_date: str


@dataclasses.dataclass(frozen=True)
class Ignore:
    """Not this node's business, or nothing to do: write nothing."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Defer:
    """A request for a later day: run it when `until` has come, without another change."""

    leaf: Leaf
    until: datetime.date


@dataclasses.dataclass(frozen=True)
class Run:
    """Lock the leaf and run the step."""

    leaf: Leaf
    verb: Verb


@dataclasses.dataclass(frozen=True)
class Reject:
    """Lock the leaf and answer with this error at once (e.g. an unknown verb, 18)."""

    leaf: Leaf
    request: str
    error: StepError


Decision = Ignore | Defer | Run | Reject


def locate(dn: str) -> Leaf | None:
    """The Leaf for a DN of the form ou=<date>,ou=backup,sstVirtualMachine=<vm>,...; else None."""
    try:
        parts = dnlib.rdns(dn)
    except ValueError:
        return None
    if len(parts) < 3 or parts[0][0] != "ou" or parts[1] != ("ou", "backup") \
            or parts[2][0] != "sstvirtualmachine":
        return None
    return Leaf(dn=dn, vm_dn=dnlib.join(parts[2:]), vm_name=parts[2][1], backup_date=parts[0][1])


def decide(leaf_entry: Entry, vm_entry: Entry | None, node: str,
           today: datetime.date) -> Decision:
    """What this node does with `leaf_entry`, whose VM entry is `vm_entry` (None if unknown)."""
    leaf = locate(leaf_entry.dn)
    if leaf is None:
        return Ignore("not a backup leaf")
    if vm_entry is None:
        return Ignore(f"VM entry {leaf.vm_dn} is unknown")
    if vm_entry.first("sstNode") != node:
        return Ignore(f"VM {leaf.vm_name} runs on {vm_entry.first('sstNode')!r}, not here")
    if leaf_entry.first("sstProvisioningState") != PENDING:
        return Ignore("no request pending")
    mode = leaf_entry.first("sstProvisioningMode") or ""
    if mode in LEAVE_ALONE:
        return Ignore(f"{mode!r} is not a request")
    raw_date = leaf_entry.first("sstProvisioningExecutionDate", PENDING)
    try:
        when = _execution_date(raw_date)
    except ValueError:
        return Reject(leaf, mode, WrongStateInformationError(
            f"sstProvisioningExecutionDate {raw_date!r} is neither 0 nor a date YYYYMMDD"))
    if when is not None and when > today:
        return Defer(leaf, when)
    verb = VERBS.get(mode)
    if verb is None:
        return Reject(leaf, mode, WrongStateInformationError(
            f"unknown request {mode!r} (expected one of {', '.join(VERBS)})"))
    return Run(leaf, verb)


def _execution_date(raw: str) -> datetime.date | None:
    """None for "0" (now), else the local date; ValueError for anything else."""
    if raw == PENDING:
        return None
    if len(raw) != 8 or not raw.isdigit():
        raise ValueError(raw)
    return datetime.date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
