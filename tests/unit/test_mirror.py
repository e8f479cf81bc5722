"""The local mirror and the cookie file (no server needed)."""

import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from provbackup.directory import wire
from provbackup.directory.dn import normalize_dn, split_normalized
from provbackup.directory.entry import Entry
from provbackup.directory.mirror import BATCH, FORMAT, CookieFile, Mirror, dn_path
from provbackup.directory.schema import STATE
from provbackup.directory.syncrepl import MAX_BACKOFF, backoff_delay

COOKIE = b"rid=001,csn=20261122030000.000000Z#000000#000#000000"


@pytest.fixture
def mirror(tmp_path):
    m = Mirror(tmp_path / "state" / "cookie")
    yield m
    m.close()


def vm(uuid="u1", name="vm-1", state=None):
    attrs = {"objectClass": ["top"], "sstVirtualMachine": [name]}
    if state is not None:
        attrs["sstProvisioningState"] = [state]
    return uuid, f"sstVirtualMachine={name},ou=virtual machines,dc=x", attrs


def test_upsert_is_keyed_by_uuid_so_a_rename_replaces(mirror):
    """The same entryUUID under a new DN replaces the old entry."""
    mirror.upsert(*vm("u1", "old"))
    mirror.upsert(*vm("u1", "new"))
    assert mirror.get("sstVirtualMachine=old,ou=virtual machines,dc=x") is None
    assert mirror.get("SSTVIRTUALMACHINE=new, ou=Virtual Machines,dc=X").first(
        "sstvirtualmachine") == "new"
    assert len(mirror) == 1


def test_changes_survive_a_reopen_only_when_committed(tmp_path):
    """Committed entries and cookie persist; uncommitted ones are lost as after a crash."""
    m = Mirror(tmp_path / "cookie")
    m.upsert(*vm("u1", "kept"))
    m.commit(COOKIE)
    m.upsert(*vm("u2", "lost"))
    m.close()
    again = Mirror(tmp_path / "cookie")
    assert again.resume_cookie() == COOKIE
    assert [e.first("sstVirtualMachine") for e in again.subtree("ou=virtual machines,dc=x")] == \
        ["kept"]
    again.close()


def test_cookie_file_is_written_after_commit_with_one_line(mirror):
    """The cookie file holds the raw cookie and a newline, mode 0600 (mkstemp's)."""
    mirror.upsert(*vm())
    mirror.commit(COOKIE)
    path = mirror.cookie_file.path
    assert path.read_bytes() == COOKIE + b"\n"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("cookie", [None, b"", b"csn=123"])
def test_unusable_cookie_is_not_stored(mirror, cookie):
    """No cookie, an empty one or one without rid= never replaces the stored cookie."""
    mirror.commit(COOKIE)
    mirror.commit(cookie)
    assert mirror.cookie_file.read() == COOKIE


@pytest.mark.parametrize("content", [b"garbage\n", b"", b"csn=1\n"])
def test_bad_cookie_file_means_full_refresh(mirror, content):
    """A cookie file without rid= gives no cookie and an emptied mirror."""
    mirror.upsert(*vm())
    mirror.commit(COOKIE)
    mirror.cookie_file.path.write_bytes(content)
    assert mirror.resume_cookie() is None
    assert len(mirror) == 0


def test_missing_mirror_with_cookie_file_means_full_refresh(tmp_path):
    """A cookie file alone (mirror lost) cannot be resumed from: start from scratch."""
    CookieFile(tmp_path / "cookie").write(COOKIE)
    m = Mirror(tmp_path / "cookie")
    assert m.resume_cookie() is None
    assert not (tmp_path / "cookie").exists()
    m.close()


def test_present_phase_drops_what_was_not_mentioned(mirror):
    """After a refreshPresent, entries neither sent nor listed present are gone."""
    for uuid in ("a", "b", "c", "d"):
        mirror.upsert(*vm(uuid, uuid))
    mirror.commit(COOKIE)
    mirror.start_refresh()
    mirror.upsert(*vm("a", "a"))
    mirror.present(["b"])
    assert mirror.end_refresh(present_phase=True) == 2
    assert sorted(e.first("sstVirtualMachine") for e in mirror.subtree("dc=x")) == ["a", "b"]


def test_delete_phase_keeps_unmentioned_entries(mirror):
    """After a refreshDelete, only explicit deletes remove entries."""
    for uuid in ("a", "b"):
        mirror.upsert(*vm(uuid, uuid))
    mirror.start_refresh()
    mirror.delete(["a"])
    assert mirror.end_refresh(present_phase=False) == 0
    assert [e.first("sstVirtualMachine") for e in mirror.subtree("dc=x")] == ["b"]


def test_pending_children_and_subtree(mirror):
    """Lookups: pending requests, direct children, subtree with parents first."""
    mirror.upsert("v", "sstVirtualMachine=vm,dc=x", {"objectClass": ["top"]})
    mirror.upsert("b", "ou=backup,sstVirtualMachine=vm,dc=x", {"ou": ["backup"]})
    mirror.upsert("l1", "ou=1,ou=backup,sstVirtualMachine=vm,dc=x",
                  {"sstProvisioningState": ["0"]})
    mirror.upsert("l2", "ou=2,ou=backup,sstVirtualMachine=vm,dc=x",
                  {"sstProvisioningState": ["20261122T000000Z"]})
    mirror.upsert("o", "sstVirtualMachine=vm2,dc=x", {"objectClass": ["top"]})
    assert [e.dn for e in mirror.pending()] == ["ou=1,ou=backup,sstVirtualMachine=vm,dc=x"]
    assert len(mirror.children("ou=backup,sstVirtualMachine=vm,dc=x")) == 2
    subtree = [e.dn for e in mirror.subtree("sstVirtualMachine=vm,dc=x")]
    assert subtree[0] == "sstVirtualMachine=vm,dc=x" and len(subtree) == 4


def test_clear_forgets_entries_and_cookie(mirror):
    """clear() empties the mirror and removes the cookie file."""
    mirror.upsert(*vm())
    mirror.commit(COOKIE)
    mirror.clear()
    assert len(mirror) == 0 and mirror.cookie_file.read() is None


@pytest.mark.parametrize("failures, delay", [(1, 30), (3, 30), (4, 60), (5, 120), (6, 240),
                                             (7, MAX_BACKOFF), (50, MAX_BACKOFF)])
def test_backoff_is_sleep_then_doubling_and_capped(failures, delay):
    """ATTEMPTS retries after SLEEP seconds, then a doubling wait up to the cap."""
    assert backoff_delay(failures, sleep=30, attempts=3) == delay


# --- the storage format: BER attribute lists, paths of normalized RDNs ---------------

def long_tlv(tag: int, content: bytes) -> bytes:
    """One BER element with the 4-byte long-form length liblber writes for SEQUENCE/SET."""
    return bytes((tag, 0x84)) + len(content).to_bytes(4, "big") + content


def attribute_blob(attributes: dict[str, list[str]], seq=wire.tlv) -> bytes:
    """A PartialAttributeList's content built here; `seq` encodes the SEQUENCEs and SETs."""
    return b"".join(
        seq(0x30, wire.tlv(0x04, name.encode()) +
            seq(0x31, b"".join(wire.tlv(0x04, v.encode()) for v in values)))
        for name, values in attributes.items())


TREE = [  # (uuid, dn as the server spells it)
    ("x", "dc=x"),
    ("a", "ou=a,dc=x"),
    ("vm1", "cn=vm1,ou=a,dc=x"),
    ("vm2", "CN=VM2, ou=a,dc=x"),
    ("backup", "ou=backup,cn=vm1,ou=a,dc=x"),
    ("deep", "cn=VM1,ou=backup,cn=vm1,ou=a,dc=x"),
    ("ab", "ou=ab,dc=x"),
    ("ab-vm1", "cn=vm1,ou=ab,dc=x"),
    ("a-space", "ou=a b,dc=x"),
    ("a-comma", r"ou=a\,b,dc=x"),
    ("a-comma-vm1", r"cn=vm1,ou=a\,b,dc=x"),
    ("a-hash", "ou=a#1,dc=x"),
    ("y-a", "ou=a,dc=y"),
    ("y-a-vm1", "cn=vm1,ou=a,dc=y"),
]
DNS = dict(TREE)


@pytest.fixture
def tree(mirror):
    """The mirror holding TREE, each entry with a `cn` attribute naming its uuid."""
    for uuid, name in TREE:
        mirror.upsert(uuid, name, {"objectClass": ["top"], "cn": [uuid]})
    return mirror


def uuids(entries):
    """The uuids (kept in the `cn` attribute) of entries, in their order."""
    return [e.first("cn") for e in entries]


RDN_SPELLINGS = st.sampled_from([
    "ou=a", "OU=A", " ou = a ", "ou=ab", "ou=a b", r"ou=a\,b", r"ou=a\2Cb", r"ou=a\2cB",
    "ou=a#1", r"cn=\#a", "cn=#a", r"cn=\ a", r"cn=a\ ", r"cn=a\62", "cn=ab", "cn=VM1",
    "sstVirtualMachine=Vm-1", "dc=x", "2.5.4.3=x", "cn=\u0130", "cn=a+cn=b", "ou=", "o u=a", ""])


@settings(database=None, deadline=None, derandomize=True, max_examples=1000)
@given(st.lists(RDN_SPELLINGS, min_size=1, max_size=5),
       st.lists(st.sampled_from([",", ", ", " ,"]), min_size=4, max_size=4))
def test_dn_path_is_the_normalized_rdns_root_first(rdns, separators):
    """dn_path(x) joins normalize_dn(x)'s RDNs root first with \\x01, or raises like it."""
    text = rdns[0] + "".join(sep + rdn for sep, rdn in zip(separators, rdns[1:]))
    try:
        normalized = normalize_dn(text)
    except ValueError:
        with pytest.raises(ValueError):
            dn_path(text)
        return
    assert dn_path(text) == "\x01".join(reversed(split_normalized(normalized)))
    assert dn_path(text) == dn_path(normalized)


@pytest.mark.parametrize("spelling, uuid", [
    ("cn=vm1,ou=a,dc=x", "vm1"), ("CN=Vm1 , OU=A,DC=X", "vm1"), ("cn=vm2,ou=a,dc=x", "vm2"),
    (r"ou=a\,b,dc=x", "a-comma"), (r"OU=A\2Cb, dc=x", "a-comma"), ("ou=a#1,dc=x", "a-hash"),
    ("ou=a b,dc=x", "a-space"), ("dc=x", "x"),
])
def test_get_finds_an_entry_by_any_spelling_of_its_dn(tree, spelling, uuid):
    """get() ignores case, spacing and escape style, and gives the DN as it was stored."""
    found = tree.get(spelling)
    assert found is not None and found.first("cn") == uuid and found.dn == DNS[uuid]


@pytest.mark.parametrize("missing", ["ou=b,dc=x", "cn=vm1,dc=x", "ou=a", "dc=z", "ou=a,dc=x,dc=y"])
def test_get_of_an_unknown_dn_is_none(tree, missing):
    """get() of a DN nobody stored is None, even when its RDNs exist elsewhere."""
    assert tree.get(missing) is None


def test_children_are_only_the_direct_children(tree):
    """children() lists the entries one level below, not grandchildren, not look-alike siblings."""
    assert sorted(uuids(tree.children("ou=a,dc=x"))) == ["vm1", "vm2"]
    assert sorted(uuids(tree.children("OU=A, DC=X"))) == ["vm1", "vm2"]
    assert uuids(tree.children("cn=vm1,ou=a,dc=x")) == ["backup"]
    assert sorted(uuids(tree.children("dc=x"))) == ["a", "a-comma", "a-hash", "a-space", "ab"]
    assert uuids(tree.children(r"ou=a\,b,dc=x")) == ["a-comma-vm1"]
    assert tree.children("cn=VM1,ou=backup,cn=vm1,ou=a,dc=x") == []


def test_subtree_has_parents_first_and_no_sibling_sharing_a_prefix(tree):
    """subtree(ou=a,dc=x) is ou=a and all below it, never ou=ab, ou=a b, ou=a\\,b or ou=a#1."""
    subtree = tree.subtree("ou=a,dc=x")
    assert sorted(uuids(subtree)) == ["a", "backup", "deep", "vm1", "vm2"]
    assert uuids(subtree)[0] == "a"
    position = {e.key: i for i, e in enumerate(subtree)}
    for e in subtree:
        if e.parent in position:
            assert position[e.parent] < position[e.key], f"{e.dn} listed before its parent"


def test_subtree_of_the_root_and_of_a_leaf(tree):
    """subtree(dc=x) holds everything under dc=x and nothing of dc=y; a leaf's is itself."""
    everything = uuids(tree.subtree("DC=X"))
    assert sorted(everything) == sorted(u for u, name in TREE if name.endswith("dc=x"))
    assert everything[0] == "x"
    assert uuids(tree.subtree("cn=vm1,ou=backup,cn=vm1,ou=a,dc=x")) == ["deep"]
    assert uuids(tree.subtree("ou=ab,dc=x")) == ["ab", "ab-vm1"]
    assert tree.subtree("ou=zz,dc=x") == []


def test_named_finds_an_rdn_at_any_depth_below_the_base_only(tree):
    """named(cn=vm1, ou=a,dc=x) finds cn=vm1 at every depth below ou=a, case-insensitively."""
    assert sorted(uuids(tree.named("cn=vm1", "ou=a,dc=x"))) == ["deep", "vm1"]
    assert sorted(uuids(tree.named("CN=VM1", "OU=A , dc=X"))) == ["deep", "vm1"]
    assert sorted(uuids(tree.named("cn=vm1", "dc=x"))) == ["a-comma-vm1", "ab-vm1", "deep", "vm1"]
    assert uuids(tree.named("cn=vm1", "ou=backup,cn=vm1,ou=a,dc=x")) == ["deep"]
    assert uuids(tree.named("cn=vm2", "ou=a,dc=x")) == ["vm2"]
    assert tree.named("cn=vm1", "cn=VM1,ou=backup,cn=vm1,ou=a,dc=x") == []  # not the base itself
    assert tree.named("cn=vm", "dc=x") == [] and tree.named("cn=m1", "dc=x") == []
    assert uuids(tree.named(r"ou=a\2cb", "dc=x")) == ["a-comma"]


def test_store_keeps_the_attribute_list_as_given(mirror):
    """store() with a blob from encode_attributes gives the same attributes back, by any lookup."""
    attributes = {"objectClass": ("top", "sstVirtualizationVirtualMachine"),
                  "sstVirtualMachine": ("vm-1",), "description": ("Grüezi", ""), "member": ()}
    name = "sstVirtualMachine=vm-1,ou=virtual machines,dc=x"
    mirror.store("u1", name, wire.encode_attributes(attributes))
    entry = mirror.get(name)
    assert entry == Entry(name, attributes)
    assert mirror.subtree("ou=virtual machines,dc=x") == [entry]
    assert mirror.children("ou=virtual machines,dc=x") == [entry]
    assert mirror.named("sstVirtualMachine=VM-1", "dc=x") == [entry]


def test_store_of_a_long_form_blob(mirror):
    """A blob with liblber's 0x84 lengths is stored as is and decoded on lookup."""
    mirror.store("u1", "cn=a,dc=x", attribute_blob({"cn": ["a"], "sn": ["b", "c"]}, long_tlv))
    assert mirror.get("cn=a,dc=x").attributes == {"cn": ("a",), "sn": ("b", "c")}


# --- pending(): sstProvisioningState's first value is "0" -------------------------------

STATE_TYPE_BYTES = wire.tlv(0x04, STATE.encode())
ENCODED_ZERO_STATE = (STATE_TYPE_BYTES + b"\x31\x03" + wire.tlv(0x04, b"0")).decode()

PENDING_BLOBS = {
    "state 0": (wire.encode_attributes({STATE: ["0"]}), True),
    "state 0 after other attributes": (wire.encode_attributes(
        {"objectClass": ["top", "sstProvisioning"], "ou": ["1"], STATE: ["0"]}), True),
    "upper-case type": (wire.encode_attributes({"SSTPROVISIONINGSTATE": ["0"]}), True),
    "lower-case type": (wire.encode_attributes({STATE.lower(): ["0"]}), True),
    "no state": (wire.encode_attributes({"ou": ["0"], "cn": ["0"]}), False),
    "state empty": (wire.encode_attributes({STATE: []}), False),
    "state empty, last": (wire.encode_attributes({"cn": ["x"], STATE: []}), False),
    "state empty string": (wire.encode_attributes({STATE: [""]}), False),
    "state a date": (wire.encode_attributes({STATE: ["20261122T000000Z"]}), False),
    "state 00": (wire.encode_attributes({STATE: ["00"]}), False),
    "state 0 not first": (wire.encode_attributes({STATE: ["1", "0"]}), False),
    "state 0 first of two": (wire.encode_attributes({STATE: ["0", "1"]}), True),
    "state 0 in another attribute": (wire.encode_attributes(
        {"sstProvisioningStateX": ["0"], STATE: ["1"]}), False),
    "type name in a description": (wire.encode_attributes(
        {"description": [STATE, f"{STATE}\x310"], STATE: ["1"]}), False),
    "encoded state 0 in a description": (wire.encode_attributes(
        {"description": [ENCODED_ZERO_STATE], STATE: ["1"]}), False),
    "encoded state 0 in a description, no state": (wire.encode_attributes(
        {"description": [ENCODED_ZERO_STATE]}), False),
    "long-form SET, 0": (attribute_blob({STATE: ["0"]}, long_tlv), True),
    "long-form SET, 1": (attribute_blob({STATE: ["1"]}, long_tlv), False),
    "long-form SET, 0 not first": (attribute_blob({"cn": ["a"], STATE: ["1", "0"]}, long_tlv),
                                   False),
    "long-form SET, empty": (attribute_blob({STATE: []}, long_tlv), False),
    "long-form SET only for the state": (wire.tlv(0x30, STATE_TYPE_BYTES + long_tlv(
        0x31, wire.tlv(0x04, b"0"))), True),
    "long-form value length": (wire.tlv(0x30, STATE_TYPE_BYTES + wire.tlv(
        0x31, b"\x04\x81\x010")), True),
    "long-form type length": (wire.tlv(0x30, b"\x04\x81\x14" + STATE.encode() + wire.tlv(
        0x31, wire.tlv(0x04, b"0"))), True),
}


@pytest.mark.parametrize("blob, expected", PENDING_BLOBS.values(), ids=PENDING_BLOBS.keys())
def test_pending_is_first_state_value_zero(mirror, blob, expected):
    """pending() lists an entry exactly when Entry.first(sstProvisioningState) == "0"."""
    entry = Entry("ou=1,dc=x", wire.decode_attributes(blob))
    assert (entry.first(STATE) == "0") is expected  # the definition, checked on the case itself
    mirror.store("u1", "ou=1,dc=x", blob)
    mirror.store("other", "ou=2,dc=x", wire.encode_attributes({STATE: ["1"]}))
    assert [e.dn for e in mirror.pending()] == (["ou=1,dc=x"] if expected else [])


# Case-insensitively distinct names (as in a real entry), the state's in several spellings.
_NAMES = st.sampled_from([STATE, STATE.upper(), STATE.lower(), "sstProvisioningStateX",
                          "description", "cn", "ou", "objectClass"])
_STATE_VALUES = st.sampled_from(["0", "00", "1", "", " 0", "0 ", "20261122T000000Z", STATE,
                                 ENCODED_ZERO_STATE, "\x010", "x" * 200])


@st.composite
def attribute_dicts(draw):
    """A random attribute dict: names distinct ignoring case, values from _STATE_VALUES or text."""
    names = draw(st.lists(_NAMES, max_size=5, unique_by=str.lower))
    values = st.lists(st.one_of(_STATE_VALUES, st.text(max_size=10)), max_size=4)
    return {name: draw(values) for name in names}


@settings(database=None, deadline=None, derandomize=True, max_examples=300,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attribute_dicts(), st.booleans())
def test_pending_matches_the_definition_for_random_entries(mirror, attributes, long_form):
    """For random attribute lists (short or 0x84 lengths), pending() follows Entry.first."""
    blob = attribute_blob(attributes, long_tlv if long_form else wire.tlv)
    expected = Entry.from_dict("ou=1,dc=x", attributes).first(STATE) == "0"
    mirror.store("u1", "ou=1,dc=x", blob)
    assert [e.dn for e in mirror.pending()] == (["ou=1,dc=x"] if expected else [])
    assert mirror.delete(["u1"]) == 1


# --- batches of the writer thread ----------------------------------------------------------

def leaf(i: int) -> tuple[str, str, bytes]:
    """uuid, DN and blob of backup leaf number i (every third one pending)."""
    return (f"u{i}", f"ou={i},ou=backup,sstVirtualMachine=vm,dc=x",
            wire.encode_attributes({"ou": [str(i)], STATE: ["0" if i % 3 == 0 else "1"]}))


@pytest.mark.parametrize("count", [BATCH - 1, BATCH, BATCH + 1, 2 * BATCH + 300])
def test_every_stored_entry_is_seen_at_once(mirror, count):
    """Right after many stores (beyond BATCH), len, get, subtree and pending see every entry."""
    for i in range(count):
        mirror.store(*leaf(i))
    assert len(mirror) == count
    assert mirror.get(leaf(0)[1]).first("ou") == "0"
    assert mirror.get(leaf(count - 1)[1]).first("ou") == str(count - 1)
    assert len(mirror.children("ou=backup,sstVirtualMachine=vm,dc=x")) == count
    assert len(mirror.pending()) == len(range(0, count, 3))


def test_delete_right_after_store_removes_entries_of_every_batch(mirror):
    """delete() sees entries still with the writer thread and entries not yet handed over."""
    count = 2 * BATCH + 100
    for i in range(count):
        mirror.store(*leaf(i))
    gone = ["u0", f"u{BATCH - 1}", f"u{BATCH}", f"u{2 * BATCH - 1}", f"u{count - 1}", "unknown"]
    assert mirror.delete(gone) == 5
    assert len(mirror) == count - 5
    assert mirror.get(leaf(count - 1)[1]) is None and mirror.get(leaf(BATCH)[1]) is None
    assert mirror.get(leaf(1)[1]) is not None


def test_delete_of_an_entry_in_the_batch_being_written(mirror):
    """Exactly BATCH stores hand a batch to the writer; deleting from it at once removes it."""
    for i in range(BATCH):
        mirror.store(*leaf(i))
    assert mirror.delete([f"u{BATCH - 1}", "u7"]) == 2
    assert len(mirror) == BATCH - 2
    assert mirror.get(leaf(7)[1]) is None


def test_a_store_after_a_delete_in_the_same_batch_wins(mirror):
    """store, delete, store again of one uuid in one batch leaves the entry there."""
    for i in range(BATCH + 10):
        mirror.store(*leaf(i))
    assert mirror.delete(["u3"]) == 1
    mirror.store(*leaf(3))
    for i in range(BATCH + 10, 2 * BATCH + 10):
        mirror.store(*leaf(i))
    assert mirror.get(leaf(3)[1]) is not None and len(mirror) == 2 * BATCH + 10


def test_many_stores_survive_commit_and_reopen(tmp_path):
    """Beyond BATCH stores, a commit makes every one durable."""
    m = Mirror(tmp_path / "cookie")
    for i in range(2 * BATCH + 7):
        m.store(*leaf(i))
    m.commit(COOKIE)
    m.close()
    again = Mirror(tmp_path / "cookie")
    assert again.resume_cookie() == COOKIE and len(again) == 2 * BATCH + 7
    again.close()


# --- formats ---------------------------------------------------------------------------

def mirror_file(cookie: Path) -> Path:
    """Where Mirror keeps the database for `cookie` (COOKIE_FILE.mirror)."""
    return cookie.with_name(cookie.name + ".mirror")


@pytest.mark.parametrize("meta", [None, [("cookie", COOKIE)],
                                  [("cookie", COOKIE), ("format", b"1")]])
def test_a_mirror_of_an_older_format_is_dropped(tmp_path, caplog, meta):
    """An SQLite file of another layout is dropped: the mirror opens empty and refreshes fully."""
    cookie = tmp_path / "cookie"
    CookieFile(cookie).write(COOKIE)
    db = sqlite3.connect(mirror_file(cookie))
    db.execute("CREATE TABLE entries (uuid TEXT PRIMARY KEY, dn TEXT, ndn TEXT, attributes TEXT)")
    db.execute("INSERT INTO entries VALUES ('u1', 'cn=a,dc=x', 'cn=a,dc=x', '{\"cn\": [\"a\"]}')")
    if meta is not None:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB)")
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta)
    db.commit()
    db.close()
    m = Mirror(cookie)
    try:
        assert "mirror of another version" in caplog.text
        assert len(m) == 0 and m.get("cn=a,dc=x") is None
        assert m.resume_cookie() is None
        assert not cookie.exists()
        m.upsert("u2", "cn=b,dc=x", {"cn": ["b"]})  # the new layout works
        m.commit(COOKIE)
        assert m.get("cn=b,dc=x").first("cn") == "b"
    finally:
        m.close()


def test_a_committed_cookie_survives_reopen_and_clear_keeps_the_format(tmp_path, caplog):
    """close/reopen keeps entries and cookie; clear() drops them but not the format row."""
    cookie = tmp_path / "cookie"
    m = Mirror(cookie)
    m.upsert("u1", "cn=a,dc=x", {"cn": ["a"]})
    m.commit(COOKIE)
    m.close()
    m = Mirror(cookie)
    assert m.resume_cookie() == COOKIE and len(m) == 1
    m.clear()
    m.close()
    m = Mirror(cookie)
    assert m.resume_cookie() is None and len(m) == 0  # clear() removed the cookie
    m.upsert("u2", "cn=b,dc=x", {"cn": ["b"]})
    m.commit(COOKIE)
    m.close()
    m = Mirror(cookie)  # not dropped as a mirror of another format: the entry is still here
    try:
        assert m.resume_cookie() == COOKIE
        assert [e.first("cn") for e in m.subtree("dc=x")] == ["b"]
        assert "another version" not in caplog.text
    finally:
        m.close()


def test_a_new_mirror_records_its_format(tmp_path):
    """A fresh mirror file holds the current FORMAT in its meta table, also after clear()."""
    cookie = tmp_path / "cookie"
    m = Mirror(cookie)
    m.clear()
    m.close()
    db = sqlite3.connect(mirror_file(cookie))
    try:
        assert db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0] == FORMAT
    finally:
        db.close()
