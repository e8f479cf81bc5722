"""Following the real slapd: syncrepl into the mirror, gate, lock, queue (issue 3)."""

import datetime
import queue
import threading
import time
from pathlib import Path

import ldap3
import pytest

from provbackup.directory.connection import connect
from provbackup.directory.mirror import Mirror
from provbackup.directory.status import StatusWriter
from provbackup.directory.syncrepl import SyncreplConsumer
from provbackup.workflow.intake import Intake
from tests.rig.ldap_fixtures import rig_ldap_settings

pytestmark = pytest.mark.integration

VM1 = "53d39b08-4323-4f98-b8b9-68f94e7fd712"  # on node-01
VM2 = "0a261bb2-9da0-45ad-902c-25cf4cc1ccef"  # on node-02


class Stack:
    """One node's directory side: mirror, consumer thread, intake, lock writer, queue."""

    def __init__(self, directory, state_dir: Path, node="node-01", today=None):
        self.settings = rig_ldap_settings(directory.slapd, state_dir / "cookie")
        self.mirror = Mirror(self.settings.cookie_file)
        self.queue: queue.Queue = queue.Queue()
        self.writer = StatusWriter(lambda: connect(self.settings))
        self.day = today or datetime.date(2026, 11, 22)
        self.intake = Intake(node, self.mirror, self.writer, self.queue.put, today=lambda: self.day)
        self.consumer = SyncreplConsumer(self.settings, self.mirror, self.intake,
                                         reconnect_sleep=0.2, reconnect_attempts=3)
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)

    def start(self, refreshes=1):
        self.thread.start()
        wait_for(lambda: self.consumer.refreshes >= refreshes, "the first refresh")
        return self

    def stop(self):
        self.consumer.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the consumer did not stop"
        self.writer.close()
        self.mirror.close()


def wait_for(condition, what, timeout=15.0):
    """Poll until `condition()` is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def leaf_dn(directory, vm, date="20261122T030000Z"):
    return f"ou={date},ou=backup,sstVirtualMachine={vm},ou=virtual machines,{directory.service_dn}"


def add_leaf(directory, vm, mode="initialized", state="20261122T020000Z", date="0",
             ou="20261122T030000Z"):
    """Create a backup leaf as the control instance does."""
    dn = leaf_dn(directory, vm, ou)
    directory.conn.add(dn, ["top", "organizationalUnit", "sstProvisioning"], {
        "ou": ou, "sstProvisioningMode": mode, "sstProvisioningState": state,
        "sstProvisioningExecutionDate": date})
    return dn


def request(directory, dn, verb, date=None):
    """Write a request as the control instance does: the verb and state 0."""
    changes = {"sstProvisioningMode": [(ldap3.MODIFY_REPLACE, [verb])],
               "sstProvisioningState": [(ldap3.MODIFY_REPLACE, ["0"])]}
    if date is not None:
        changes["sstProvisioningExecutionDate"] = [(ldap3.MODIFY_REPLACE, [date])]
    directory.conn.modify(dn, changes)


def read(directory, dn, *attributes):
    directory.conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=list(attributes) or ["*"])
    return directory.conn.entries[0].entry_attributes_as_dict


def server_dns(directory):
    directory.conn.search(directory.service_dn, "(objectClass=*)", ldap3.SUBTREE, attributes=[])
    return {e.entry_dn.lower() for e in directory.conn.entries}


def mirror_dns(stack):
    return {e.dn.lower() for e in stack.mirror.subtree(stack.settings.service_subtree)}


@pytest.fixture
def stack(directory, tmp_path):
    stacks = []

    def make(**kwargs):
        s = Stack(directory, kwargs.pop("state_dir", tmp_path), **kwargs)
        stacks.append(s)
        return s
    yield make
    for s in stacks:
        if s.thread.is_alive():
            s.stop()


def test_refresh_mirrors_the_whole_subtree_and_writes_the_cookie(directory, stack):
    """The first refresh brings every entry of the subtree and stores a cookie."""
    node = stack().start()
    assert mirror_dns(node) == server_dns(directory)
    cookie = node.settings.cookie_file.read_bytes()
    assert cookie.startswith(b"rid=001,csn=") and cookie.endswith(b"\n")


def test_change_by_another_connection_reaches_the_queue_on_the_open_search(directory, stack):
    """A request written by the control instance is locked and queued without a new search."""
    dn = add_leaf(directory, VM1)
    node = stack().start()
    request(directory, dn, "snapshot")
    queued = node.queue.get(timeout=10)
    assert (queued.verb.request, queued.leaf.vm_name) == ("snapshot", VM1)
    assert read(directory, dn)["sstProvisioningMode"] == ["snapshotting"]
    assert node.consumer.refreshes == 1  # still the same search


def test_own_modify_does_not_start_a_second_run(directory, stack):
    """The lock and the answer come back through syncrepl and queue nothing more."""
    dn = add_leaf(directory, VM1)
    node = stack().start()
    request(directory, dn, "snapshot")
    node.queue.get(timeout=10)
    node.writer.answer(dn, 0, {"snapshot": 1.0}, completion="snapshotted")
    wait_for(lambda: (node.mirror.get(dn).first("sstProvisioningMode") == "snapshotted"),
             "the answer to reach the mirror")
    time.sleep(0.3)
    assert node.queue.empty()


def test_leaf_of_another_node_gets_no_write(directory, stack):
    """A request for a VM on node-02 is seen by node-01 and left exactly as it was."""
    dn = add_leaf(directory, VM2)
    node = stack().start()
    request(directory, dn, "snapshot")
    before = read(directory, dn, "entryCSN", "sstProvisioningMode")
    wait_for(lambda: node.mirror.get(dn).first("sstProvisioningState") == "0",
             "the request to reach node-01's mirror")
    time.sleep(0.3)
    assert read(directory, dn, "entryCSN", "sstProvisioningMode") == before
    assert node.queue.empty()


def test_unknown_verb_is_answered_with_18(directory, stack):
    """An unknown request on this node gets return value 18 and a state timestamp."""
    dn = add_leaf(directory, VM1)
    node = stack().start()
    request(directory, dn, "frobnicate")
    wait_for(lambda: read(directory, dn).get("sstProvisioningReturnValue") == [18], "the 18")
    attrs = read(directory, dn)
    assert attrs["sstProvisioningMode"] == ["frobnicate"]
    assert attrs["sstProvisioningState"] != ["0"]
    assert node.queue.empty()


def test_future_date_fires_on_its_day_without_another_change(directory, stack):
    """A request dated tomorrow waits; when the (injected) day comes, tick() takes it."""
    dn = add_leaf(directory, VM1)
    node = stack().start()
    request(directory, dn, "snapshot", date="20261123")
    wait_for(lambda: dn in node.intake.deferred, "the request to be deferred")
    node.intake.tick()
    assert node.queue.empty()
    node.day = datetime.date(2026, 11, 23)
    node.intake.tick()
    assert node.queue.get(timeout=5).verb.request == "snapshot"


def test_pending_request_found_at_start_is_run(directory, stack):
    """A request written while no daemon ran is taken after the first refresh."""
    dn = add_leaf(directory, VM1, mode="snapshot", state="0")
    node = stack().start()
    assert node.queue.get(timeout=10).leaf.dn.lower() == dn.lower()


def test_restart_receives_only_what_changed(directory, stack, tmp_path):
    """Stopped, then changes and deletes: the restart refreshes only those, from the cookie."""
    first = stack().start()
    first.stop()
    dhcp = [e.dn for e in first.mirror.__class__(first.settings.cookie_file).subtree(
        f"ou=dhcp,ou=networks,{directory.service_dn}") if e.dn.lower().startswith("cn=0a26")]
    directory.conn.delete(dhcp[0])
    directory.conn.modify(f"sstVirtualMachine={VM1},ou=virtual machines,{directory.service_dn}",
                          {"description": [(ldap3.MODIFY_REPLACE, ["changed while stopped"])]})
    added = add_leaf(directory, VM1, ou="20261122T040000Z")
    second = stack()
    counted = count_upserts(second)
    second.start()
    assert mirror_dns(second) == server_dns(directory)
    assert sorted(counted) == sorted([added.lower(), f"sstVirtualMachine={VM1},ou=virtual "
                                      f"machines,{directory.service_dn}".lower()])
    vm = second.mirror.get(f"sstVirtualMachine={VM1},ou=virtual machines,{directory.service_dn}")
    assert vm.first("description") == "changed while stopped"


def count_upserts(stack):
    """Record the DNs the mirror receives as whole entries (adds and modifies)."""
    seen = []
    original = stack.mirror.store

    def store(uuid, dn, blob):
        seen.append(dn.lower())
        return original(uuid, dn, blob)
    stack.mirror.store = store
    return seen


def test_stale_cookie_refreshes_fully_and_drops_what_was_deleted(directory, stack):
    """With a cookie older than anything, a full refresh also removes entries gone meanwhile."""
    first = stack().start()
    first.stop()
    mirror = Mirror(first.settings.cookie_file)
    mirror.upsert("00000000-0000-0000-0000-000000000001",
                  f"cn=ghost,ou=virtual machines,{directory.service_dn}", {"cn": ["ghost"]})
    mirror.commit(b"rid=001,csn=20000101000000.000000Z#000000#000#000000")
    mirror.close()
    second = stack().start()
    assert mirror_dns(second) == server_dns(directory)
    assert second.mirror.get(f"cn=ghost,ou=virtual machines,{directory.service_dn}") is None


def test_slapd_restart_mid_stream_loses_no_request(directory, stack):
    """After slapd restarts, the consumer resumes from its cookie and takes the new request."""
    dn = add_leaf(directory, VM1)
    node = stack().start()
    directory.slapd.restart()
    conn = directory.slapd.connection()
    conn.modify(dn, {"sstProvisioningMode": [(ldap3.MODIFY_REPLACE, ["merge"])],
                     "sstProvisioningState": [(ldap3.MODIFY_REPLACE, ["0"])]})
    conn.unbind()
    assert node.queue.get(timeout=20).verb.request == "merge"
    assert node.consumer.refreshes >= 2


def test_two_consumers_racing_for_one_leaf_one_wins(directory, stack, tmp_path):
    """Two daemons that both think the VM is theirs: the request is queued exactly once."""
    dn = add_leaf(directory, VM1)
    one = stack(state_dir=tmp_path / "one").start()
    two = stack(state_dir=tmp_path / "two").start()
    request(directory, dn, "snapshot")
    wait_for(lambda: read(directory, dn)["sstProvisioningMode"] == ["snapshotting"], "the lock")
    time.sleep(0.5)
    assert one.queue.qsize() + two.queue.qsize() == 1


def test_refresh_required_drops_the_mirror_and_refreshes_fully(tmp_path):
    """With syncprov-reloadhint, a stale cookie gets 4096: the mirror is rebuilt from scratch."""
    import types

    from tests.rig.ldap_fixtures import PROJECT_SCHEMA_FILES, SAMPLE_LDIF, SERVICE_DN, SUFFIX
    from tests.rig.slapd import Slapd
    server = Slapd(tmp_path / "slapd", PROJECT_SCHEMA_FILES, SUFFIX, reload_hint=True)
    try:
        server.add_ldif(SAMPLE_LDIF)
        view = types.SimpleNamespace(slapd=server, service_dn=SERVICE_DN, conn=server.connection())
        first = Stack(view, tmp_path).start()
        first.stop()
        mirror = Mirror(first.settings.cookie_file)
        ghost = f"cn=ghost,ou=virtual machines,{SERVICE_DN}"
        mirror.upsert("00000000-0000-0000-0000-000000000001", ghost, {"cn": ["ghost"]})
        mirror.commit(b"rid=001,csn=20000101000000.000000Z#000000#000#000000")
        mirror.close()
        second = Stack(view, tmp_path).start()
        try:
            assert second.mirror.get(ghost) is None
            assert mirror_dns(second) == server_dns(view)
            assert second.settings.cookie_file.read_bytes().startswith(b"rid=001,csn=2026")
        finally:
            second.stop()
            view.conn.unbind()
    finally:
        server.stop()
