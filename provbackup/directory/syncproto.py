"""The wire values of LDAP Content Synchronization (RFC 4533), encoded and decoded.

ldap3 has no syncrepl support: it sends a control given as (oid, criticality,
DER bytes) and hands back the sync controls and the Sync Info intermediate
response as raw bytes. This module turns those bytes into frozen values and
back. It does no I/O. Every malformed input raises `SyncProtocolError`; no
pyasn1 exception escapes. What slapd actually sends is in docs/syncrepl.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyasn1.codec.ber import decoder as _ber_decoder
from pyasn1.codec.der import encoder as _der_encoder
from pyasn1.error import PyAsn1Error, SubstrateUnderrunError
from pyasn1.type import namedtype, tag, univ

SYNC_REQUEST_OID = "1.3.6.1.4.1.4203.1.9.1.1"
SYNC_STATE_OID = "1.3.6.1.4.1.4203.1.9.1.2"
SYNC_DONE_OID = "1.3.6.1.4.1.4203.1.9.1.3"
SYNC_INFO_OID = "1.3.6.1.4.1.4203.1.9.1.4"

MODES = {"refreshOnly": 1, "refreshAndPersist": 3}
STATES = {0: "present", 1: "add", 2: "modify", 3: "delete"}
# LDAP result code slapd answers a sync search with when the cookie is stale.
SYNC_REFRESH_REQUIRED = 4096


class SyncProtocolError(ValueError):
    """A sync control or Sync Info value that does not follow RFC 4533."""


# --- ASN.1 (RFC 4533 section 2; the LDAP module uses IMPLICIT TAGS) ---------

def _ctx(number: int, constructed: bool) -> tag.Tag:
    form = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return tag.Tag(tag.tagClassContext, form, number)


class _SyncRequestValue(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("mode", univ.Enumerated()),
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("reloadHint", univ.Boolean(False)))


class _SyncStateValue(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("state", univ.Enumerated()),
        namedtype.NamedType("entryUUID", univ.OctetString()),
        namedtype.OptionalNamedType("cookie", univ.OctetString()))


class _SyncDoneValue(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("refreshDeletes", univ.Boolean(False)))


class _RefreshPhase(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("refreshDone", univ.Boolean(True)))


class _SyncIdSet(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("refreshDeletes", univ.Boolean(False)),
        namedtype.NamedType(
            "syncUUIDs", univ.SetOf(componentType=univ.OctetString())))


class _SyncInfoValue(univ.Choice):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("newcookie", univ.OctetString().subtype(
            implicitTag=_ctx(0, False))),
        namedtype.NamedType("refreshDelete", _RefreshPhase().subtype(
            implicitTag=_ctx(1, True))),
        namedtype.NamedType("refreshPresent", _RefreshPhase().subtype(
            implicitTag=_ctx(2, True))),
        namedtype.NamedType("syncIdSet", _SyncIdSet().subtype(
            implicitTag=_ctx(3, True))))


# --- the values the rest of provbackup sees ---------------------------------

@dataclass(frozen=True)
class SyncRequest:
    """A decoded Sync Request control value."""

    mode: str
    cookie: bytes | None
    reload_hint: bool


@dataclass(frozen=True)
class SyncState:
    """The Sync State control of one search entry: what happened to which entry."""

    state: str
    entry_uuid: bytes
    cookie: bytes | None

    @property
    def uuid(self) -> str:
        """The entryUUID in its canonical text form, as slapd shows it."""
        return uuid_text(self.entry_uuid)


@dataclass(frozen=True)
class SyncDone:
    """The Sync Done control of the SearchResultDone that ends a sync search."""

    cookie: bytes | None
    refresh_deletes: bool


@dataclass(frozen=True)
class SyncInfo:
    """A Sync Info intermediate response; fields the kind lacks keep defaults."""

    kind: str
    cookie: bytes | None = None
    refresh_done: bool = False
    refresh_deletes: bool = False
    uuids: tuple[bytes, ...] = ()


def uuid_text(raw: bytes) -> str:
    """Return 16 raw entryUUID bytes as text like 450262d4-7a6b-1041-...."""
    if len(raw) != 16:
        raise SyncProtocolError(f"entryUUID must be 16 bytes, got {len(raw)}")
    text = bytes(raw).hex()  # str(uuid.UUID(...)) costs 3x more, once per entry
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def cookie_text(raw: bytes | None) -> str:
    """Return a cookie printable for logs (slapd's are ASCII); None gives ''."""
    return "" if raw is None else bytes(raw).decode("ascii", "backslashreplace")


def encode_sync_request(mode: str = "refreshAndPersist",
                        cookie: bytes | None = None,
                        reload_hint: bool = False) -> tuple[str, bool, bytes]:
    """Return the Sync Request control as the (oid, critical, value) ldap3 takes."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, not {mode!r}")
    if cookie is not None and not isinstance(cookie, (bytes, bytearray)):
        raise TypeError(f"cookie must be bytes or None, not {type(cookie).__name__}")
    value = _SyncRequestValue()
    value["mode"] = MODES[mode]
    if cookie is not None:
        value["cookie"] = bytes(cookie)
    value["reloadHint"] = bool(reload_hint)
    # Critical: a server without syncrepl must refuse, not run a plain search.
    return SYNC_REQUEST_OID, True, _der_encoder.encode(value)


def decode_sync_request(value: bytes) -> SyncRequest:
    """Decode a Sync Request control value (used by tests and fakes)."""
    obj = _decode(value, _SyncRequestValue(), "Sync Request", 0x30)
    number = int(obj["mode"])
    names = {v: k for k, v in MODES.items()}
    if number not in names:
        raise SyncProtocolError(f"Sync Request: unknown mode value {number}")
    return SyncRequest(names[number], _opt_bytes(obj, "cookie"),
                       bool(obj["reloadHint"]))


def decode_sync_state(value: bytes) -> SyncState:
    """Decode the value of a Sync State control (SYNC_STATE_OID)."""
    fast = _sync_state_fast(value)
    if fast is not None:
        return fast
    obj = _decode(value, _SyncStateValue(), "Sync State", 0x30)
    number = int(obj["state"])
    if number not in STATES:
        raise SyncProtocolError(f"Sync State: unknown state value {number}")
    raw = bytes(obj["entryUUID"])
    if len(raw) != 16:
        raise SyncProtocolError(
            f"Sync State: entryUUID must be 16 bytes, got {len(raw)}")
    return SyncState(STATES[number], raw, _opt_bytes(obj, "cookie"))


def _sync_state_fast(value) -> SyncState | None:
    """The one shape slapd sends, read without pyasn1 (one per entry of a refresh).

    SEQUENCE { ENUMERATED state, OCTET STRING (16) uuid, [OCTET STRING cookie] }, all
    lengths in short form. Anything else (None) goes to the full decoder, which also
    explains what is wrong with a malformed value.
    """
    if not isinstance(value, bytes) or not 23 <= len(value) < 130 \
            or value[0] != 0x30 or value[1] != len(value) - 2 or value[2:4] != b"\x0a\x01" \
            or value[5:7] != b"\x04\x10" or value[4] not in STATES:
        return None
    rest = len(value) - 23
    if rest == 0:
        cookie = None
    elif value[23] == 0x04 and rest >= 2 and value[24] == rest - 2:
        cookie = value[25:]
    else:
        return None
    return SyncState(STATES[value[4]], value[7:23], cookie)


def decode_sync_done(value: bytes) -> SyncDone:
    """Decode the value of a Sync Done control (SYNC_DONE_OID)."""
    obj = _decode(value, _SyncDoneValue(), "Sync Done", 0x30)
    return SyncDone(_opt_bytes(obj, "cookie"), bool(obj["refreshDeletes"]))


def decode_sync_info(value: bytes) -> SyncInfo:
    """Decode the responseValue of a Sync Info intermediate response."""
    obj = _decode(value, _SyncInfoValue(), "Sync Info", 0x80, 0xA1, 0xA2, 0xA3)
    kind = obj.getName()
    inner = obj.getComponent()
    if kind == "newcookie":
        return SyncInfo(kind, cookie=bytes(inner))
    cookie = _opt_bytes(inner, "cookie")
    if kind in ("refreshDelete", "refreshPresent"):
        return SyncInfo(kind, cookie=cookie, refresh_done=bool(inner["refreshDone"]))
    uuids = tuple(bytes(u) for u in inner["syncUUIDs"])
    for raw in uuids:
        if len(raw) != 16:
            raise SyncProtocolError(
                f"Sync Info syncIdSet: syncUUID must be 16 bytes, got {len(raw)}")
    return SyncInfo(kind, cookie=cookie,
                    refresh_deletes=bool(inner["refreshDeletes"]), uuids=uuids)


# --- decoding helpers --------------------------------------------------------

def _opt_bytes(obj: univ.Sequence, name: str) -> bytes | None:
    component = obj.getComponentByName(name)
    return bytes(component) if component.isValue else None


def _decode(value: bytes, spec, what: str, *tags: int):
    """BER-decode one whole value against spec; explain any failure precisely."""
    if value is None:
        raise SyncProtocolError(f"{what}: the value is missing")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise SyncProtocolError(
            f"{what}: expected bytes, got {type(value).__name__}")
    data = bytes(value)
    _check_outer(data, what, tags)
    try:
        obj, rest = _ber_decoder.decode(data, asn1Spec=spec)
    except PyAsn1Error as exc:
        raise SyncProtocolError(f"{what}: {_explain(exc, spec)}") from None
    if rest:
        raise SyncProtocolError(f"{what}: {len(rest)} bytes after the value")
    return obj


def _explain(exc: PyAsn1Error, spec) -> str:
    """Say in a few words what pyasn1 found wrong (its messages dump reprs)."""
    text = str(exc)
    if isinstance(exc, SubstrateUnderrunError) or "Short substrate" in text \
            or "instead of expected" in text:
        return "truncated: an inner element is longer than the bytes left"
    if "uninitialized components" in text:
        return f"a required element is missing (required: {', '.join(_required(spec))})"
    if "Excessive components" in text:
        return "an unexpected extra element at the end"
    found = re.search(r"TagSet object, tags (\d+):(\d+):(\d+)>", text)
    if found and "not in asn1Spec" in text:
        cls, form, number = (int(g) for g in found.groups())
        if number > 30:  # high-tag-number form: no single identifier byte
            return f"wrong tag (class {cls >> 6}, number {number}) inside the value"
        return f"wrong tag 0x{cls | form | number:02x} inside the value"
    # Anything else: pyasn1's first words, without the object dumps.
    return "malformed BER: " + re.sub(r"\s*<.*", "", text.splitlines()[0] if text else "")


def _required(spec) -> list[str]:
    """Names of the elements the ASN.1 does not allow to be left out."""
    if isinstance(spec, univ.Choice):
        return [f"{alt.name}.{name}" for alt in spec.componentType.namedTypes
                for name in _required(alt.asn1Object)]
    if isinstance(spec, univ.Sequence):
        return [nt.name for nt in spec.componentType.namedTypes
                if not (nt.isOptional or nt.isDefaulted)]
    return []


def _check_outer(data: bytes, what: str, tags: tuple[int, ...]) -> None:
    """Check the outer tag and length ourselves: pyasn1's messages are vague."""
    if not data:
        raise SyncProtocolError(f"{what}: the value is empty")
    if data[0] not in tags:
        wanted = " or ".join(f"0x{t:02x}" for t in tags)
        raise SyncProtocolError(
            f"{what}: wrong tag 0x{data[0]:02x} at offset 0, expected {wanted}")
    if len(data) < 2:
        raise SyncProtocolError(f"{what}: truncated after the tag")
    first = data[1]
    if first == 0x80:
        return  # indefinite length: legal BER, left to pyasn1
    if first < 0x80:
        length, start = first, 2
    else:
        count = first & 0x7F
        if len(data) < 2 + count:
            raise SyncProtocolError(f"{what}: truncated inside the length")
        length, start = int.from_bytes(data[2:2 + count], "big"), 2 + count
    if len(data) - start < length:
        raise SyncProtocolError(
            f"{what}: truncated: the value says {length} content bytes, "
            f"only {len(data) - start} follow")
