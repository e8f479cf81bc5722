"""The LDAP messages of a sync search, encoded and decoded by hand (RFC 4511 section 4).

A node follows every entry of a directory of thousands of VMs; ldap3's generic
decoder, which builds a dictionary of converted values for each entry, made the
first refresh forty times slower than `ldapsearch`. This module reads only what the
consumer needs: the message frame, the DN, the controls, and the attribute list as
the raw bytes the server sent, which the mirror stores as they are and decodes only
when an entry is looked at. Only definite lengths, as RFC 4511 section 5.1 requires.
It does no I/O; every malformed input raises `WireError`.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple

# Application tags of the protocol operations read here (constructed, class 01).
SEARCH_RESULT_ENTRY = 0x64
SEARCH_RESULT_DONE = 0x65
SEARCH_RESULT_REFERENCE = 0x73
EXTENDED_RESPONSE = 0x78
INTERMEDIATE_RESPONSE = 0x79
# RFC 4511 section 4.4.1: an unsolicited notification has message ID 0.
UNSOLICITED = 0


class WireError(ValueError):
    """Bytes that are not the LDAP message they should be."""


# Named tuples, not dataclasses: one of each is built per entry of a refresh, and a
# frozen dataclass costs three times as much to build.


class Message(NamedTuple):
    """One LDAP message: its ID, the operation's tag, the decoded operation, controls."""

    message_id: int
    tag: int
    operation: object
    controls: Mapping[str, bytes | None]


class SearchEntry(NamedTuple):
    """A SearchResultEntry; `attributes` is the PartialAttributeList's content, undecoded."""

    dn: str
    attributes: bytes


class Result(NamedTuple):
    """An LDAPResult (SearchResultDone, ExtendedResponse)."""

    code: int
    matched_dn: str
    message: str
    name: str | None = None  # ExtendedResponse only: responseName


class Intermediate(NamedTuple):
    """An IntermediateResponse."""

    name: str | None
    value: bytes | None


# --- BER primitives ------------------------------------------------------------

def element(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at `pos`, which must end by `end`."""
    if pos + 2 > end:
        raise WireError(f"truncated: an element at offset {pos} has no room for its header")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise WireError(f"tag 0x{tag:02x} at offset {pos}: multi-byte tags are not LDAP")
    first = data[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    elif first == 0x80:
        raise WireError(f"indefinite length at offset {pos} (RFC 4511 allows only definite)")
    else:
        count = first & 0x7F
        if count > 4:
            raise WireError(f"a {count}-byte length at offset {pos}")
        start = pos + 2 + count
        if start > end:
            raise WireError(f"truncated inside the length at offset {pos}")
        length = int.from_bytes(data[pos + 2:start], "big")
    stop = start + length
    if stop > end:
        raise WireError(f"truncated: the element at offset {pos} says {length} content "
                        f"bytes, {end - start} follow")
    return tag, start, stop


def frame_size(data: bytes | bytearray, pos: int) -> int | None:
    """Bytes of the LDAPMessage starting at `pos`, or None while its header is incomplete."""
    end = len(data)
    if pos + 2 > end:
        return None
    if data[pos] != 0x30:
        raise WireError(f"an LDAP message starts with 0x{data[pos]:02x}, not 0x30 (SEQUENCE)")
    first = data[pos + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4:
        raise WireError(f"an LDAP message with a length field of {count} bytes")
    if pos + 2 + count > end:
        return None
    return 2 + count + int.from_bytes(data[pos + 2:pos + 2 + count], "big")


def _expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    found, start, stop = element(data, pos, end)
    if found != tag:
        raise WireError(f"{what}: tag 0x{found:02x} at offset {pos}, expected 0x{tag:02x}")
    return start, stop


def _text(data: bytes, start: int, stop: int) -> str:
    return data[start:stop].decode("utf-8", "surrogateescape")


def _integer(data: bytes, start: int, stop: int) -> int:
    if start == stop:
        raise WireError("an INTEGER without content")
    return int.from_bytes(data[start:stop], "big", signed=True)


def _header(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes((tag, length))
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw


def tlv(tag: int, content: bytes) -> bytes:
    """One BER element."""
    return _header(tag, len(content)) + content


# --- messages --------------------------------------------------------------------

def parse(data: bytes) -> Message:
    """Decode one whole LDAPMessage (as framed by `frame_size`)."""
    start, stop = _expect(data, 0, len(data), 0x30, "LDAPMessage")
    if stop != len(data):
        raise WireError(f"{len(data) - stop} bytes after the LDAPMessage")
    id_start, pos = _expect(data, start, stop, 0x02, "messageID")
    message_id = _integer(data, id_start, pos)
    tag, op_start, op_stop = element(data, pos, stop)
    controls: dict[str, bytes | None] = {}
    if op_stop < stop:
        found, c_start, c_stop = element(data, op_stop, stop)
        if found == 0xA0:
            controls = _controls(data, c_start, c_stop)
    if tag == SEARCH_RESULT_ENTRY:
        operation: object = _search_entry(data, op_start, op_stop)
    elif tag in (SEARCH_RESULT_DONE, EXTENDED_RESPONSE):
        operation = _result(data, op_start, op_stop)
    elif tag == INTERMEDIATE_RESPONSE:
        operation = _intermediate(data, op_start, op_stop)
    else:
        operation = None  # e.g. a SearchResultReference: nothing the consumer uses
    return Message(message_id, tag, operation, controls)


def _search_entry(data: bytes, start: int, stop: int) -> SearchEntry:
    dn_start, pos = _expect(data, start, stop, 0x04, "SearchResultEntry objectName")
    a_start, a_stop = _expect(data, pos, stop, 0x30, "SearchResultEntry attributes")
    return SearchEntry(_text(data, dn_start, pos), data[a_start:a_stop])


def _result(data: bytes, start: int, stop: int) -> Result:
    code_start, code_stop = _expect(data, start, stop, 0x0A, "resultCode")
    m_start, m_stop = _expect(data, code_stop, stop, 0x04, "matchedDN")
    d_start, d_stop = _expect(data, m_stop, stop, 0x04, "diagnosticMessage")
    name, pos = None, d_stop
    while pos < stop:  # referral [3], responseName [10], responseValue [11]
        tag, e_start, pos = element(data, pos, stop)
        if tag == 0x8A:
            name = _text(data, e_start, pos)
    return Result(_integer(data, code_start, code_stop), _text(data, m_start, m_stop),
                  _text(data, d_start, d_stop), name)


def _intermediate(data: bytes, start: int, stop: int) -> Intermediate:
    name = value = None
    pos = start
    while pos < stop:
        tag, e_start, pos = element(data, pos, stop)
        if tag == 0x80:
            name = _text(data, e_start, pos)
        elif tag == 0x81:
            value = data[e_start:pos]
    return Intermediate(name, value)


def _controls(data: bytes, start: int, stop: int) -> dict[str, bytes | None]:
    controls: dict[str, bytes | None] = {}
    pos = start
    while pos < stop:
        c_start, pos = _expect(data, pos, stop, 0x30, "Control")
        oid_start, inner = _expect(data, c_start, pos, 0x04, "controlType")
        oid = _text(data, oid_start, inner)
        value = None
        while inner < pos:  # criticality BOOLEAN DEFAULT FALSE, controlValue OPTIONAL
            tag, v_start, inner = element(data, inner, pos)
            if tag == 0x04:
                value = data[v_start:inner]
        controls[oid] = value
    return controls


# --- attribute lists -------------------------------------------------------------

def decode_attributes(blob: bytes) -> dict[str, tuple[str, ...]]:
    """A PartialAttributeList's content as attribute name -> values (server's spelling)."""
    attributes: dict[str, tuple[str, ...]] = {}
    pos, end = 0, len(blob)
    while pos < end:
        a_start, pos = _expect(blob, pos, end, 0x30, "PartialAttribute")
        t_start, t_stop = _expect(blob, a_start, pos, 0x04, "attribute type")
        v_start, v_stop = _expect(blob, t_stop, pos, 0x31, "attribute values")
        values = []
        inner = v_start
        while inner < v_stop:
            s, inner = _expect(blob, inner, v_stop, 0x04, "attribute value")
            values.append(_text(blob, s, inner))
        attributes[_text(blob, t_start, t_stop)] = tuple(values)
    return attributes


def encode_attributes(attributes: Mapping[str, Iterable[str]]) -> bytes:
    """The inverse of decode_attributes (for entries not received from a server)."""
    parts = []
    for name, values in attributes.items():
        encoded = b"".join(tlv(0x04, v.encode("utf-8", "surrogateescape")) for v in values)
        parts.append(tlv(0x30, tlv(0x04, name.encode("utf-8")) + tlv(0x31, encoded)))
    return b"".join(parts)


# --- the search request -----------------------------------------------------------

SUBTREE = 2
NEVER_DEREF_ALIASES = 0


def search_request(message_id: int, base: str, present: str, attributes: Iterable[str],
                   controls: Iterable[tuple[str, bool, bytes | None]]) -> bytes:
    """A SearchRequest for everything below `base` with filter (`present`=*)."""
    request = b"".join((
        tlv(0x04, base.encode("utf-8")),
        tlv(0x0A, bytes((SUBTREE,))),
        tlv(0x0A, bytes((NEVER_DEREF_ALIASES,))),
        tlv(0x02, b"\x00"),  # sizeLimit: none
        tlv(0x02, b"\x00"),  # timeLimit: none
        tlv(0x01, b"\x00"),  # typesOnly: FALSE
        tlv(0x87, present.encode("ascii")),  # filter: present [7]
        tlv(0x30, b"".join(tlv(0x04, a.encode("ascii")) for a in attributes)),
    ))
    encoded_controls = b"".join(
        tlv(0x30, tlv(0x04, oid.encode("ascii")) + (tlv(0x01, b"\xff") if critical else b"")
            + (tlv(0x04, value) if value is not None else b""))
        for oid, critical, value in controls)
    return tlv(0x30, tlv(0x02, _int_bytes(message_id)) + tlv(0x63, request)
               + (tlv(0xA0, encoded_controls) if encoded_controls else b""))


def abandon_request(message_id: int, abandoned: int) -> bytes:
    """An AbandonRequest for the operation `abandoned`."""
    return tlv(0x30, tlv(0x02, _int_bytes(message_id)) + tlv(0x50, _int_bytes(abandoned)))


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 8) // 8 or 1, "big", signed=True)
