"""A backup driven purely through LDAP writes, as the control instance does (issue 4)."""

import queue
import threading

import pytest

from provbackup.hypervisor.libvirt import LibvirtHypervisor
from provbackup.workflow.job import StepRunner
from provbackup.workflow.journal import JournalStore
from provbackup.workflow.steps import STEPS
from tests.integration.test_directory_follow import Stack, add_leaf, read, request, wait_for
from tests.rig.guest import read_records
from tests.rig.vm_entries import vm_ldif

pytestmark = pytest.mark.integration

DATE = "20261122T030000Z"


@pytest.fixture
def node(directory, tmp_path, libvirtd):
    """node-01: the directory side plus a worker thread running the queued steps."""
    stack = Stack(directory, tmp_path / "state").start()
    hypervisor = LibvirtHypervisor(libvirtd.uri)
    runner = StepRunner(STEPS, stack.mirror, hypervisor, JournalStore(tmp_path / "state"),
                        stack.writer, directory.service_dn, stack.settings.cloud_wide_dn)
    stop = threading.Event()

    def work():
        while not stop.is_set():
            try:
                runner.run(stack.queue.get(timeout=0.2))
            except queue.Empty:
                continue
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    yield stack
    stop.set()
    worker.join(30)
    stack.stop()
    hypervisor.close()


def run_step(directory, dn, verb, completion):
    """Request one step like the broker and wait for its answer."""
    request(directory, dn, verb)
    wait_for(lambda: read(directory, dn)["sstProvisioningState"] != ["0"],
             f"the answer to {verb}", timeout=120)
    attrs = read(directory, dn)
    assert (attrs["sstProvisioningMode"], attrs["sstProvisioningReturnValue"]) == \
        ([completion], [0]), attrs
    return attrs


def test_snapshot_merge_retain_through_ldap(directory, node, make_guest, tmp_path):
    """The broker's sequence on a leaf backs up the guest; each answer is complete."""
    guest = make_guest()
    for root in ("backup", "retain"):
        (tmp_path / root).mkdir()
    directory.slapd.add_ldif(vm_ldif(guest.name, guest.disks, backup_root=tmp_path / "backup",
                                     retain_root=tmp_path / "retain"))
    dn = add_leaf(directory, guest.name, ou=DATE)
    guest.wait_for_records(10)
    times = run_step(directory, dn, "snapshot", "snapshotted")["sstProvisioningExecutionTime"]
    assert {t.split(":")[0] for t in times} == {"snapshot", "downtime"}
    run_step(directory, dn, "merge", "merged")
    attrs = run_step(directory, dn, "retain", "retained")
    assert {t.split(":")[0] for t in attrs["sstProvisioningExecutionTime"]} == \
        {"snapshot", "downtime", "merge", "retain"}
    backups = list((tmp_path / "backup").rglob(f"{guest.disks[0].name}.{DATE}"))
    assert len(backups) == 1
    seqs = [r.seq for r in read_records(backups[0])]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 10
    assert (backups[0].parent / f"{guest.name}.ldif.{DATE}").read_text().startswith(
        f"dn: sstVirtualMachine={guest.name},")


def test_failure_is_answered_with_its_number(directory, node, make_guest, tmp_path):
    """A step that fails (no backup root: 26) is answered with 26, mode left at the lock word."""
    guest = make_guest()
    (tmp_path / "retain").mkdir()
    directory.slapd.add_ldif(vm_ldif(guest.name, guest.disks, backup_root=tmp_path / "nowhere",
                                     retain_root=tmp_path / "retain"))
    dn = add_leaf(directory, guest.name, ou=DATE)
    request(directory, dn, "snapshot")
    wait_for(lambda: read(directory, dn)["sstProvisioningState"] != ["0"], "the answer")
    attrs = read(directory, dn)
    assert attrs["sstProvisioningMode"] == ["snapshotting"]
    assert attrs["sstProvisioningReturnValue"] == [26]

