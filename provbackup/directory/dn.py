"""Distinguished names (RFC 4514): checking, normalizing and taking them apart.

A small parser of our own rather than ldap3's: ldap3 refuses the spaces after commas
that operators write in configuration files (`ou=backup, ou=configuration, ...`).
"""

from __future__ import annotations

import re

_EXPECTED = "expected a distinguished name like ou=x,dc=example,dc=org"
_ATTRIBUTE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)*)$")
_SPECIAL = ',+"\\<>;='


def rdns(dn: str) -> list[tuple[str, str]]:
    """The (attribute, value) pairs of a DN, leftmost first, attributes lower-cased.

    Values are unescaped. Multi-valued RDNs (a+b) are not used in a stoney directory
    and are refused. Raises ValueError for anything that is not a DN.
    """
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(dn)
    while i < n:
        eq = dn.find("=", i)
        if eq < 0:
            raise ValueError(_EXPECTED)
        attribute = dn[i:eq].strip()
        if not _ATTRIBUTE.match(attribute):
            raise ValueError(_EXPECTED)
        value, i = _value(dn, eq + 1)
        pairs.append((attribute.lower(), value))
        if i < n:
            if dn[i] != ",":
                raise ValueError(_EXPECTED)
            i += 1
            if i >= n:
                raise ValueError(_EXPECTED)
    return pairs


def _value(dn: str, i: int) -> tuple[str, int]:
    """Read one escaped value starting at i; return it and the index of the separator."""
    n = len(dn)
    while i < n and dn[i] == " ":
        i += 1
    out: list[str] = []
    trailing = 0  # unescaped spaces at the end are not part of the value
    while i < n and dn[i] != ",":
        ch = dn[i]
        if ch == "\\":
            if i + 1 >= n:
                raise ValueError(_EXPECTED)
            if re.match(r"[0-9A-Fa-f]{2}", dn[i + 1:i + 3]):
                out.append(chr(int(dn[i + 1:i + 3], 16)))
                i += 3
            else:
                out.append(dn[i + 1])
                i += 2
            trailing = 0
            continue
        if ch in '+"<>;=':
            raise ValueError(_EXPECTED)
        out.append(ch)
        trailing = trailing + 1 if ch == " " else 0
        i += 1
    value = "".join(out[:len(out) - trailing] if trailing else out)
    if not value:
        raise ValueError(_EXPECTED)
    return value, i


def check_dn(text: str) -> str:
    """Return `text` if it is a well-formed, non-empty DN; raise ValueError if not."""
    if not text.strip():
        raise ValueError(_EXPECTED)
    rdns(text)
    return text


def escape_value(value: str) -> str:
    """Escape a value for use in a DN (RFC 4514 section 2.4)."""
    out = []
    for i, ch in enumerate(value):
        if ch in _SPECIAL or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def join(pairs: list[tuple[str, str]]) -> str:
    """Build a DN from (attribute, value) pairs, escaping the values."""
    return ",".join(f"{a}={escape_value(v)}" for a, v in pairs)


def normalize_dn(dn: str) -> str:
    """A form of the DN for comparisons: no spaces around separators, lower case.

    Every naming attribute provbackup deals with (ou, cn, dc, sstVirtualMachine,
    sstVirtualMachinePool, sstDisk) matches case-insensitively, so lower-casing the
    values is right here, if not for LDAP in general.
    """
    if not dn:
        return ""
    plain = normalize_plain(dn)
    return plain if plain is not None else join([(a, v.lower()) for a, v in rdns(dn)])


# A DN without these needs no unescaping and no escaping: the common case, taken for
# every entry of a refresh. tests/unit/test_dn.py checks both ways agree.
_NOT_PLAIN = re.compile(r'[\\"+;<>#]')


def normalize_plain(dn: str) -> str | None:
    """normalize_dn for a DN needing no escapes; None if it may need them or is invalid."""
    if _NOT_PLAIN.search(dn):
        return None
    out = []
    for part in dn.split(","):
        attribute, equals, value = part.partition("=")
        attribute, value = attribute.strip(), value.strip(" ")
        if not equals or not value or "=" in value or not _ATTRIBUTE.match(attribute):
            return None
        out.append(f"{attribute.lower()}={value.lower()}")
    return ",".join(out)


def split_normalized(ndn: str) -> list[str]:
    """The RDNs of a normalized DN (as normalize_dn gives it), leftmost first."""
    if "\\" not in ndn:
        return ndn.split(",") if ndn else []
    return [join([pair]) for pair in rdns(ndn)]


def parent_dn(dn: str) -> str:
    """The DN without its leftmost RDN ("" for a single-RDN DN)."""
    return join(rdns(dn)[1:])


def child_dn(attribute: str, value: str, parent: str) -> str:
    """The DN of a child entry, its value escaped."""
    return f"{attribute}={escape_value(value)},{parent}" if parent else f"{attribute}={escape_value(value)}"
