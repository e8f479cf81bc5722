"""Where every file of one backup iteration lives (CONTRACT.md section 4).

Working (retain) directory: `<retain>/<intermediate>/`; backup directory:
`<root>/<intermediate>/`. Final names in the backup directory are the contract's;
files that are not complete yet carry a leading dot, so nothing that did not
complete ever looks complete.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

from provbackup.directory.resolve import BackupPolicy
from provbackup.workflow.storage import intermediate_path

#: the whole content of the state file of a VM that was shut off (sic, no newline)
PLACEHOLDER_STATE = b"Machine is not runnung, no state file"


@dataclasses.dataclass(frozen=True)
class Layout:
    """The paths of one VM's backup iteration."""

    vm: str
    date: str
    intermediate: PurePosixPath
    retain_root: Path
    backup_root: Path
    #: sstBackupRamDiskLocation: where the memory state is written during a backup
    ram_root: Path | None = None

    @classmethod
    def of(cls, vm: str, date: str, first_disk: str, policy: BackupPolicy) -> Layout:
        """The layout for a VM whose first disk (in LDAP) is `first_disk`."""
        return cls(vm=vm, date=date,
                   intermediate=intermediate_path(PurePosixPath(first_disk), vm, date),
                   retain_root=Path(policy.retain_directory),
                   backup_root=Path(policy.root_directory),
                   ram_root=Path(policy.ram_disk) if policy.ram_disk else None)

    @property
    def working(self) -> Path:
        """The working (retain) directory of this iteration."""
        return self.retain_root / self.intermediate

    @property
    def backup(self) -> Path:
        """The backup directory of this iteration."""
        return self.backup_root / self.intermediate

    def overlay(self, disk_source: str) -> Path:
        """The temporary overlay the VM writes to between snapshot and merge."""
        return self.working / f"{PurePosixPath(disk_source).name}.overlay.{self.date}"

    def pending_disk(self, disk_source: str) -> Path:
        """The disk copy in the backup directory before retain publishes it."""
        return self.backup / f".{PurePosixPath(disk_source).name}.{self.date}"

    def backup_disk(self, disk_source: str) -> Path:
        """The disk image's final name in the backup directory."""
        return self.backup / f"{PurePosixPath(disk_source).name}.{self.date}"

    def small_file(self, kind: str, directory: Path | None = None) -> Path:
        """`<vm>.<kind>.<date>` (kind: state, xml, ldif) in the working or another directory."""
        return (directory or self.working) / f"{self.vm}.{kind}.{self.date}"

    @property
    def memory_file(self) -> Path:
        """Where snapshot writes the memory state: the RAM disk if one is configured.

        On a RAM disk the guest's final pause does not wait for a disk to sync the
        file, and the file is written to disk only once, by retain (docs/performance).
        """
        if self.ram_root is not None:
            return self.ram_root / f"{self.vm}.state.{self.date}"
        return self.small_file("state")

    @property
    def manifest(self) -> Path:
        """The checksum manifest, written last: its presence means the backup is complete."""
        return self.backup / f"{self.vm}.sha256.{self.date}"
