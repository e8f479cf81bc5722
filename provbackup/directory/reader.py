"""The one directory connection of an operator command: base and subtree reads, writes.

The operator commands (provbackup/commands/) read without syncrepl; this adapter is
their edge to LDAP and translates every ldap3 exception once, here.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars

from provbackup.config import LdapSettings
from provbackup.directory import connection
from provbackup.directory.connection import DirectoryError, DirectoryUnavailable
from provbackup.directory.dn import normalize_dn, rdns, split_normalized
from provbackup.directory.entry import Entry


class EntryExistsError(DirectoryError):
    """The entry to add exists already."""


class DirectoryReader:
    """Plain searches and modifies over one bound connection; `get`/`subtree` for read_machine."""

    def __init__(self, conn: ldap3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, settings: LdapSettings) -> DirectoryReader:
        """Connect and bind (a DirectoryError subclass when that fails)."""
        return cls(connection.connect(settings))

    def close(self) -> None:
        """Unbind the connection."""
        try:
            self._conn.unbind()
        except ldap_errors.LDAPException:
            pass

    def __enter__(self) -> DirectoryReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def get(self, dn: str) -> Entry | None:
        """The entry at `dn`, or None when there is none."""
        found = self._search(dn, "(objectClass=*)", ldap3.BASE)
        return found[0] if found else None

    def subtree(self, dn: str) -> list[Entry]:
        """`dn` and everything below it, parents before children; [] when `dn` is absent."""
        return sorted(self._search(dn, "(objectClass=*)", ldap3.SUBTREE),
                      key=lambda e: len(rdns(e.dn)))

    def named(self, rdn: str, base: str) -> list[Entry]:
        """The entries with leftmost RDN `rdn` (e.g. cn=x) anywhere below `base`."""
        attribute, value = rdns(rdn)[0]
        key = normalize_dn(rdn)
        return [e for e in self._search(base, f"({attribute}={escape_filter_chars(value)})",
                                        ldap3.SUBTREE)
                if split_normalized(e.key)[0] == key]

    def find(self, base: str, filter_: str, one_level: bool = False) -> list[Entry]:
        """The entries below `base` that match `filter_`; [] when `base` is absent."""
        return self._search(base, filter_, ldap3.LEVEL if one_level else ldap3.SUBTREE)

    def add(self, dn: str, object_classes: Iterable[str], attributes: Mapping[str, str]) -> None:
        """Add an entry; EntryExistsError when it is there already."""
        try:
            self._conn.add(dn, list(object_classes), dict(attributes))
        except ldap_errors.LDAPEntryAlreadyExistsResult:
            raise EntryExistsError(f"{dn} exists already") from None
        except ldap_errors.LDAPException as e:
            raise self._translate(e, f"cannot add {dn}") from None

    def replace(self, dn: str, values: Mapping[str, str]) -> None:
        """Replace attributes of `dn` in ONE modify, one value each."""
        try:
            self._conn.modify(dn, {name: [(ldap3.MODIFY_REPLACE, [value])]
                                   for name, value in values.items()})
        except ldap_errors.LDAPException as e:
            raise self._translate(e, f"cannot modify {dn}") from None

    def _search(self, base: str, filter_: str, scope: str) -> list[Entry]:
        try:
            self._conn.search(base, filter_, search_scope=scope,
                              attributes=[ldap3.ALL_ATTRIBUTES])
        except ldap_errors.LDAPNoSuchObjectResult:
            return []
        except ldap_errors.LDAPException as e:
            raise self._translate(e, f"cannot search {base}") from None
        return [Entry.from_dict(r["dn"], r["raw_attributes"]) for r in self._conn.response
                if r.get("type") == "searchResEntry"]

    @staticmethod
    def _translate(e: ldap_errors.LDAPException, what: str) -> DirectoryError:
        if connection.is_connection_error(e):
            return DirectoryUnavailable(f"{what}: lost the directory connection: {e}")
        return DirectoryError(f"{what}: {e}")


def equals(attribute: str, value: str) -> str:
    """An equality filter with `value` escaped (RFC 4515)."""
    return f"({attribute}={escape_filter_chars(value)})"
