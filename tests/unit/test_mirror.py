"""The local mirror and the cookie file (no server needed)."""

import os

import pytest

from provbackup.directory.mirror import CookieFile, Mirror
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
