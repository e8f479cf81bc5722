"""Which backup configuration applies to a VM (CONTRACT.md section 3), as a frozen policy.

One whole entry holds a VM's configuration; the first that exists wins: the VM's own
`ou=backup` with the backup object class, then its pool's, then the cloud-wide entry
named in the configuration file. Attributes are never mixed between levels; missing
ones take the documented defaults. Pure: entries come in through `lookup`.
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath
from typing import Callable

from provbackup import errors
from provbackup.directory import dn as dnlib
from provbackup.directory.entry import Entry
from provbackup.directory.schema import (BACKUP_CONFIG_CLASS, BACKUP_OPTIONS, VM_POOL,
                                         UnsupportedScheme)

Lookup = Callable[[str], "Entry | None"]


@dataclasses.dataclass(frozen=True)
class BackupPolicy:
    """A VM's effective backup configuration and where it came from."""

    source_dn: str
    level: str  # "vm", "pool" or "cloud"
    root_directory: PurePosixPath
    retain_directory: PurePosixPath
    ram_disk: PurePosixPath | None
    iterations: int
    exclude_from_backup: bool
    restore_without_state: bool
    force_start: bool
    bandwidth_merge: int  # MB/s, 0 = unlimited
    image_format: str
    image_owner: str
    image_group: str
    image_mode: int
    directory_owner: str
    directory_group: str
    directory_mode: int
    #: attributes absent from the source entry, whose values are the defaults
    defaulted: frozenset[str] = frozenset()

    def origin(self, attribute: str) -> str:
        """Where the value of `attribute` came from: the entry's DN, or 'default'."""
        return "default" if attribute in self.defaulted else self.source_dn


def candidates(vm: Entry, service_subtree: str, cloud_wide_dn: str) -> list[tuple[str, str]]:
    """The (level, DN) places a VM's configuration may live, in order of precedence."""
    found = [("vm", dnlib.child_dn("ou", "backup", vm.dn))]
    pools = sorted({p.lower(): p for p in vm.values(VM_POOL)}.values())
    if len(pools) > 1:
        raise errors.CannotFindConfigurationEntryError(
            f"{vm.dn}: {VM_POOL} names {len(pools)} pools ({', '.join(pools)}); "
            f"the configuration would be ambiguous")
    if pools:
        pool_dn = dnlib.child_dn(VM_POOL, pools[0],
                                 dnlib.child_dn("ou", "virtual machine pools", service_subtree))
        found.append(("pool", dnlib.child_dn("ou", "backup", pool_dn)))
    found.append(("cloud", cloud_wide_dn))
    return found


def resolve(vm: Entry, lookup: Lookup, service_subtree: str, cloud_wide_dn: str) -> BackupPolicy:
    """The policy for `vm`; raises 32 when no entry applies, 39/35/3 for a bad value."""
    looked = []
    for level, dn in candidates(vm, service_subtree, cloud_wide_dn):
        entry = lookup(dn)
        if entry is not None and entry.has_object_class(BACKUP_CONFIG_CLASS):
            return policy_from_entry(entry, level)
        looked.append(f"{dn} ({'absent' if entry is None else 'without ' + BACKUP_CONFIG_CLASS})")
    raise errors.CannotFindConfigurationEntryError(
        f"no backup configuration for {vm.dn}; looked at " + "; ".join(looked))


def policy_from_entry(entry: Entry, level: str) -> BackupPolicy:
    """Read every option of one configuration entry, defaults for what it lacks."""
    values: dict[str, object] = {}
    defaulted = set()
    for option in BACKUP_OPTIONS:
        raw = entry.values(option.attribute)
        if not raw:
            values[option.field] = option.default
            defaulted.add(option.attribute)
            continue
        if len(raw) > 1:
            raise option.error(f"{entry.dn}: {option.attribute} has {len(raw)} values, "
                               f"expected one")
        try:
            values[option.field] = option.parse(raw[0].strip())
        except UnsupportedScheme as e:
            raise errors.UnsupportedFileTransferProtocolError(
                f"{entry.dn}: {option.attribute} {raw[0]!r}: {e}") from None
        except ValueError as e:
            raise option.error(f"{entry.dn}: {option.attribute} {raw[0]!r}: {e}") from None
    return BackupPolicy(source_dn=entry.dn, level=level, defaulted=frozenset(defaulted),
                        **values)
