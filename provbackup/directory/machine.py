"""What the steps need to know of a VM from the directory, read from the mirror.

`read_machine()` gathers the VM entry, its disks and its DHCP host entry;
`to_ldif()` writes the `<vm>.ldif.<ou>` export (the VM subtree plus the DHCP entry)
that the web UI reads back when restoring. No connection is opened: everything
comes from the local mirror.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Iterable, Protocol

from provbackup import errors
from provbackup.directory.dn import child_dn, normalize_dn
from provbackup.directory.entry import Entry
from provbackup.directory.schema import (DEVICE, DISK_CLASS, DISK_TARGET, DISK_TYPE, NODE,
                                         SOURCE_FILE, SOURCE_NAME, VM_POOL)


class Entries(Protocol):
    """The lookups needed (the Mirror has them)."""

    def get(self, dn: str) -> Entry | None: ...
    def subtree(self, dn: str) -> list[Entry]: ...
    def named(self, rdn: str, base: str) -> list[Entry]: ...


@dataclasses.dataclass(frozen=True)
class Disk:
    """One disk of a VM as the directory describes it."""

    target: str  # sstDisk, e.g. vda
    kind: str  # sstType: file or network
    source: str  # the image path (file) or the source name (network)
    dn: str


@dataclasses.dataclass(frozen=True)
class Machine:
    """A VM's directory side: its entry, disks, DHCP host entry and whole subtree."""

    name: str
    dn: str
    node: str | None
    pool: str | None
    disks: tuple[Disk, ...]
    dhcp: tuple[Entry, ...]
    subtree: tuple[Entry, ...]

    @property
    def entries_for_export(self) -> tuple[Entry, ...]:
        """What goes into the LDIF file: the VM subtree, then the DHCP entry."""
        return self.subtree + self.dhcp


def vm_dn(name: str, service_subtree: str) -> str:
    """The DN of the VM called `name`."""
    return child_dn("sstVirtualMachine", name,
                    child_dn("ou", "virtual machines", service_subtree))


def read_machine(entries: Entries, name: str, service_subtree: str) -> Machine:
    """The VM `name` with its disks and DHCP entry; 43 if the VM has no entry."""
    dn = vm_dn(name, service_subtree)
    subtree = entries.subtree(dn)
    if not subtree or normalize_dn(subtree[0].dn) != normalize_dn(dn):
        raise errors.CannotWorkOnUndefinedObjectError(f"no VM entry {dn} in the directory")
    vm = subtree[0]
    return Machine(name=name, dn=vm.dn, node=vm.first(NODE), pool=vm.first(VM_POOL),
                   disks=tuple(_disks(subtree)), dhcp=tuple(_dhcp(entries, name, service_subtree)),
                   subtree=tuple(subtree))


def _disks(subtree: Iterable[Entry]) -> list[Disk]:
    disks = []
    for entry in subtree:
        if not entry.has_object_class(DISK_CLASS) or entry.first(DEVICE) != "disk":
            continue  # CD-ROMs and floppies are not backed up
        kind = (entry.first(DISK_TYPE) or "").lower()
        if kind == "file":
            source = entry.first(SOURCE_FILE)
        elif kind == "network":
            source = entry.first(SOURCE_NAME) or entry.first(SOURCE_FILE)
        else:
            raise errors.UnknownBackendTypeError(
                f"{entry.dn}: sstType {entry.first(DISK_TYPE)!r} (expected file or network)")
        if not source:
            raise errors.BackendXmlInconsistencyError(f"{entry.dn}: the disk names no source")
        disks.append(Disk(target=entry.first(DISK_TARGET) or "", kind=kind, source=source,
                          dn=entry.dn))
    return sorted(disks, key=lambda d: d.target)


def _dhcp(entries: Entries, name: str, service_subtree: str) -> list[Entry]:
    """The DHCP host entries named cn=<vm> anywhere below ou=dhcp,ou=networks."""
    base = child_dn("ou", "dhcp", child_dn("ou", "networks", service_subtree))
    return entries.named(child_dn("cn", name, ""), base)


def to_ldif(entries: Iterable[Entry]) -> str:
    """Entries as LDIF (RFC 2849): unsafe values base64-encoded, long lines folded."""
    blocks = []
    for entry in entries:
        lines = [_line("dn", entry.dn)]
        names = sorted(entry.attributes, key=lambda n: (n.lower() != "objectclass"))
        for name in names:
            lines.extend(_line(name, value) for value in entry.attributes[name])
        blocks.append("\n".join(_fold(line) for line in lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _line(name: str, value: str) -> str:
    raw = value.encode("utf-8", "surrogateescape")
    if _safe(raw):
        return f"{name}: {value}"
    return f"{name}:: {base64.b64encode(raw).decode('ascii')}"


def _safe(raw: bytes) -> bool:
    """RFC 2849 SAFE-STRING: ASCII, no NUL/CR/LF, not starting with space, ':' or '<'."""
    if not raw:
        return True
    if raw[0] in b" :<" or raw.endswith(b" "):
        return False
    return all(0 < b < 128 and b not in (10, 13) for b in raw)


def _fold(line: str, width: int = 76) -> str:
    if len(line) <= width:
        return line
    parts = [line[:width]]
    rest = line[width:]
    while rest:
        parts.append(" " + rest[:width - 1])
        rest = rest[width - 1:]
    return "\n".join(parts)
