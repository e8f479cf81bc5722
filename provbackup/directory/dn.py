"""Distinguished names: checking and building them."""

from __future__ import annotations

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn


def check_dn(text: str) -> str:
    """Return `text` if it is a well-formed, non-empty DN; raise ValueError if not."""
    if not text.strip():
        raise ValueError("expected a distinguished name like ou=x,dc=example,dc=org")
    try:
        parts = parse_dn(text)
    except (LDAPInvalidDnError, ValueError, IndexError):
        raise ValueError("expected a distinguished name like ou=x,dc=example,dc=org") from None
    if not parts or any(not attr for attr, _value, _sep in parts):
        raise ValueError("expected a distinguished name like ou=x,dc=example,dc=org")
    return text
