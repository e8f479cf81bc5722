"""The hand-written BER of wire.py: parsing what slapd sends, framing, malformed input, requests.

Messages are built with `wire.tlv` (minimal lengths) and with `long_tlv`, which writes
the 4-byte long form (0x84 xx xx xx xx) OpenLDAP's liblber uses for every SEQUENCE and
SET it encodes; a parser must read both alike.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from ldap3.protocol.rfc4511 import LDAPMessage
from pyasn1.codec.ber import decoder as ber_decoder

from provbackup.directory import syncproto, wire
from provbackup.directory.wire import WireError

SYNC_STATE_OID = syncproto.SYNC_STATE_OID
SYNC_DONE_OID = syncproto.SYNC_DONE_OID
SYNC_INFO_OID = syncproto.SYNC_INFO_OID
NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"
UUID = bytes.fromhex("45027ca67a6b1041981a09aa0ca62dd8")
COOKIE = b"rid=000,csn=20261122025158.947994Z#000000#000#000000"
# A Sync State `add` with a cookie, and a Sync Done with a cookie and refreshDeletes.
STATE_VALUE = wire.tlv(0x30, b"\x0a\x01\x01" + wire.tlv(0x04, UUID) + wire.tlv(0x04, COOKIE))
DONE_VALUE = wire.tlv(0x30, wire.tlv(0x04, COOKIE) + b"\x01\x01\xff")
INFO_VALUE = bytes.fromhex("a1020400")  # refreshDelete with an empty cookie


# --- builders ----------------------------------------------------------------------

def long_tlv(tag: int, content: bytes) -> bytes:
    """One BER element with its length in the 4-byte long form liblber writes."""
    return bytes((tag, 0x84)) + len(content).to_bytes(4, "big") + content


def integer(value: int) -> bytes:
    """The content octets of an INTEGER, minimal two's complement."""
    return value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)


def attribute_list(attributes: dict[str, list[str]], seq=wire.tlv) -> bytes:
    """A PartialAttributeList's content; `seq` encodes its SEQUENCEs and SETs."""
    return b"".join(
        seq(0x30, wire.tlv(0x04, name.encode()) +
            seq(0x31, b"".join(wire.tlv(0x04, v.encode()) for v in values)))
        for name, values in attributes.items())


def control(oid: str, value: bytes | None, critical: bool | None = None, seq=wire.tlv) -> bytes:
    """One Control; criticality only when given (DEFAULT FALSE)."""
    flag = b"" if critical is None else wire.tlv(0x01, b"\xff" if critical else b"\x00")
    return seq(0x30, wire.tlv(0x04, oid.encode()) + flag +
               (b"" if value is None else wire.tlv(0x04, value)))


def message(message_id: int, operation: bytes, controls: list[bytes] = (), seq=wire.tlv) -> bytes:
    """An LDAPMessage around an encoded protocolOp and controls."""
    encoded = seq(0xA0, b"".join(controls)) if controls else b""
    return seq(0x30, wire.tlv(0x02, integer(message_id)) + operation + encoded)


def result(tag: int, code: int, matched: str = "", text: str = "", extra: bytes = b"",
           seq=wire.tlv) -> bytes:
    """An LDAPResult-shaped operation (SearchResultDone, ExtendedResponse)."""
    return seq(tag, wire.tlv(0x0A, integer(code)) + wire.tlv(0x04, matched.encode()) +
               wire.tlv(0x04, text.encode()) + extra)


ATTRIBUTES = {"objectClass": ["top", "sstVirtualizationVirtualMachine"],
              "sstVirtualMachine": ["vm-1"], "description": ["Grüezi", ""]}
DN = "sstVirtualMachine=vm-1,ou=virtual machines,ou=services,dc=example,dc=org"


def entry_message(seq, message_id=0x7FFF0001) -> bytes:
    """A SearchResultEntry with a Sync State control."""
    operation = seq(0x64, wire.tlv(0x04, DN.encode()) + seq(0x30, attribute_list(ATTRIBUTES, seq)))
    return message(message_id, operation, [control(SYNC_STATE_OID, STATE_VALUE, seq=seq)], seq)


def intermediate_message(seq) -> bytes:
    """An IntermediateResponse carrying a Sync Info value."""
    operation = seq(0x79, wire.tlv(0x80, SYNC_INFO_OID.encode()) + wire.tlv(0x81, INFO_VALUE))
    return message(0x7FFF0001, operation, seq=seq)


def done_message(seq) -> bytes:
    """A SearchResultDone with e-syncRefreshRequired and a Sync Done control."""
    operation = result(0x65, syncproto.SYNC_REFRESH_REQUIRED, "ou=services,dc=example,dc=org",
                       "refresh required", seq=seq)
    return message(0x7FFF0001, operation, [control(SYNC_DONE_OID, DONE_VALUE, False, seq)], seq)


def notice_message(seq) -> bytes:
    """An unsolicited Notice of Disconnection (message ID 0, ExtendedResponse)."""
    operation = result(0x78, 52, text="server shutting down",
                       extra=wire.tlv(0x8A, NOTICE_OF_DISCONNECTION.encode()), seq=seq)
    return message(0, operation, seq=seq)


def reference_message(seq) -> bytes:
    """A SearchResultReference (continuation URIs)."""
    operation = seq(0x73, wire.tlv(0x04, b"ldap://other.example.org/dc=example,dc=org??sub"))
    return message(0x7FFF0001, operation, seq=seq)


SEQ_FORMS = pytest.mark.parametrize("seq", [wire.tlv, long_tlv], ids=["short", "long-0x84"])
BUILDERS = [entry_message, intermediate_message, done_message, notice_message, reference_message]
VALID = [build(seq) for build in BUILDERS for seq in (wire.tlv, long_tlv)]


# --- parse: what the consumer receives -------------------------------------------------

@SEQ_FORMS
def test_search_entry_with_sync_state_control(seq):
    """A SearchResultEntry gives its DN, its undecoded attribute list and the Sync State value."""
    parsed = wire.parse(entry_message(seq))
    assert parsed.message_id == 0x7FFF0001 and parsed.tag == wire.SEARCH_RESULT_ENTRY
    assert parsed.operation == wire.SearchEntry(DN, attribute_list(ATTRIBUTES, seq))
    assert parsed.controls == {SYNC_STATE_OID: STATE_VALUE}
    assert wire.decode_attributes(parsed.operation.attributes) == \
        {name: tuple(values) for name, values in ATTRIBUTES.items()}
    state = syncproto.decode_sync_state(parsed.controls[SYNC_STATE_OID])
    assert (state.state, state.entry_uuid, state.cookie) == ("add", UUID, COOKIE)


@SEQ_FORMS
def test_intermediate_response_with_sync_info(seq):
    """An IntermediateResponse gives its responseName and responseValue, no controls."""
    parsed = wire.parse(intermediate_message(seq))
    assert parsed == wire.Message(0x7FFF0001, wire.INTERMEDIATE_RESPONSE,
                                  wire.Intermediate(SYNC_INFO_OID, INFO_VALUE), {})
    info = syncproto.decode_sync_info(parsed.operation.value)
    assert (info.kind, info.cookie, info.refresh_done) == ("refreshDelete", b"", True)


def test_intermediate_response_without_name_or_value():
    """An empty IntermediateResponse has neither name nor value (None, not b"")."""
    parsed = wire.parse(message(3, wire.tlv(0x79, b"")))
    assert parsed.operation == wire.Intermediate(None, None)


@SEQ_FORMS
def test_search_result_done_with_code_and_sync_done_control(seq):
    """A SearchResultDone gives code (4096 needs two bytes), matchedDN, message, Sync Done."""
    parsed = wire.parse(done_message(seq))
    assert parsed == wire.Message(
        0x7FFF0001, wire.SEARCH_RESULT_DONE,
        wire.Result(4096, "ou=services,dc=example,dc=org", "refresh required", None),
        {SYNC_DONE_OID: DONE_VALUE})
    done = syncproto.decode_sync_done(parsed.controls[SYNC_DONE_OID])
    assert (done.cookie, done.refresh_deletes) == (COOKIE, True)


@SEQ_FORMS
def test_unsolicited_notice_has_message_id_zero_and_a_response_name(seq):
    """A Notice of Disconnection parses as message 0, an ExtendedResponse with its name."""
    parsed = wire.parse(notice_message(seq))
    assert parsed.message_id == wire.UNSOLICITED == 0
    assert parsed.tag == wire.EXTENDED_RESPONSE
    assert parsed.operation == wire.Result(52, "", "server shutting down", NOTICE_OF_DISCONNECTION)
    assert parsed.controls == {}


def test_extended_response_skips_referral_and_value_around_the_name():
    """responseName is found between a referral [3] and a responseValue [11]."""
    extra = (wire.tlv(0xA3, wire.tlv(0x04, b"ldap://x/")) + wire.tlv(0x8A, b"1.2.3")
             + wire.tlv(0x8B, b"\x00\x01"))
    parsed = wire.parse(message(0, result(0x78, 0, extra=extra)))
    assert parsed.operation == wire.Result(0, "", "", "1.2.3")


@SEQ_FORMS
def test_search_result_reference_has_no_operation(seq):
    """A SearchResultReference parses, with operation None and its tag kept."""
    parsed = wire.parse(reference_message(seq))
    assert (parsed.message_id, parsed.tag, parsed.operation, parsed.controls) == \
        (0x7FFF0001, wire.SEARCH_RESULT_REFERENCE, None, {})


def test_all_elements_in_long_form_parse_like_short_form():
    """Long-form lengths on primitive elements too (legal BER) give the same message."""
    short = wire.parse(entry_message(wire.tlv))
    operation = long_tlv(0x64, long_tlv(0x04, DN.encode()) + long_tlv(0x30, b"".join(
        long_tlv(0x30, long_tlv(0x04, name.encode()) +
                 long_tlv(0x31, b"".join(long_tlv(0x04, v.encode()) for v in values)))
        for name, values in ATTRIBUTES.items())))
    controls = long_tlv(0xA0, long_tlv(0x30, long_tlv(0x04, SYNC_STATE_OID.encode())
                                       + long_tlv(0x04, STATE_VALUE)))
    data = long_tlv(0x30, long_tlv(0x02, integer(0x7FFF0001)) + operation + controls)
    parsed = wire.parse(data)
    assert (parsed.message_id, parsed.tag, parsed.operation.dn, parsed.controls) == \
        (short.message_id, short.tag, short.operation.dn, short.controls)
    assert wire.decode_attributes(parsed.operation.attributes) == \
        wire.decode_attributes(short.operation.attributes)


@pytest.mark.parametrize("message_id", [0, 1, 127, 128, 255, 256, 0x7FFF, 0x8000, 0x7FFF0001,
                                        2**31 - 1])
def test_message_ids_of_every_width(message_id):
    """Message IDs needing a leading zero byte (128, 0x8000) decode as positive numbers."""
    assert wire.parse(message(message_id, wire.tlv(0x79, b""))).message_id == message_id


def test_controls_keep_every_oid_and_none_for_a_missing_value():
    """Several controls are all kept; criticality is skipped; no controlValue gives None."""
    data = message(7, wire.tlv(0x65, b"\x0a\x01\x00\x04\x00\x04\x00"),
                   [control("1.2.3", None, True), control("1.2.4", b"", False),
                    control("1.2.5", b"v")])
    assert wire.parse(data).controls == {"1.2.3": None, "1.2.4": b"", "1.2.5": b"v"}


def test_non_utf8_dn_does_not_fail():
    """A DN that is not UTF-8 still decodes (the bytes are kept as surrogate escapes)."""
    operation = wire.tlv(0x64, wire.tlv(0x04, b"cn=\xff,dc=x") + wire.tlv(0x30, b""))
    parsed = wire.parse(message(2, operation))
    assert parsed.operation.dn.encode("utf-8", "surrogateescape") == b"cn=\xff,dc=x"
    assert parsed.operation.attributes == b""


# --- frame_size ----------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x84", b"\x30\x84\x00\x00\x01",
                                  b"\x30\x81", b"\x30\x82\x01"])
def test_frame_size_is_none_while_the_header_is_incomplete(data):
    """Fewer bytes than the tag and the whole length field: None, not an error."""
    assert wire.frame_size(data, 0) is None
    assert wire.frame_size(bytearray(b"junk" + data), 4) is None


@pytest.mark.parametrize("data, size", [
    (b"\x30\x00", 2),
    (b"\x30\x05", 7),  # the content need not be there yet
    (b"\x30\x7f", 129),
    (b"\x30\x81\x80", 131),
    (b"\x30\x82\x01\x00", 260),
    (b"\x30\x84\x00\x00\x00\x07", 13),
    (b"\x30\x84\x00\x01\x00\x00abc", 65542),
])
def test_frame_size_of_a_complete_header(data, size):
    """A complete header gives tag + length field + content length, at any offset."""
    assert wire.frame_size(data, 0) == size
    assert wire.frame_size(bytearray(b"\x30\x00" + data), 2) == size


@pytest.mark.parametrize("build", BUILDERS)
@SEQ_FORMS
def test_frame_size_of_real_messages_and_their_prefixes(build, seq):
    """A message (alone or followed by more) frames to its length; a prefix to None or it."""
    data = build(seq)
    assert wire.frame_size(data, 0) == len(data)
    assert wire.frame_size(data + data[:3], 0) == len(data)
    assert wire.frame_size(data + data, len(data)) == len(data)
    for cut in range(len(data)):
        assert wire.frame_size(data[:cut], 0) in (None, len(data))


@pytest.mark.parametrize("data", [b"\x31\x00", b"\x00\x00", b"\x04\x01a", b"\xff\xff",
                                  b"\x30\x80", b"\x30\x85\x00\x00\x00\x00\x01", b"\x30\xff"])
def test_frame_size_refuses_what_cannot_start_a_message(data):
    """A first byte other than 0x30, an indefinite or over-long length raises WireError."""
    with pytest.raises(WireError):
        wire.frame_size(data, 0)
    with pytest.raises(WireError):
        wire.frame_size(b"\x30\x00" + data, 2)


# --- malformed input -------------------------------------------------------------------

ENTRY = entry_message(wire.tlv)
MSGID = wire.tlv(0x02, b"\x05")
EMPTY_INTERMEDIATE = wire.tlv(0x79, b"")

MALFORMED = {
    "empty": b"",
    "one byte": b"\x30",
    "truncated message": ENTRY[:-1],
    "truncated long-form message": entry_message(long_tlv)[:-5],
    "truncated inside the long length": b"\x30\x84\x00\x00",
    "inner element longer than its parent": wire.tlv(0x30, MSGID + b"\x79\x05\x80\x01a"),
    "inner length field cut": wire.tlv(0x30, MSGID + b"\x79\x84\x00"),
    "no protocolOp": wire.tlv(0x30, MSGID),
    "a lone byte after the operation": wire.tlv(0x30, MSGID + EMPTY_INTERMEDIATE + b"\xa0"),
    "indefinite outer length": b"\x30\x80" + MSGID + EMPTY_INTERMEDIATE + b"\x00\x00",
    "indefinite inner length": wire.tlv(0x30, MSGID + b"\x79\x80\x00\x00"),
    "multi-byte tag of the operation": wire.tlv(0x30, MSGID + b"\x7f\x81\x01\x00"),
    "multi-byte tag inside an entry": wire.tlv(0x30, MSGID + wire.tlv(0x64, b"\x1f\x05\x00")),
    "multi-byte tag of the message": b"\x3f\x00",
    "5-byte outer length": b"\x30\x85\x00\x00\x00\x00\x05" + MSGID + b"\x79\x00",
    "5-byte inner length": wire.tlv(0x30, MSGID + b"\x79\x85\x00\x00\x00\x00\x00"),
    "message is a SET": wire.tlv(0x31, MSGID + EMPTY_INTERMEDIATE),
    "messageID is an OCTET STRING": wire.tlv(0x30, wire.tlv(0x04, b"\x05") + EMPTY_INTERMEDIATE),
    "messageID without content": wire.tlv(0x30, b"\x02\x00" + EMPTY_INTERMEDIATE),
    "entry DN is a SEQUENCE": message(1, wire.tlv(0x64, wire.tlv(0x30, b"") + wire.tlv(0x30, b""))),
    "entry attributes are a SET": message(1, wire.tlv(0x64, wire.tlv(0x04, b"cn=x")
                                                      + wire.tlv(0x31, b""))),
    "entry without attributes": message(1, wire.tlv(0x64, wire.tlv(0x04, b"cn=x"))),
    "resultCode is an INTEGER": message(1, wire.tlv(0x65, b"\x02\x01\x00\x04\x00\x04\x00")),
    "resultCode without content": message(1, wire.tlv(0x65, b"\x0a\x00\x04\x00\x04\x00")),
    "matchedDN missing": message(1, wire.tlv(0x65, b"\x0a\x01\x00\x04\x00")),
    "diagnosticMessage is a SEQUENCE": message(1, wire.tlv(0x65, b"\x0a\x01\x00\x04\x00\x30\x00")),
    "control is a SET": message(1, EMPTY_INTERMEDIATE, [wire.tlv(0x31, wire.tlv(0x04, b"1.2"))]),
    "controlType is an INTEGER": message(1, EMPTY_INTERMEDIATE,
                                         [wire.tlv(0x30, wire.tlv(0x02, b"\x01"))]),
    "control without controlType": message(1, EMPTY_INTERMEDIATE, [wire.tlv(0x30, b"")]),
    "trailing byte after the message": ENTRY + b"\x00",
    "a second message after the message": ENTRY + ENTRY,
    "trailing bytes after a long-form message": entry_message(long_tlv) + b"\x30\x00",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_messages_raise_wire_error(data):
    """Every kind of malformed message raises WireError (a ValueError), nothing else."""
    with pytest.raises(WireError) as caught:
        wire.parse(data)
    assert isinstance(caught.value, ValueError)


MALFORMED_ATTRIBUTES = {
    "truncated": attribute_list(ATTRIBUTES)[:-1],
    "a lone byte": b"\x30",
    "attribute is a SET": wire.tlv(0x31, wire.tlv(0x04, b"cn") + wire.tlv(0x31, b"")),
    "type is an INTEGER": wire.tlv(0x30, wire.tlv(0x02, b"\x01") + wire.tlv(0x31, b"")),
    "values are a SEQUENCE": wire.tlv(0x30, wire.tlv(0x04, b"cn") + wire.tlv(0x30, b"")),
    "no values": wire.tlv(0x30, wire.tlv(0x04, b"cn")),
    "value is an INTEGER": wire.tlv(0x30, wire.tlv(0x04, b"cn") +
                                    wire.tlv(0x31, wire.tlv(0x02, b"\x01"))),
    "value longer than its SET": wire.tlv(0x30, wire.tlv(0x04, b"cn") + b"\x31\x03\x04\x05abc"),
    "indefinite length": b"\x30\x80\x04\x02cn\x31\x00\x00\x00",
    "multi-byte tag": b"\x3f\x30\x00",
    "5-byte length": b"\x30\x85\x00\x00\x00\x00\x00",
}


@pytest.mark.parametrize("blob", MALFORMED_ATTRIBUTES.values(), ids=MALFORMED_ATTRIBUTES.keys())
def test_malformed_attribute_lists_raise_wire_error(blob):
    """A damaged PartialAttributeList raises WireError."""
    with pytest.raises(WireError):
        wire.decode_attributes(blob)


def _only_wire_errors(data: bytes) -> None:
    """parse, decode_attributes and frame_size either answer or raise WireError."""
    for call in (lambda: wire.parse(data), lambda: wire.decode_attributes(data),
                 lambda: wire.frame_size(data, 0)):
        try:
            call()
        except WireError:
            pass


VALID_BLOBS = VALID + [attribute_list(ATTRIBUTES), attribute_list(ATTRIBUTES, long_tlv)]
FUZZ = settings(database=None, deadline=None, derandomize=True, max_examples=400,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_wire_error(data):
    """Random bytes never make the decoders raise anything but WireError."""
    _only_wire_errors(data)


@FUZZ
@given(st.sampled_from(VALID_BLOBS), st.data())
def test_every_truncation_raises_only_wire_error(valid, data):
    """A valid message or attribute list cut anywhere gives WireError or a result."""
    cut = data.draw(st.integers(0, len(valid)))
    _only_wire_errors(valid[:cut])


@pytest.mark.parametrize("valid", VALID, ids=[f"{b.__name__}-{s}" for b in BUILDERS
                                              for s in ("short", "long")])
def test_every_proper_prefix_of_a_message_is_refused(valid):
    """A message cut at any byte raises WireError: its outer length says more follows."""
    for cut in range(len(valid)):
        with pytest.raises(WireError):
            wire.parse(valid[:cut])


@FUZZ
@given(st.sampled_from(VALID_BLOBS), st.data())
def test_mutations_raise_only_wire_error(valid, data):
    """Valid bytes with bytes replaced, inserted or removed give WireError or a result."""
    raw = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        kind = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = data.draw(st.integers(0, 255))
        if kind == "replace" and raw:
            raw[where] = byte
        elif kind == "insert":
            raw.insert(where, byte)
        elif raw:
            del raw[where]
    _only_wire_errors(bytes(raw))


# --- attribute lists ---------------------------------------------------------------------

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-;.",
                min_size=1, max_size=30)
VALUES = st.lists(st.text(max_size=40), max_size=5).map(tuple)  # non-ASCII and "" included


@settings(database=None, deadline=None, derandomize=True, max_examples=300)
@given(st.dictionaries(NAMES, VALUES, max_size=8))
def test_attributes_round_trip(attributes):
    """decode_attributes(encode_attributes(d)) == d, order and empty values included."""
    assert wire.decode_attributes(wire.encode_attributes(attributes)) == attributes


def test_attributes_round_trip_examples():
    """Non-ASCII, empty and long (long-form length) values, and an empty value set, survive."""
    attributes = {"cn": ("Zürich", "", "日本語"), "description": ("x" * 300,), "member": ()}
    blob = wire.encode_attributes(attributes)
    assert wire.decode_attributes(blob) == attributes
    assert wire.decode_attributes(b"") == {}


def test_encode_attributes_matches_an_independent_encoding():
    """encode_attributes writes exactly the PartialAttributeList content built here."""
    attributes = {"objectClass": ["top", "x"], "cn": ["ä"]}
    assert wire.encode_attributes(attributes) == attribute_list(attributes)


# --- requests, checked with ldap3's own ASN.1 ----------------------------------------------

def ldap3_decode(data: bytes):
    """The LDAPMessage ldap3's pyasn1 specification reads from `data` (all of it)."""
    decoded, rest = ber_decoder.decode(data, asn1Spec=LDAPMessage())
    assert rest == b""
    return decoded


@pytest.mark.parametrize("message_id", [1, 127, 128, 0x7FFF0001])
def test_search_request_is_what_ldap3_decodes(message_id):
    """search_request: base, wholeSubtree, (objectClass=*), ['*'], the control, the ID."""
    base = "ou=services,dc=example,dc=org"
    oid, critical, value = syncproto.encode_sync_request("refreshAndPersist", COOKIE)
    decoded = ldap3_decode(wire.search_request(message_id, base, "objectClass", ["*"],
                                               [(oid, critical, value)]))
    assert int(decoded["messageID"]) == message_id
    assert decoded["protocolOp"].getName() == "searchRequest"
    request = decoded["protocolOp"]["searchRequest"]
    assert str(request["baseObject"]) == base
    assert request["scope"].prettyPrint() == "wholeSubtree" and int(request["scope"]) == 2
    assert request["derefAliases"].prettyPrint() == "neverDerefAliases"
    assert (int(request["sizeLimit"]), int(request["timeLimit"]), bool(request["typesOnly"])) \
        == (0, 0, False)
    assert request["filter"].getName() == "present"
    assert str(request["filter"]["present"]) == "objectClass"
    assert [str(a) for a in request["attributes"]] == ["*"]
    controls = decoded["controls"]
    assert len(controls) == 1
    assert str(controls[0]["controlType"]) == syncproto.SYNC_REQUEST_OID
    assert bool(controls[0]["criticality"]) is True
    assert bytes(controls[0]["controlValue"]) == value
    assert syncproto.decode_sync_request(bytes(controls[0]["controlValue"])) == \
        syncproto.SyncRequest("refreshAndPersist", COOKIE, False)


def test_search_request_controls_without_value_and_not_critical():
    """A non-critical control without value, and several attributes, as ldap3 reads them."""
    decoded = ldap3_decode(wire.search_request(9, "dc=x", "cn", ["cn", "+"],
                                               [("1.2.3", False, None), ("1.2.4", True, b"")]))
    request = decoded["protocolOp"]["searchRequest"]
    assert str(request["filter"]["present"]) == "cn"
    assert [str(a) for a in request["attributes"]] == ["cn", "+"]
    first, second = decoded["controls"]
    assert (str(first["controlType"]), bool(first["criticality"]),
            first["controlValue"].isValue) == ("1.2.3", False, False)
    assert (str(second["controlType"]), bool(second["criticality"]),
            bytes(second["controlValue"])) == ("1.2.4", True, b"")


def test_search_request_without_controls_has_none():
    """No controls: the [0] element is left out altogether."""
    decoded = ldap3_decode(wire.search_request(1, "dc=x", "objectClass", ["*"], []))
    assert not decoded["controls"].isValue


def test_long_search_request_uses_long_form_lengths_ldap3_reads():
    """A base DN over 127 bytes (long-form lengths) still decodes with ldap3."""
    base = ",".join(f"ou=level{i}" for i in range(40)) + ",dc=example,dc=org"
    decoded = ldap3_decode(wire.search_request(2, base, "objectClass", ["*"], []))
    assert str(decoded["protocolOp"]["searchRequest"]["baseObject"]) == base


@pytest.mark.parametrize("message_id, abandoned", [(2, 1), (0x7FFF0002, 0x7FFF0001), (128, 127)])
def test_abandon_request_is_what_ldap3_decodes(message_id, abandoned):
    """abandon_request: its own message ID and the ID of the abandoned operation."""
    decoded = ldap3_decode(wire.abandon_request(message_id, abandoned))
    assert int(decoded["messageID"]) == message_id
    assert decoded["protocolOp"].getName() == "abandonRequest"
    assert int(decoded["protocolOp"]["abandonRequest"]) == abandoned
    assert not decoded["controls"].isValue
