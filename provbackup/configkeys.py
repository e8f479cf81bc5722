"""Every key of the configuration file, declared once: section, name, type, default.

The first part is the original KVM.conf (CONTRACT.md section 7); provbackup's own
additions follow, each with a safe default. A parser takes the raw text and returns
the typed value or raises ValueError saying what was expected; config.py adds the file,
section and key to that message.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from provbackup.directory.dn import check_dn

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of the configuration file."""

    section: str
    name: str
    parse: Callable[[str], Any]
    default: Any = REQUIRED
    #: read for compatibility with the original file, not used by provbackup
    ignored: bool = False
    #: never shown, not even in error messages
    secret: bool = False

    def format(self, value: Any) -> str:
        """The value as it would be written in the file."""
        if isinstance(value, bool):
            return "1" if value else "0"
        return str(value)


def boolean(raw: str) -> bool:
    """1/0, true/false, yes/no, on/off (the original wrote 1 and 0)."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected a boolean (1 or 0)")


def integer(low: int, high: int) -> Callable[[str], int]:
    """A parser for a whole number from `low` to `high`."""
    def parse(raw: str) -> int:
        try:
            value = int(raw, 10)
        except ValueError:
            raise ValueError(f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value
    return parse


def choice(*options: str) -> Callable[[str], str]:
    """A parser for one of a few words, case-insensitive; returns the canonical word."""
    def parse(raw: str) -> str:
        for option in options:
            if raw.strip().lower() == option.lower():
                return option
        raise ValueError(f"expected one of {', '.join(options)}")
    return parse


def text(raw: str) -> str:
    """Any single-line text."""
    if any(ord(c) < 32 for c in raw):
        raise ValueError("expected text without control characters")
    return raw


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*|[A-Za-z0-9]"
                   r"([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def host(raw: str) -> str:
    """A host name or IP address (not a URI: the scheme comes from TLS)."""
    if "://" in raw:
        raise ValueError("expected a host name, not a URI (the scheme follows from TLS)")
    if not _HOST.match(raw):
        raise ValueError("expected a host name or IP address")
    return raw.strip("[]")


def node_name(raw: str) -> str:
    """This node's name as in sstNode: a host name, possibly fully qualified."""
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", raw):
        raise ValueError("expected this node's name as in sstNode (letters, digits, . _ -)")
    return raw


def dn(raw: str) -> str:
    """An LDAP distinguished name."""
    return check_dn(raw)


def absolute_path(raw: str) -> Path:
    """An absolute path without `..` components."""
    if "\x00" in raw:
        raise ValueError("expected an absolute path")
    path = PurePosixPath(raw)
    if not path.is_absolute():
        raise ValueError("expected an absolute path")
    if ".." in path.parts:
        raise ValueError("expected an absolute path without '..'")
    return Path(path)


def existing_file(raw: str) -> Path:
    """An absolute path of a readable regular file."""
    path = absolute_path(raw)
    if not path.is_file():
        raise ValueError("expected an existing file")
    if not os.access(path, os.R_OK):
        raise ValueError("expected a file this user can read")
    return path


def cookie(raw: str) -> str:
    """A syncrepl cookie such as rid=001,csn= (what to send when no cookie is kept)."""
    if not re.match(r"^rid=\d{1,3}(,|$)", raw):
        raise ValueError("expected a syncrepl cookie like 'rid=001,csn='")
    return raw


def libvirt_uri(raw: str) -> str:
    """A libvirt connection URI such as qemu:///system."""
    if not re.match(r"^[a-z][a-z0-9+.-]*:(//|///)", raw) or any(c.isspace() for c in raw):
        raise ValueError("expected a libvirt URI like qemu:///system")
    return raw


KEYS: tuple[Key, ...] = (
    # [Global]: the original's log switches and this node's name.
    Key("Global", "LOG_DEBUG", boolean, False),
    Key("Global", "LOG_INFO", boolean, True),
    Key("Global", "LOG_WARNING", boolean, True),
    Key("Global", "LOG_ERR", boolean, True),
    Key("Global", "ENVIRONMENT", node_name),
    # [Database]: the directory.
    Key("Database", "BACKEND", choice("LDAP"), "LDAP"),
    Key("Database", "SERVER", host),
    Key("Database", "PORT", integer(1, 65535), None),
    Key("Database", "ADMIN_USER", dn),
    # Exactly one of ADMIN_PASSWORD and PASSWORD_FILE, and one of the two spellings of
    # the cloud-wide DN, must be set: config.py checks those pairs.
    Key("Database", "ADMIN_PASSWORD", text, None, secret=True),
    Key("Database", "SERVICE_SUBTREE", dn),
    Key("Database", "COOKIE_FILE", absolute_path, Path("/var/lib/provbackup/syncrepl.cookie")),
    Key("Database", "DEFAULT_COOKIE", cookie, "rid=001,csn="),
    Key("Database", "SEARCH_FILTER", text, None, ignored=True),
    Key("Database", "STONEY_CLOUD_WIDE_CONFIGURATION", dn, None),
    Key("Database", "FOSS_CLOUD_WIDE_CONFIGURATION", dn, None),
    # provbackup's additions to [Database]: a password file, TLS verified by default.
    Key("Database", "PASSWORD_FILE", absolute_path, None),
    Key("Database", "TLS", choice("starttls", "ldaps", "none"), "starttls"),
    Key("Database", "TLS_CA_FILE", existing_file, None),
    Key("Database", "TLS_VERIFY", boolean, True),
    Key("Database", "TIMEOUT", integer(1, 3600), 30),
    # The original's other sections: accepted, not used.
    Key("Service", "MODUS", text, None, ignored=True),
    Key("Service", "TRANSPORTAPI", text, None, ignored=True),
    Key("Service", "SERVICE", text, None, ignored=True),
    Key("Service", "TYPE", text, None, ignored=True),
    Key("Service", "SYSLOG", text, None, ignored=True),
    Key("Gateway", "HOST", text, None, ignored=True),
    Key("Gateway", "USER", text, None, ignored=True),
    Key("Gateway", "DSA_FILE", text, None, ignored=True),
    Key("Backup", "EXPORT_COMMAND", text, None, ignored=True),
    # The reconnect policy, from the original's global file.
    Key("Operation Mode", "SLEEP", integer(1, 3600), 30),
    Key("Operation Mode", "ATTEMPTS", integer(0, 1000), 3),
    # provbackup's own sections.
    Key("Hypervisor", "LIBVIRT_URI", libvirt_uri, "qemu:///system"),
    Key("Daemon", "MAX_CONCURRENT_STEPS", integer(1, 64), 2),
    Key("Daemon", "STATE_DIRECTORY", absolute_path, Path("/var/lib/provbackup")),
    Key("Daemon", "IGNORE_UNKNOWN_KEYS", boolean, False),
)

KNOWN_SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(k.section for k in KEYS))
