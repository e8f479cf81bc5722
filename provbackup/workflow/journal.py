"""The per-VM journal of a backup in progress: the state machine as data.

A backup of one VM spans three requests (snapshot, merge, retain) and may be cut by
a crash anywhere. Before each step acts, the new phase is written here (atomically,
fsynced), so that a step run again, or the daemon at start-up, knows what was done
and what may be half done. The journal of a VM lives in
`<STATE_DIRECTORY>/jobs/<vm>.json` and is removed when retain completes.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tempfile
from pathlib import Path


class Phase(enum.Enum):
    """Where a VM's backup stands."""

    #: files are being prepared and the snapshot taken; the VM may be on overlays
    SNAPSHOTTING = "snapshotting"
    #: the VM runs on overlays; its images and memory state are the point-in-time copy
    SNAPSHOTTED = "snapshotted"
    #: images are being copied to the backup directory and overlays committed back
    MERGING = "merging"
    #: the VM runs on its own images again; the copies wait under hidden names
    MERGED = "merged"
    #: files are being published under their final names in the backup directory
    RETAINING = "retaining"


#: phase -> the phases a step may move it to. A new backup starts at SNAPSHOTTING.
TRANSITIONS: dict[Phase | None, frozenset[Phase]] = {
    None: frozenset({Phase.SNAPSHOTTING}),
    Phase.SNAPSHOTTING: frozenset({Phase.SNAPSHOTTING, Phase.SNAPSHOTTED}),
    Phase.SNAPSHOTTED: frozenset({Phase.MERGING}),
    Phase.MERGING: frozenset({Phase.MERGING, Phase.MERGED}),
    Phase.MERGED: frozenset({Phase.RETAINING}),
    Phase.RETAINING: frozenset({Phase.RETAINING}),
}

#: phases in which a step was cut short: the daemon finishes or rolls back at start-up
IN_FLIGHT = frozenset({Phase.SNAPSHOTTING, Phase.MERGING, Phase.RETAINING})


class JournalError(Exception):
    """A move the state machine does not allow, or an unreadable journal."""


@dataclasses.dataclass
class Journal:
    """One VM's backup in progress."""

    vm: str
    backup_date: str
    phase: Phase
    #: per disk target: source, overlay, copy paths and the copy's sha256
    disks: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    times: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        """The journal as JSON text."""
        data = dataclasses.asdict(self)
        data["phase"] = self.phase.value
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Journal:
        """Read a journal written by to_json()."""
        try:
            data = json.loads(text)
            data["phase"] = Phase(data["phase"])
            return cls(**data)
        except (ValueError, KeyError, TypeError) as e:
            raise JournalError(f"unreadable journal: {e}") from None


class JournalStore:
    """The journals of one node, one file per VM."""

    def __init__(self, state_directory: Path) -> None:
        self.directory = state_directory / "jobs"

    def path(self, vm: str) -> Path:
        """Where the journal of `vm` is kept."""
        return self.directory / f"{vm}.json"

    def load(self, vm: str) -> Journal | None:
        """The journal of `vm`, or None when no backup of it is in progress."""
        try:
            return Journal.from_json(self.path(vm).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def advance(self, journal: Journal | None, vm: str, backup_date: str,
                phase: Phase) -> Journal:
        """Move to `phase` if the table allows it, write it durably, return the journal."""
        current = journal.phase if journal else None
        if phase not in TRANSITIONS[current]:
            raise JournalError(f"{vm}: cannot go from {current.value if current else 'nothing'} "
                               f"to {phase.value}")
        if journal is None:
            journal = Journal(vm=vm, backup_date=backup_date, phase=phase)
        journal.phase = phase
        self.save(journal)
        return journal

    def save(self, journal: Journal) -> None:
        """Write the journal atomically and durably."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{journal.vm}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(journal.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path(journal.vm))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self, vm: str) -> None:
        """The backup of `vm` is complete (or abandoned): forget it."""
        self.path(vm).unlink(missing_ok=True)

    def in_progress(self) -> list[Journal]:
        """Every journal on this node (for recovery at start-up)."""
        if not self.directory.is_dir():
            return []
        return [Journal.from_json(p.read_text(encoding="utf-8"))
                for p in sorted(self.directory.glob("*.json"))]
