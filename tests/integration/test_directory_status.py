"""The lock and the answer on a real backup leaf (compare-and-set, one modify)."""

import datetime
import threading

import ldap3
import pytest

from provbackup.directory.connection import connect
from provbackup.directory.status import StatusWriter, merge_execution_times
from tests.rig.ldap_fixtures import rig_ldap_settings

pytestmark = pytest.mark.integration

VM = "53d39b08-4323-4f98-b8b9-68f94e7fd712"
FIXED_NOW = datetime.datetime(2026, 11, 22, 3, 15, 2, tzinfo=datetime.timezone.utc)


@pytest.fixture
def leaf(directory):
    """A fresh backup leaf requesting a snapshot (mode snapshot, state 0)."""
    dn = f"ou=20261122T030000Z,ou=backup,sstVirtualMachine={VM},ou=virtual machines," \
         f"{directory.service_dn}"
    directory.conn.add(dn, ["top", "organizationalUnit", "sstProvisioning"], {
        "ou": "20261122T030000Z", "sstProvisioningMode": "snapshot",
        "sstProvisioningState": "0", "sstProvisioningExecutionDate": "0",
        "sstProvisioningExecutionTime": ["snapshot: 1.000", "downtime: 0.100"]})
    return dn


@pytest.fixture
def writer(directory, tmp_path):
    """A StatusWriter on its own connection, with a fixed clock."""
    settings = rig_ldap_settings(directory.slapd, tmp_path / "cookie")
    status = StatusWriter(lambda: connect(settings), clock=lambda: FIXED_NOW)
    yield status
    status.close()


def read(directory, dn):
    """The leaf's provisioning attributes as a dict of lists."""
    directory.conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["*"])
    return directory.conn.entries[0].entry_attributes_as_dict


def test_lock_replaces_the_request_with_the_progress_word(directory, leaf, writer):
    """A successful lock leaves the progress word and state 0."""
    assert writer.lock(leaf, "snapshot", "snapshotting")
    attrs = read(directory, leaf)
    assert attrs["sstProvisioningMode"] == ["snapshotting"]
    assert attrs["sstProvisioningState"] == ["0"]


def test_lock_fails_when_the_request_changed(directory, leaf, writer):
    """If the mode is no longer the request we saw, the lock fails and changes nothing."""
    directory.conn.modify(leaf, {"sstProvisioningMode": [(ldap3.MODIFY_REPLACE, ["merge"])]})
    assert not writer.lock(leaf, "snapshot", "snapshotting")
    assert read(directory, leaf)["sstProvisioningMode"] == ["merge"]


def test_lock_fails_when_the_request_was_consumed(directory, leaf, writer):
    """A request whose state is no longer 0 cannot be locked."""
    directory.conn.modify(leaf, {"sstProvisioningState": [(ldap3.MODIFY_REPLACE,
                                                           ["20261122T030000Z"])]})
    assert not writer.lock(leaf, "snapshot", "snapshotting")
    assert read(directory, leaf)["sstProvisioningMode"] == ["snapshot"]


def test_lock_of_a_deleted_leaf_fails(directory, leaf, writer):
    """A leaf deleted before the lock is simply not taken."""
    directory.conn.delete(leaf)
    assert not writer.lock(leaf, "snapshot", "snapshotting")


def test_two_daemons_racing_exactly_one_wins(directory, leaf, tmp_path):
    """Many writers on separate connections try the same lock at once: one succeeds."""
    settings = rig_ldap_settings(directory.slapd, tmp_path / "cookie")
    writers = [StatusWriter(lambda: connect(settings)) for _ in range(8)]
    for w in writers:
        w._run(lambda conn: None, retry=False)  # connect before the race starts
    barrier = threading.Barrier(len(writers))
    results = []

    def race(w):
        barrier.wait()
        results.append(w.lock(leaf, "snapshot", "snapshotting"))

    threads = [threading.Thread(target=race, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for w in writers:
        w.close()
    assert sorted(results) == [False] * 7 + [True]


def test_success_answer_is_complete(directory, leaf, writer):
    """On success: completion word, 0, this step's times replaced, others kept, UTC stamp."""
    writer.lock(leaf, "snapshot", "snapshotting")
    writer.answer(leaf, 0, {"snapshot": 2.5, "downtime": 0.0421}, completion="snapshotted")
    attrs = read(directory, leaf)
    assert attrs["sstProvisioningMode"] == ["snapshotted"]
    assert attrs["sstProvisioningReturnValue"] == [0]
    assert attrs["sstProvisioningState"] == ["20261122T031502Z"]
    assert sorted(attrs["sstProvisioningExecutionTime"]) == ["downtime: 0.042", "snapshot: 2.500"]


def test_answer_keeps_other_steps_times(directory, leaf, writer):
    """A merge answer adds its time and keeps the snapshot's."""
    writer.answer(leaf, 0, {"merge": 7.25}, completion="merged")
    assert sorted(read(directory, leaf)["sstProvisioningExecutionTime"]) == \
        ["downtime: 0.100", "merge: 7.250", "snapshot: 1.000"]


def test_failure_answer_keeps_the_progress_word(directory, leaf, writer):
    """On failure the mode stays at the progress word; return value and stamp are written."""
    writer.lock(leaf, "snapshot", "snapshotting")
    writer.answer(leaf, 23, {"snapshot": 0.1})
    attrs = read(directory, leaf)
    assert attrs["sstProvisioningMode"] == ["snapshotting"]
    assert attrs["sstProvisioningReturnValue"] == [23]
    assert attrs["sstProvisioningState"] == ["20261122T031502Z"]


def test_reject_answers_18_once(directory, leaf, writer):
    """An unknown request is consumed with its return value; a second reject finds nothing."""
    directory.conn.modify(leaf, {"sstProvisioningMode": [(ldap3.MODIFY_REPLACE, ["bogus"])]})
    assert writer.reject(leaf, "bogus", 18)
    attrs = read(directory, leaf)
    assert attrs["sstProvisioningMode"] == ["bogus"]
    assert attrs["sstProvisioningReturnValue"] == [18]
    assert attrs["sstProvisioningState"] == ["20261122T031502Z"]
    assert not writer.reject(leaf, "bogus", 18)


def test_answer_survives_a_slapd_restart(directory, leaf, writer):
    """A connection broken by a slapd restart is reopened once for the answer."""
    writer.lock(leaf, "snapshot", "snapshotting")
    directory.slapd.restart()
    writer.answer(leaf, 0, {"snapshot": 1.0}, completion="snapshotted")
    conn = directory.slapd.connection()
    conn.search(leaf, "(objectClass=*)", ldap3.BASE, attributes=["sstProvisioningMode"])
    assert conn.entries[0].sstProvisioningMode.value == "snapshotted"
    conn.unbind()


@pytest.mark.parametrize("current, new, expected", [
    ((), {"snapshot": 1}, ["snapshot: 1.000"]),
    (("snapshot: 5.108", "downtime: 0.042"), {"merge": 2}, ["snapshot: 5.108", "downtime: 0.042",
                                                           "merge: 2.000"]),
    (("snapshot: 5.108", "downtime: 0.042"), {"snapshot": 4, "downtime": 0.5},
     ["snapshot: 4.000", "downtime: 0.500"]),
    (("odd value",), {"retain": 1}, ["odd value", "retain: 1.000"]),
])
def test_merge_execution_times(current, new, expected):
    """Only values named like this step's are replaced."""
    assert merge_execution_times(current, new) == expected
