"""`status`, `explain` and `verify`: read-only views of the directory and the backups.

The formatting helpers are pure (an explicit `now`, plain rows) so that the unit
tests need no directory; the commands write to `out` and raise on failure.
"""

from __future__ import annotations

import datetime
from typing import Iterable, Sequence, TextIO

from provbackup import errors
from provbackup.commands import CommandFailed
from provbackup.directory.reader import DirectoryReader, equals
from provbackup.config import Config
from provbackup.directory import dn as dnlib
from provbackup.directory.entry import Entry
from provbackup.directory.machine import Machine, read_machine
from provbackup.directory.resolve import BackupPolicy, resolve
from provbackup.directory.schema import (BACKUP_OPTIONS, MODE, NODE, PROVISIONING_CLASS,
                                         RETURN_VALUE, STATE, VM_NAME)
from provbackup.workflow.layout import Layout
from provbackup.workflow.storage import read_manifest, verify_manifest

#: leaf modes after which the backup directory is complete and has its manifest
VERIFIABLE_MODES = ("retained", "finished")
VM_CLASS = "sstVirtualizationVirtualMachine"
_STATE_FORMAT = "%Y%m%dT%H%M%SZ"


# --- pure helpers -------------------------------------------------------------------

def age_text(seconds: float) -> str:
    """A short age such as '45s ago', '12m ago', '3h ago' or '2d ago'."""
    if seconds < -60:
        return "in the future"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def state_age(state: str | None, now: datetime.datetime) -> str:
    """The age of an sstProvisioningState: 'pending' for 0, '-' when absent, '?' if unreadable."""
    if state is None:
        return "-"
    if state == "0":
        return "pending"
    try:
        when = datetime.datetime.strptime(state, _STATE_FORMAT).replace(
            tzinfo=datetime.timezone.utc)
    except ValueError:
        return "?"
    return age_text((now - when).total_seconds())


def return_value_text(raw: str | None) -> str:
    """'0 SUCCESS_CODE' for '0'; '-' when absent; the raw value when it is no number."""
    if raw is None:
        return "-"
    try:
        code = int(raw)
    except ValueError:
        return raw
    return f"{code} {errors.return_value_name(code)}"


def format_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as lines with left-aligned columns two spaces apart, no trailing blanks."""
    widths = [max(len(row[i]) for row in rows if i < len(row))
              for i in range(max((len(r) for r in rows), default=0))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
            for row in rows]


def newest_leaf(leaves: Iterable[Entry], modes: Sequence[str] | None = None) -> Entry | None:
    """The leaf with the greatest date (its ou), only among `modes` if given."""
    chosen = [leaf for leaf in leaves if modes is None or leaf.first(MODE) in modes]
    return max(chosen, key=leaf_date, default=None)


def leaf_date(leaf: Entry) -> str:
    """A leaf's backup date: the value of its RDN (ou=<date>)."""
    return dnlib.rdns(leaf.dn)[0][1]


def status_rows(vms: Iterable[Entry], leaves: Iterable[Entry],
                now: datetime.datetime) -> list[tuple[str, ...]]:
    """The status table: a header, then one row per VM (by name) with its newest leaf."""
    by_vm: dict[str, list[Entry]] = {}
    for leaf in leaves:
        by_vm.setdefault(dnlib.normalize_dn(dnlib.parent_dn(leaf.parent)), []).append(leaf)
    rows = [("VM", "BACKUP", "MODE", "RETURN VALUE", "ANSWERED")]
    for vm in sorted(vms, key=vm_name):
        leaf = newest_leaf(by_vm.get(vm.key, ()))
        if leaf is None:
            rows.append((vm_name(vm), "no backup"))
        else:
            rows.append((vm_name(vm), leaf_date(leaf), leaf.first(MODE) or "-",
                         return_value_text(leaf.first(RETURN_VALUE)),
                         state_age(leaf.first(STATE), now)))
    return rows


def vm_name(vm: Entry) -> str:
    """The VM's name (sstVirtualMachine), from its RDN if the attribute is missing."""
    return vm.first(VM_NAME) or dnlib.rdns(vm.dn)[0][1]


def option_value(value: object, field: str) -> str:
    """A policy value as the directory would spell it (TRUE, 660, a path)."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if field.endswith("_mode") and isinstance(value, int):
        return f"{value:o}"
    return str(value)


def policy_rows(policy: BackupPolicy) -> list[tuple[str, ...]]:
    """The configuration table: each attribute, its effective value and where it came from."""
    rows = [("ATTRIBUTE", "VALUE", "FROM")]
    for option in BACKUP_OPTIONS:
        rows.append((option.attribute, option_value(getattr(policy, option.field), option.field),
                     policy.origin(option.attribute)))
    return rows


# --- the commands -------------------------------------------------------------------

def vms_base(cfg: Config) -> str:
    """`ou=virtual machines` under the service subtree."""
    return dnlib.child_dn("ou", "virtual machines", cfg.ldap.service_subtree)


def load_vm(reader: DirectoryReader, cfg: Config, name: str) -> Machine:
    """The VM's directory side (43 when it has no entry)."""
    return read_machine(reader, name, cfg.ldap.service_subtree)


def load_policy(reader: DirectoryReader, cfg: Config, machine: Machine) -> BackupPolicy:
    """The VM's resolved configuration, looked up with base searches (32/39/35/3 raised)."""
    return resolve(machine.subtree[0], reader.get, cfg.ldap.service_subtree,
                   cfg.ldap.cloud_wide_dn)


def leaves_of(machine: Machine) -> list[Entry]:
    """The backup leaves of a VM (ou=<date>,ou=backup,<vm>)."""
    backup = dnlib.normalize_dn(dnlib.child_dn("ou", "backup", machine.dn))
    return [e for e in machine.subtree
            if e.parent == backup and e.has_object_class(PROVISIONING_CLASS)]


def status(reader: DirectoryReader, cfg: Config, out: TextIO, now: datetime.datetime) -> None:
    """One line per VM of this node: its newest leaf, mode, return value and answer age."""
    base = vms_base(cfg)
    vms = reader.find(base, f"(&(objectClass={VM_CLASS}){equals(NODE, cfg.node)})",
                      one_level=True)
    leaves = reader.find(base, f"(objectClass={PROVISIONING_CLASS})")
    if not vms:
        print(f"no VMs with sstNode={cfg.node} under {base}", file=out)
        return
    for line in format_table(status_rows(vms, leaves, now)):
        print(line, file=out)


def explain(reader: DirectoryReader, cfg: Config, name: str, out: TextIO) -> None:
    """The VM, its disks, DHCP entry and resolved configuration with each value's origin."""
    machine = load_vm(reader, cfg, name)
    for line in format_table([("VM", machine.name), ("entry", machine.dn),
                              ("node", machine.node or "-"), ("pool", machine.pool or "-")]):
        print(line, file=out)
    print("\ndisks:", file=out)
    if machine.disks:
        rows = [("TARGET", "TYPE", "SOURCE")] + [(d.target, d.kind, d.source)
                                                 for d in machine.disks]
        for line in format_table(rows):
            print(f"  {line}", file=out)
    else:
        print("  (none)", file=out)
    print("\nDHCP:", file=out)
    for entry in machine.dhcp:
        print(f"  {entry.dn}", file=out)
        for attribute, values in entry.attributes.items():
            if attribute.lower() != "objectclass":
                for value in values:
                    print(f"    {attribute}: {value}", file=out)
    if not machine.dhcp:
        print("  (none)", file=out)
    print("\nconfiguration:", file=out)
    policy = load_policy(reader, cfg, machine)  # 32/39 end the command here
    print(f"  level {policy.level}: {policy.source_dn}", file=out)
    for line in format_table(policy_rows(policy)):
        print(f"  {line}", file=out)


def verify(reader: DirectoryReader, cfg: Config, name: str, date: str | None,
           out: TextIO) -> None:
    """Check one backup directory against its manifest; CommandFailed on any problem."""
    machine = load_vm(reader, cfg, name)
    if date is None:
        leaf = newest_leaf(leaves_of(machine), VERIFIABLE_MODES)
        if leaf is None:
            raise CommandFailed(f"{name} has no backup leaf in mode "
                                f"{' or '.join(VERIFIABLE_MODES)}")
        date = leaf_date(leaf)
    if not machine.disks:
        raise CommandFailed(f"{name} has no disks in the directory")
    policy = load_policy(reader, cfg, machine)
    layout = Layout.of(name, date, machine.disks[0].source, policy)
    problems = verify_manifest(layout.backup, layout.manifest.name)
    if problems:
        for problem in problems:
            print(f"{problem.kind.value}: {problem.filename}: {problem.detail}", file=out)
        raise CommandFailed(f"{name} {date}: {len(problems)} problem(s) in {layout.backup}")
    count = len(read_manifest(layout.manifest))
    print(f"OK: {name} {date}: {count} files match {layout.manifest}", file=out)
