"""DN parsing, normalizing and escaping."""

import pytest
from hypothesis import assume, given, settings, strategies as st

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


# --- the fast path of normalize_dn, and split_normalized ------------------------------

# Every character that matters to the DN grammar, plus letters of both cases, digits,
# other whitespace and characters whose lower case is special (İ, K = Kelvin sign).
DN_ALPHABET = 'aAbB=, \\"+#;<>0x\t\u0130\u212a2Cc'


def full_parser_normalization(text: str) -> str:
    """normalize_dn's definition, through the full parser only."""
    return dn.join([(a, v.lower()) for a, v in dn.rdns(text)])


def outcome(function, text):
    """("ok", result) or ("ValueError", None): what `function(text)` does."""
    try:
        return "ok", function(text)
    except ValueError:
        return "ValueError", None


# Random characters alone are rarely a DN. DN_TEXT also builds attribute=value lists
# from pieces, mostly valid ones, with now and then a piece that breaks the grammar.
_ATTRIBUTES = st.sampled_from(["ou", "OU", "cn", "dc", "2.5.4.3", "sstVirtualMachine", " ou",
                               "cn "] * 4 + ["o u", "", "1x", "c#n"])
_VALUE_PIECES = st.sampled_from(["a", "B", "x0", " ", "\t", "\u0130", "\u212a"] * 6
                                + ["\\,", "\\2C", "\\2c", "\\ ", "\\#", "\\\\", "\\+", "#"] * 2
                                + ["\\", "=", "+", '"', ";", "<", ">", "\\4", "\\zz"])
_EQUALS = st.sampled_from(["=", " = "] * 8 + ["", "=="])
_SEPARATORS = st.sampled_from([",", ", ", " , "] * 8 + [",,", ";", "+"])


@st.composite
def _dn_like(draw):
    """attribute=value pairs joined by separators, drawn from the pieces above."""
    values = st.lists(_VALUE_PIECES, min_size=1, max_size=4).map("".join)
    rdns = [draw(_ATTRIBUTES) + draw(_EQUALS) + draw(values)
            for _ in range(draw(st.integers(1, 4)))]
    text = rdns[0]
    for rdn in rdns[1:]:
        text += draw(_SEPARATORS) + rdn
    return text


DN_TEXT = st.one_of(st.text(alphabet=DN_ALPHABET, max_size=24), _dn_like())


@settings(database=None, deadline=None, derandomize=True, max_examples=1500)
@given(DN_TEXT)
def test_normalize_dn_agrees_with_the_full_parser(text):
    """For any non-empty text, normalize_dn and the full parser both refuse it or agree."""
    assume(text)
    assert outcome(dn.normalize_dn, text) == outcome(full_parser_normalization, text)


@settings(database=None, deadline=None, derandomize=True, max_examples=1000)
@given(st.lists(st.tuples(st.sampled_from(["ou", "CN", " dc ", "sstVirtualMachine", "2.5.4.3"]),
                          st.text(alphabet='aAbB=, \\"+#;<>0x', min_size=1, max_size=8)),
                min_size=1, max_size=4))
def test_normalize_dn_agrees_with_the_full_parser_on_dn_shaped_text(pairs):
    """DN-shaped text (attribute=value, ...), valid or not, gets the same answer both ways."""
    text = ",".join(f"{a}={v}" for a, v in pairs)
    assert outcome(dn.normalize_dn, text) == outcome(full_parser_normalization, text)


@pytest.mark.parametrize("text, normalized", [
    ("OU=Backup, sstVirtualMachine=VM-1 ,dc=X", "ou=backup,sstvirtualmachine=vm-1,dc=x"),
    ("ou = Virtual Machines ,dc=x", "ou=virtual machines,dc=x"),
    (r"cn=A\,B,dc=X", r"cn=a\,b,dc=x"),
    (r"cn=A\2CB,dc=X", r"cn=a\,b,dc=x"),
    ("cn=a#b,dc=x", "cn=a#b,dc=x"),
    (r"cn=\#a,dc=x", r"cn=\#a,dc=x"),
    (r"cn=\ a\ ,dc=x", r"cn=\ a\ ,dc=x"),
])
def test_normalize_dn_examples(text, normalized):
    """Plain and escaped DNs normalize to lower case without separator spaces, re-escaped."""
    assert dn.normalize_dn(text) == normalized


@pytest.mark.parametrize("text", ["ou=a,", "ou=a,,dc=x", "ou", "ou=", "ou= ,dc=x", "o u=a",
                                  "ou=a=b", "-ou=a", "ou=a,dc"])
def test_normalize_plain_refuses_what_the_parser_refuses(text):
    """normalize_plain gives None (so normalize_dn raises) for text that is no DN."""
    assert dn.normalize_plain(text) is None
    with pytest.raises(ValueError):
        dn.normalize_dn(text)


VALID_DNS = ["ou=a,dc=x", "OU=A, DC=X", r"cn=a\,b,dc=x", r"cn=a\2cb,dc=x", r"cn=\#x,ou=a\+b",
             r"cn=a\\b,dc=x", r"cn=a\;b\<c\>d\"e,dc=x", "cn=a#b,dc=x", r"cn=\ lead,dc=x",
             r"cn=trail\ ,dc=x", "dc=x", "sstVirtualMachine=VM-1,ou=virtual machines,dc=x"]


@pytest.mark.parametrize("text", VALID_DNS)
def test_split_normalized_gives_the_rdns_of_a_normalized_dn(text):
    """split_normalized(normalize_dn(x)) is the normalized DN's RDNs, each joined alone."""
    normalized = dn.normalize_dn(text)
    assert dn.split_normalized(normalized) == [dn.join([p]) for p in dn.rdns(normalized)]


def test_split_normalized_keeps_escaped_commas_inside_an_rdn():
    """An escaped comma does not split an RDN; an empty DN has no RDNs."""
    assert dn.split_normalized(dn.normalize_dn(r"CN=A\,B, DC=X")) == [r"cn=a\,b", "dc=x"]
    assert dn.split_normalized("") == []


@settings(database=None, deadline=None, derandomize=True, max_examples=1000)
@given(DN_TEXT)
def test_split_normalized_agrees_with_rdns_for_any_valid_dn(text):
    """For every text normalize_dn accepts, split_normalized gives its RDNs joined one by one."""
    assume(text)
    try:
        normalized = dn.normalize_dn(text)
    except ValueError:
        return
    assert dn.split_normalized(normalized) == [dn.join([p]) for p in dn.rdns(normalized)]
    # Normalizing is idempotent: the normalized form is its own normal form.
    assert dn.normalize_dn(normalized) == normalized
