"""The backup steps on the real guest: snapshot, merge, retain, delete (issue 4)."""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path, PurePosixPath

import pytest

from provbackup.directory.entry import Entry
from provbackup.directory.machine import Disk, Machine
from provbackup.directory.resolve import BackupPolicy
from provbackup.errors import StepError
from provbackup.workflow.context import StepContext
from provbackup.workflow.journal import JournalStore
from provbackup.workflow.layout import PLACEHOLDER_STATE, Layout
from provbackup.workflow.merge import merge
from provbackup.workflow.retain import delete, retain
from provbackup.workflow.snapshot import snapshot
from tests.rig.guest import read_records

pytestmark = pytest.mark.integration

DATE = "20261122T030000Z"


def make_context(guest, tmp_path, hypervisor, *, disks=None, date=DATE, name=None, **policy):
    """A step context for `guest` as the directory would describe it, roots in tmp_path."""
    disks = disks if disks is not None else [
        Disk(target=f"vd{chr(97 + i)}", kind="file", source=str(p), dn=f"sstDisk=vd{chr(97 + i)}")
        for i, p in enumerate(guest.disks)]
    name = name or guest.name
    for root in ("backup", "retain"):
        (tmp_path / root).mkdir(exist_ok=True)
    values = dict(source_dn="test", level="cloud",
                  root_directory=PurePosixPath(tmp_path / "backup"),
                  retain_directory=PurePosixPath(tmp_path / "retain"), ram_disk=None,
                  iterations=1, exclude_from_backup=False, restore_without_state=False,
                  force_start=False, bandwidth_merge=0, image_format="qcow2",
                  image_owner="root", image_group="root", image_mode=0o640,
                  directory_owner="root", directory_group="root", directory_mode=0o750)
    values.update(policy)
    vm = Entry.from_dict(f"sstVirtualMachine={name},ou=virtual machines,dc=x",
                         {"sstVirtualMachine": name, "sstNode": "node-01"})
    machine = Machine(name=name, dn=vm.dn, node="node-01", pool=None, disks=tuple(disks),
                      dhcp=(), subtree=(vm,))
    return StepContext(machine=machine, date=date, policy=BackupPolicy(**values),
                       hypervisor=hypervisor, journals=JournalStore(tmp_path / "state"),
                       ldif=f"dn: {vm.dn}\nsstVirtualMachine: {name}\n")


def assert_contiguous(records, first=1):
    seqs = [r.seq for r in records]
    assert seqs == list(range(first, first + len(seqs))), seqs[:5] + ["..."] + seqs[-5:]
    return seqs


def assert_running_on_own_images(ctx, guest):
    """The VM runs on the images at its original paths, no overlay, and keeps writing."""
    domain = ctx.hypervisor.domain(ctx.vm)
    assert domain.state.name == "RUNNING"
    assert {str(d.source) for d in domain.disks} == {str(p) for p in guest.disks}
    assert all(d.backing is None for d in domain.disks)
    seq = guest.last_seq()
    guest.wait_for_records(seq + 3, timeout=30)


def test_full_cycle_on_a_writing_guest(make_guest, tmp_path, hypervisor):
    """snapshot, merge, retain: complete backup of exactly the records up to the snapshot."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor)
    layout = ctx.layout()
    guest.wait_for_records(20)
    before = guest.last_seq()
    times = snapshot(ctx)
    after = guest.last_seq()
    assert 0 < times["downtime"] < times["snapshot"]
    guest.wait_for_records(after + 20)  # the guest writes on, into the overlay
    assert set(merge(ctx)) == {"merge"}
    assert_running_on_own_images(ctx, guest)
    assert set(retain(ctx)) == {"retain"}

    disk = guest.disks[0]
    names = sorted(p.name for p in layout.backup.iterdir())
    assert names == sorted([f"{disk.name}.{DATE}", f"{guest.name}.state.{DATE}",
                            f"{guest.name}.xml.{DATE}", f"{guest.name}.ldif.{DATE}",
                            f"{guest.name}.sha256.{DATE}"])
    seqs = assert_contiguous(read_records(layout.backup_disk(str(disk))))
    assert before <= seqs[-1] <= after + 1
    live = assert_contiguous(read_records(disk, force_share=True))
    assert live[-1] > seqs[-1] + 10  # the original image has moved on; the backup has not
    assert not layout.working.exists()
    assert ctx.journals.load(ctx.vm) is None
    check = subprocess.run(["sha256sum", "-c", layout.manifest.name], cwd=layout.backup,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    state = layout.small_file("state", layout.backup)
    assert state.stat().st_size > 1024 * 1024 and state.read_bytes()[:16] != PLACEHOLDER_STATE[:16]
    assert oct(state.stat().st_mode & 0o777) == "0o640"
    assert oct(layout.backup.stat().st_mode & 0o777) == "0o750"
    assert b"<domain" in layout.small_file("xml", layout.backup).read_bytes()


def test_shut_off_vm_gets_the_placeholder_state(make_guest, tmp_path, hypervisor):
    """A shut-off VM is backed up with the placeholder state file and stays defined."""
    guest = make_guest()
    guest.wait_for_records(10)
    guest.domain.destroy()
    records = read_records(guest.disks[0])
    ctx = make_context(guest, tmp_path, hypervisor)
    layout = ctx.layout()
    assert snapshot(ctx)["downtime"] == 0
    merge(ctx)
    retain(ctx)
    state = layout.small_file("state", layout.backup).read_bytes()
    assert state == b"Machine is not runnung, no state file"
    assert read_records(layout.backup_disk(str(guest.disks[0]))) == records
    domain = hypervisor.domain(ctx.vm)
    assert domain.state.name == "SHUT_OFF"
    assert [str(d.source) for d in domain.disks] == [str(guest.disks[0])]
    printed = len(guest.console_records())
    guest.domain.create()  # and it still boots and writes, on its own image
    deadline = time.monotonic() + 60
    while len(guest.console_records()) < printed + 3:
        assert time.monotonic() < deadline, "the restarted guest did not write"
        time.sleep(0.1)
    assert [str(d.source) for d in hypervisor.domain(ctx.vm).disks] == [str(guest.disks[0])]


def test_two_disks(make_guest, tmp_path, hypervisor):
    """Both disks of a VM are copied at the same point in time."""
    guest = make_guest(disks=2)
    ctx = make_context(guest, tmp_path, hypervisor)
    layout = ctx.layout()
    guest.wait_for_records(10)
    snapshot(ctx)
    merge(ctx)
    retain(ctx)
    assert_running_on_own_images(ctx, guest)
    first = [r.seq for r in read_records(layout.backup_disk(str(guest.disks[0]))) if r.disk == 0]
    second = [r.seq for r in read_records(layout.backup_disk(str(guest.disks[1]))) if r.disk == 1]
    assert first and first == list(range(1, len(first) + 1))
    assert abs(first[-1] - second[-1]) <= 1  # one moment for both (the writer alternates)


def test_steps_run_again_answer_the_same(make_guest, tmp_path, hypervisor):
    """Each step repeated (a request seen twice) succeeds without doing the work again."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor)
    layout = ctx.layout()
    first = snapshot(ctx)
    assert snapshot(ctx) == first
    merge(ctx)
    merge(ctx)
    retain(ctx)
    assert retain(ctx) == {"retain": 0.0}
    assert_running_on_own_images(ctx, guest)
    assert layout.manifest.exists()


def test_delete_removes_the_whole_iteration(make_guest, tmp_path, hypervisor):
    """delete removes every file of the iteration, images included, and its directory."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor)
    layout = ctx.layout()
    snapshot(ctx)
    merge(ctx)
    retain(ctx)
    other = make_context(guest, tmp_path, hypervisor, date="20261121T030000Z")
    other_layout = other.layout()
    other_layout.backup.mkdir(parents=True)
    (other_layout.backup / "keep").write_text("x")
    assert set(delete(ctx)) == {"delete"}
    assert not layout.backup.exists()
    assert (other_layout.backup / "keep").exists()


def failure(step, ctx):
    with pytest.raises(StepError) as caught:
        step(ctx)
    return caught.value.code


def test_missing_domain_is_23(make_guest, tmp_path, hypervisor):
    """A VM that libvirt does not know gives 23."""
    guest = make_guest(start=False)
    ctx = make_context(guest, tmp_path, hypervisor, name="no-such-domain")
    assert failure(snapshot, ctx) == 23


def test_disk_mismatch_is_33_and_the_vm_runs_on(make_guest, tmp_path, hypervisor):
    """Directory and libvirt disagreeing about the disks gives 33; nothing changes."""
    guest = make_guest()
    wrong = [Disk("vda", "file", str(tmp_path / "elsewhere.qcow2"), "sstDisk=vda")]
    ctx = make_context(guest, tmp_path, hypervisor, disks=wrong)
    assert failure(snapshot, ctx) == 33
    assert_running_on_own_images(make_context(guest, tmp_path, hypervisor), guest)


def test_bad_disk_path_is_39(make_guest, tmp_path, hypervisor):
    """A disk path with '..' cannot give a backup directory: 39."""
    guest = make_guest()
    bad = [Disk("vda", "file", f"{tmp_path}/../{tmp_path.name}/{guest.disks[0].name}", "x")]
    assert failure(snapshot, make_context(guest, tmp_path, hypervisor, disks=bad)) == 39


def test_missing_backup_root_is_26(make_guest, tmp_path, hypervisor):
    """A backup root that does not exist gives 26, before anything is touched."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor,
                       root_directory=PurePosixPath(tmp_path / "absent"))
    assert failure(snapshot, ctx) == 26
    assert_running_on_own_images(ctx, guest)


@pytest.fixture
def small_mount(tmp_path):
    """A 1 MiB tmpfs (no room for any backup); unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True,
                   timeout=30)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def test_no_space_is_47_and_leaves_nothing(make_guest, tmp_path, hypervisor, small_mount):
    """Too little space on the backup filesystem gives 47 and no partial file."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor, root_directory=PurePosixPath(small_mount))
    assert failure(snapshot, ctx) == 47
    assert list(small_mount.iterdir()) == []
    assert_running_on_own_images(ctx, guest)


def test_read_only_backup_root_is_6(make_guest, tmp_path, hypervisor, small_mount):
    """A backup root that cannot be written gives 6."""
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True, timeout=30)
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor, root_directory=PurePosixPath(small_mount))
    assert failure(snapshot, ctx) == 6
    assert_running_on_own_images(ctx, guest)


def test_merge_without_snapshot_is_18(make_guest, tmp_path, hypervisor):
    """merge or retain requested out of order gives 18 and changes nothing."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor)
    assert failure(merge, ctx) == 18
    assert failure(retain, ctx) == 18
    assert_running_on_own_images(ctx, guest)


def test_merge_after_a_lost_journal_continues_from_libvirt(make_guest, tmp_path, hypervisor):
    """With the journal gone after the snapshot, merge still finds and merges the overlays."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor)
    snapshot(ctx)
    ctx.journals.remove(ctx.vm)
    merge(ctx)
    assert_running_on_own_images(ctx, guest)
    assert Layout.of(ctx.vm, DATE, str(guest.disks[0]), ctx.policy).pending_disk(
        str(guest.disks[0])).exists()


@pytest.fixture
def ram_disk():
    """A directory on /dev/shm standing for sstBackupRamDiskLocation.

    Not a tmpfs mounted by the test: the rig's libvirtd lives in its own mount
    namespace and would not see a mount made after it started.
    """
    path = Path(tempfile.mkdtemp(prefix="pb-ram-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_memory_state_goes_through_the_ram_disk(make_guest, tmp_path, hypervisor, ram_disk):
    """With a RAM disk the state is written there, retained, then freed from it."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor, ram_disk=PurePosixPath(ram_disk))
    layout = ctx.layout()
    snapshot(ctx)
    assert layout.memory_file.parent == ram_disk and layout.memory_file.stat().st_size > 0
    assert not layout.small_file("state").exists()
    merge(ctx)
    retain(ctx)
    assert layout.small_file("state", layout.backup).stat().st_size > 1024 * 1024
    assert list(ram_disk.iterdir()) == []
    check = subprocess.run(["sha256sum", "-c", layout.manifest.name], cwd=layout.backup,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def test_ram_disk_missing_is_3_and_too_small_is_4(make_guest, tmp_path, hypervisor, small_mount):
    """A RAM disk that is not there gives 3; one without room for the memory gives 4."""
    guest = make_guest()
    absent = make_context(guest, tmp_path, hypervisor, ram_disk=PurePosixPath(tmp_path / "no"))
    assert failure(snapshot, absent) == 3
    small = make_context(guest, tmp_path, hypervisor, ram_disk=PurePosixPath(small_mount))
    assert failure(snapshot, small) == 4
    assert_running_on_own_images(small, guest)
