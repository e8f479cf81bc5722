"""What every step is given, and the checks they share."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Callable

from provbackup import errors
from provbackup.directory.machine import Machine
from provbackup.directory.resolve import BackupPolicy
from provbackup.hypervisor.base import Domain, Hypervisor
from provbackup.workflow import storage
from provbackup.workflow.journal import JournalStore
from provbackup.workflow.layout import Layout


@dataclasses.dataclass(frozen=True)
class StepContext:
    """One step's inputs: the VM as LDAP and libvirt see it, its policy and the tools."""

    machine: Machine
    date: str
    policy: BackupPolicy
    hypervisor: Hypervisor
    journals: JournalStore
    ldif: str = ""
    clock: Callable[[], float] = time.monotonic

    @property
    def vm(self) -> str:
        """The VM's name (the libvirt domain name)."""
        return self.machine.name

    @property
    def log(self) -> logging.LoggerAdapter:
        """A logger that names the VM and the backup date on every line."""
        return logging.LoggerAdapter(logging.getLogger("provbackup.step"),
                                     {"vm": self.vm, "backup_date": self.date})

    def layout(self) -> Layout:
        """The paths of this iteration (39 for an unusable disk path)."""
        if not self.machine.disks:
            raise errors.BackendXmlInconsistencyError(f"{self.vm}: the directory lists no disk")
        return Layout.of(self.vm, self.date, self.machine.disks[0].source, self.policy)

    def file_mode(self) -> tuple[str, str, int]:
        """Owner, group and mode for every file a step creates."""
        p = self.policy
        return p.image_owner, p.image_group, p.image_mode

    def dir_mode(self) -> tuple[str, str, int]:
        """Owner, group and mode for every directory a step creates."""
        p = self.policy
        return p.directory_owner, p.directory_group, p.directory_mode


def consistent_domain(ctx: StepContext, allow_overlays: Layout | None = None) -> Domain:
    """The domain, checked against the directory's disks (33 when they differ).

    With `allow_overlays`, a disk may also be on this iteration's overlay whose
    backing file is the directory's path (between snapshot and merge).
    """
    domain = ctx.hypervisor.domain(ctx.vm)
    ldap = {d.target: d.source for d in ctx.machine.disks if d.kind == "file"}
    live = {}
    for disk in domain.disks:
        source = str(disk.source)
        if allow_overlays and source == str(allow_overlays.overlay(ldap.get(disk.target, ""))):
            source = str(disk.backing)
        live[disk.target] = source
    if live != ldap:
        raise errors.BackendXmlInconsistencyError(
            f"{ctx.vm}: the directory lists disks {_show(ldap)}, libvirt has {_show(live)}")
    return domain


def _show(disks: dict[str, str]) -> str:
    return ", ".join(f"{t}={s}" for t, s in sorted(disks.items())) or "none"


def allocated_bytes(paths: list[Path]) -> int:
    """Bytes the files occupy on disk (their data, not their holes)."""
    try:
        return sum(os.stat(p).st_blocks * 512 for p in paths)
    except OSError as e:
        raise errors.NoDiskSpaceInformationError(f"cannot size {e.filename}: {e.strerror}") from None


def prepare_roots(ctx: StepContext, layout: Layout) -> None:
    """The retain and backup roots must exist (25, 26) and the backup root be writable (6)."""
    storage.require_root(layout.retain_root, errors.RetainRootDirectoryDoesNotExistError)
    storage.require_root(layout.backup_root, errors.BackupRootDirectoryDoesNotExistError)


def remove_working(layout: Layout) -> None:
    """Remove the iteration's working directory, if any (46 when it cannot be)."""
    if not layout.working.exists():
        return
    try:
        storage.remove_tree(layout.working, layout.retain_root)
    except errors.StepError as e:
        raise errors.NotAllFilesDeletedFromRetainLocationError(str(e.detail)) from None
