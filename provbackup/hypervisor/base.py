"""What the workflow needs of the hypervisor, in provbackup's own terms.

The steps use only this protocol; `libvirt.py` implements it on libvirt and
qemu-img, and tests may pass a fake with the same methods. Every method raises
`provbackup.errors.StepError` subclasses, never a libvirt or subprocess exception.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Protocol


class PowerState(enum.Enum):
    """Whether the domain runs, as far as a backup cares."""

    RUNNING = "running"  # running, or paused by someone else: it has memory state
    SHUT_OFF = "shut off"  # defined, not running: no memory state


@dataclasses.dataclass(frozen=True)
class DomainDisk:
    """One disk device of a domain as libvirt sees it now."""

    target: str  # vda
    source: Path  # the file the domain reads and writes now
    format: str  # qcow2, raw
    backing: Path | None = None  # the file below `source`, if any


@dataclasses.dataclass(frozen=True)
class Domain:
    """A domain as found on this node."""

    name: str
    uuid: str
    state: PowerState
    memory_bytes: int  # current memory: what a memory state file may need
    disks: tuple[DomainDisk, ...]  # file-backed disk devices only (no CD-ROMs)


@dataclasses.dataclass(frozen=True)
class SnapshotResult:
    """How long the guest was stopped, and the whole call."""

    downtime: float  # seconds the guest did not run (0 for a shut-off domain)
    duration: float  # seconds the snapshot took in all


class Hypervisor(Protocol):
    """The operations the backup and restore steps use."""

    def domain(self, name: str) -> Domain:
        """The domain `name`; CannotFindMachineError (23) if it is not defined here."""

    def definition(self, name: str) -> str:
        """The domain's persistent XML definition (CannotSaveXmlError, 28, on failure)."""

    def snapshot(self, name: str, overlays: dict[str, Path],
                 memory_file: Path | None) -> SnapshotResult:
        """Put each disk (by target) on a new qcow2 overlay at the given path.

        For a running domain this is one atomic live snapshot that also writes the
        memory state to `memory_file` while the guest runs, pausing it only for the
        switch. For a shut-off domain `memory_file` must be None and only the
        definition changes. Afterwards the old images are frozen: a point-in-time copy.
        CannotSaveMachineStateError (5) on failure, leaving the domain as it was.
        """

    def settle(self, name: str) -> None:
        """Wait until no hypervisor job (e.g. a snapshot a killed daemon began) runs on
        the domain, so that what is read next stays true."""

    def commit(self, name: str, target: str, bandwidth_mib: int = 0) -> None:
        """Merge the overlay of disk `target` back into the image below it and pivot.

        Afterwards the domain uses the base image at its original path (running or
        not) and the overlay is no longer in use (the caller deletes the file). Only
        the data written since the snapshot is copied. `bandwidth_mib` limits the
        merge (0 = unlimited). CannotMergeDiskImagesError (11) on failure; the domain
        keeps running on its overlay then, and the commit can be tried again.
        """

    def saved_definition(self, state_file: Path) -> str:
        """The domain XML inside a memory state file (CannotReadStateFileError, 44)."""

    def restore(self, state_file: Path, xml: str) -> None:
        """Resume a domain from a memory state file, running, with exactly this XML (21)."""

    def define(self, xml: str) -> str:
        """Define (or redefine) a domain persistently; returns its name (41)."""

    def start(self, name: str) -> None:
        """Start a defined domain; a running one is left alone (42)."""

    def exists(self, name: str) -> bool:
        """Whether a domain of this name is defined or running here."""
