"""A directory entry as plain data: what the rest of provbackup sees of LDAP.

The mirror, the gate and the configuration resolution work on these; none of them
needs ldap3. Attribute names keep the server's spelling (for the LDIF export) but
are looked up case-insensitively, as LDAP compares them.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from provbackup.directory.dn import normalize_dn, parent_dn


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry: its DN and its attributes (name -> values)."""

    dn: str
    attributes: Mapping[str, tuple[str, ...]]
    _index: Mapping[str, str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {name.lower(): name for name in self.attributes})

    @classmethod
    def from_dict(cls, dn: str, attributes: Mapping[str, Iterable[str] | str]) -> Entry:
        """Build an entry from any mapping of attribute names to a value or values."""
        normalized = {}
        for name, values in attributes.items():
            if isinstance(values, (str, bytes)):
                values = (values,)
            normalized[name] = tuple(
                v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)
                for v in values)
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
        real = self._index.get(name.lower())
        return self.attributes[real] if real is not None else ()

    def first(self, name: str, default: str | None = None) -> str | None:
        """The first value of an attribute, or `default`."""
        values = self.values(name)
        return values[0] if values else default

    def has_object_class(self, name: str) -> bool:
        """Whether objectClass holds `name` (compared case-insensitively)."""
        return name.lower() in (v.lower() for v in self.values("objectClass"))
