"""Names of the stoney schema that provbackup reads and writes, and the backup options.

Each backup configuration attribute is declared once here: the policy field it
fills, how its value is read, its default (CONTRACT.md section 3) and which return
value a bad value gets. resolve.py applies the table.
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from provbackup import errors

# Object classes.
BACKUP_CONFIG_CLASS = "sstVirtualizationBackupObjectClass"
DISK_CLASS = "sstVirtualizationVirtualMachineDisk"
PROVISIONING_CLASS = "sstProvisioning"

# The leaf's request and answer (CONTRACT.md section 2).
MODE = "sstProvisioningMode"
STATE = "sstProvisioningState"
EXECUTION_DATE = "sstProvisioningExecutionDate"
RETURN_VALUE = "sstProvisioningReturnValue"
EXECUTION_TIME = "sstProvisioningExecutionTime"

# The VM entry and its disks.
NODE = "sstNode"
VM_NAME = "sstVirtualMachine"
VM_POOL = "sstVirtualMachinePool"
DEVICE = "sstDevice"
DISK_TARGET = "sstDisk"
SOURCE_FILE = "sstSourceFile"
SOURCE_NAME = "sstSourceName"
DISK_TYPE = "sstType"

BOOLEANS = {"TRUE": True, "FALSE": False}


def boolean(raw: str) -> bool:
    """An LDAP Boolean: exactly TRUE or FALSE (RFC 4517)."""
    if raw not in BOOLEANS:
        raise ValueError("expected TRUE or FALSE")
    return BOOLEANS[raw]


def count(low: int) -> Callable[[str], int]:
    """A parser for a whole number of at least `low`."""
    def parse(raw: str) -> int:
        if not raw.isdigit() or int(raw) < low:
            raise ValueError(f"expected a whole number of at least {low}")
        return int(raw)
    return parse


def permission(raw: str) -> int:
    """A file mode written as octal digits, e.g. 660."""
    if not raw or len(raw) > 4 or any(c not in "01234567" for c in raw):
        raise ValueError("expected a file mode of octal digits such as 660")
    return int(raw, 8)


def account(raw: str) -> str:
    """A user or group name, or a numeric id."""
    if raw.isdigit():
        return raw
    if not raw or not (raw[0].isalpha() or raw[0] == "_") or \
            any(not (c.isalnum() or c in "_.-$") for c in raw) or len(raw) > 32:
        raise ValueError("expected a user or group name or a numeric id")
    return raw


def absolute_path(raw: str) -> PurePosixPath:
    """An absolute path with no `..` and no empty or control characters."""
    path = PurePosixPath(raw)
    if not path.is_absolute() or ".." in path.parts or any(ord(c) < 32 for c in raw):
        raise ValueError("expected an absolute path without '..'")
    return path


class UnsupportedScheme(ValueError):
    """A directory URL with a scheme other than file:// (return value 35)."""


def file_url(raw: str) -> PurePosixPath:
    """A file:///absolute/path URL; other schemes are unsupported (35), bad paths 39."""
    parts = urlsplit(raw)
    if not parts.scheme:
        raise ValueError("expected a file:///absolute/path URL")
    if parts.scheme.lower() != "file":
        raise UnsupportedScheme(f"only file:// URLs are supported, not {parts.scheme}://")
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ValueError("expected a file:///absolute/path URL (no host, query or fragment)")
    return absolute_path(unquote(parts.path))


def image_format(raw: str) -> str:
    """The disk image format; provbackup's overlays and merges need qcow2."""
    if raw.lower() != "qcow2":
        raise ValueError("expected qcow2")
    return "qcow2"


@dataclasses.dataclass(frozen=True)
class Option:
    """One attribute of a backup configuration entry."""

    attribute: str
    field: str
    parse: Callable[[str], Any]
    default: Any
    #: the return value for a value that cannot be used
    error: type[errors.StepError] = errors.UnsupportedConfigurationParameterError


BACKUP_OPTIONS: tuple[Option, ...] = (
    Option("sstBackupRootDirectory", "root_directory", file_url,
           PurePosixPath("/var/backup/virtualization")),
    Option("sstBackupRetainDirectory", "retain_directory", file_url,
           PurePosixPath("/var/virtualization/retain")),
    Option("sstBackupRamDiskLocation", "ram_disk", file_url, None,
           errors.RamDiskNotValidError),
    Option("sstBackupNumberOfIterations", "iterations", count(1), 1),
    Option("sstBackupExcludeFromBackup", "exclude_from_backup", boolean, False),
    Option("sstRestoreVMWithoutState", "restore_without_state", boolean, False),
    Option("sstVirtualizationVirtualMachineForceStart", "force_start", boolean, False),
    Option("sstVirtualizationBandwidthMerge", "bandwidth_merge", count(0), 0),
    Option("sstVirtualizationDiskImageFormat", "image_format", image_format, "qcow2"),
    Option("sstVirtualizationDiskImageOwner", "image_owner", account, "root"),
    Option("sstVirtualizationDiskImageGroup", "image_group", account, "vm-storage"),
    Option("sstVirtualizationDiskImagePermission", "image_mode", permission, 0o660),
    Option("sstVirtualizationDiskImageDirectoryOwner", "directory_owner", account, "root"),
    Option("sstVirtualizationDiskImageDirectoryGroup", "directory_group", account, "vm-storage"),
    Option("sstVirtualizationDiskImageDirectoryPermission", "directory_mode", permission, 0o770),
)
