"""DN parsing, normalizing and escaping."""

import pytest

from provbackup.directory import dn


@pytest.mark.parametrize("text, pairs", [
    ("ou=backup,dc=x", [("ou", "backup"), ("dc", "x")]),
    ("ou=backup, ou=configuration , dc=x", [("ou", "backup"), ("ou", "configuration"), ("dc", "x")]),
    (r"cn=a\,b,dc=x", [("cn", "a,b"), ("dc", "x")]),
    (r"cn=a\2Cb,dc=x", [("cn", "a,b"), ("dc", "x")]),
    ("sstVirtualMachine=VM-1,ou=virtual machines", [("sstvirtualmachine", "VM-1"),
                                                   ("ou", "virtual machines")]),
])
def test_rdns_parse(text, pairs):
    """Separators may carry spaces; escapes are undone; attribute names are lower-cased."""
    assert dn.rdns(text) == pairs


@pytest.mark.parametrize("text", ["", "garbage", "=x", "ou=a,,dc=b", "ou=a,", "ou=",
                                  "ou=a+cn=b,dc=x", "o u=a", "ou=a\\"])
def test_malformed_dns_are_refused(text):
    """Anything that is not a plain DN raises ValueError with the expected form."""
    with pytest.raises(ValueError, match="expected a distinguished name"):
        dn.check_dn(text)


def test_normalize_ignores_case_and_spacing():
    """Two spellings of one DN normalize to the same string."""
    assert dn.normalize_dn("OU=Backup, sstVirtualMachine=VM-1") == \
        dn.normalize_dn("ou=backup,sstvirtualmachine=vm-1")


def test_child_dn_escapes_and_round_trips():
    """A value with special characters survives child_dn and rdns unchanged."""
    value = ' #a,b+c"d\\e<f>g;h=i '
    child = dn.child_dn("cn", value, "dc=x")
    assert dn.rdns(child) == [("cn", value), ("dc", "x")]
    assert dn.parent_dn(child) == "dc=x"
