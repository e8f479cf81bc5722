"""A directory entry as plain data: what the rest of provbackup sees of LDAP.

The mirror, the gate and the configuration resolution work on these; none of them
needs ldap3. Attribute names are case-insensitive in LDAP, so they are kept
lower-cased; values stay as the server sent them.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from provbackup.directory.dn import normalize_dn, parent_dn


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry: its DN and its attributes (lower-cased name -> values)."""

    dn: str
    attributes: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_dict(cls, dn: str, attributes: Mapping[str, Iterable[str] | str]) -> Entry:
        """Build an entry from any mapping of attribute names to a value or values."""
        normalized = {}
        for name, values in attributes.items():
            if isinstance(values, (str, bytes)):
                values = (values,)
            normalized[name.lower()] = tuple(
                v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values)
        return cls(dn, normalized)

    @property
    def key(self) -> str:
        """The normalized DN, for lookups that must ignore case and spacing."""
        return normalize_dn(self.dn)

    @property
    def parent(self) -> str:
        """The normalized DN of the parent entry."""
        return normalize_dn(parent_dn(self.dn))

    def values(self, name: str) -> tuple[str, ...]:
        """Every value of an attribute (empty when absent)."""
        return self.attributes.get(name.lower(), ())

    def first(self, name: str, default: str | None = None) -> str | None:
        """The first value of an attribute, or `default`."""
        values = self.values(name)
        return values[0] if values else default

    def has_object_class(self, name: str) -> bool:
        """Whether objectClass holds `name` (compared case-insensitively)."""
        return name.lower() in (v.lower() for v in self.values("objectClass"))
