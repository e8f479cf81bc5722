"""The restore steps on the real guest: the UI/broker sequence after a backup (issue 5)."""

import time

import pytest

from provbackup.errors import StepError
from provbackup.workflow.merge import merge
from provbackup.workflow.restore import restore, unretain_large_files, unretain_small_files
from provbackup.workflow.retain import retain
from provbackup.workflow.snapshot import snapshot
from tests.integration.test_backup_steps import assert_contiguous, make_context
from tests.rig.guest import read_console, read_records

pytestmark = pytest.mark.integration


def backed_up(make_guest, tmp_path, hypervisor, running=True, **policy):
    """A guest, backed up completely, which then wrote on; returns (guest, ctx, backup records)."""
    guest = make_guest()
    guest.wait_for_records(10)
    if not running:
        guest.domain.destroy()
    ctx = make_context(guest, tmp_path, hypervisor, **policy)
    snapshot(ctx)
    merge(ctx)
    retain(ctx)
    records = read_records(ctx.layout().backup_disk(str(guest.disks[0])))
    if running:
        guest.wait_for_records(guest.last_seq() + 60)  # 3 s of writes the restore must undo
    return guest, ctx, records


def broker_sequence(guest, ctx):
    """unretainSmallFiles, unretainLargeFiles, destroy and undefine, restore."""
    unretain_small_files(ctx)
    assert ctx.layout().small_file("ldif").read_text().startswith("dn: ")
    unretain_large_files(ctx)
    if guest.domain.isActive():
        guest.domain.destroy()
    guest.domain.undefineFlags(0)
    printed = len(read_console(guest.console_log))
    return restore(ctx), printed


def new_console_seqs(guest, printed, count, timeout=60):
    """The seqs the guest prints after the restore (the console file is appended to)."""
    deadline = time.monotonic() + timeout
    while True:
        seqs = [seq for seq, _ in read_console(guest.console_log)[printed:]]
        if len(seqs) >= count:
            return seqs
        assert time.monotonic() < deadline, f"only {seqs} printed after the restore"
        time.sleep(0.1)


def test_restore_resumes_at_the_backup_moment(make_guest, tmp_path, hypervisor):
    """The restored VM runs from its memory state: the disk holds the backup, writing goes on."""
    guest, ctx, backup = backed_up(make_guest, tmp_path, hypervisor)
    last = backup[-1].seq
    wrote_until = guest.last_seq()
    times, printed = broker_sequence(guest, ctx)
    assert set(times) == {"restore"}
    domain = hypervisor.domain(ctx.vm)
    assert domain.state.name == "RUNNING"
    assert [str(d.source) for d in domain.disks] == [str(guest.disks[0])]
    seqs = new_console_seqs(guest, printed, 5)
    assert seqs[0] in (last, last + 1), (last, seqs[:5])  # the same process, carrying on
    on_disk = read_records(guest.disks[0], force_share=True)
    progress = max(seq for seq, _ in read_console(guest.console_log)[printed:])
    assert_contiguous(on_disk)
    assert on_disk[:len(backup)] == backup
    # Nothing the old run wrote after the backup survives: the disk ends where the
    # resumed process has got to, well before where the old run had got to.
    assert on_disk[-1].seq <= progress + 1 < wrote_until, (on_disk[-1].seq, progress, wrote_until)
    assert not ctx.layout().working.exists()
    assert list(guest.disks[0].parent.glob("*.before-restore.*")) == []


def test_restore_without_state_boots_the_restored_disk(make_guest, tmp_path, hypervisor):
    """With sstRestoreVMWithoutState the VM boots afresh from the restored image."""
    guest, ctx, backup = backed_up(make_guest, tmp_path, hypervisor, restore_without_state=True)
    _, printed = broker_sequence(guest, ctx)
    assert new_console_seqs(guest, printed, 3)[0] == 1  # a new boot counts from 1
    assert hypervisor.domain(ctx.vm).state.name == "RUNNING"


def test_restore_of_a_shut_off_backup_boots_it(make_guest, tmp_path, hypervisor):
    """A backup with the placeholder state is restored by defining and starting the VM."""
    guest, ctx, backup = backed_up(make_guest, tmp_path, hypervisor, running=False)
    _, printed = broker_sequence(guest, ctx)
    assert new_console_seqs(guest, printed, 3)[0] == 1
    assert hypervisor.domain(ctx.vm).state.name == "RUNNING"


def error_of(step, ctx):
    with pytest.raises(StepError) as caught:
        step(ctx)
    return caught.value.code


def test_corrupted_image_is_38_and_missing_file_37(make_guest, tmp_path, hypervisor):
    """A flipped byte in the backed-up image gives 38; a deleted backup file 37."""
    guest, ctx, _ = backed_up(make_guest, tmp_path, hypervisor)
    unretain_small_files(ctx)
    image = ctx.layout().backup_disk(str(guest.disks[0]))
    middle = image.stat().st_size // 2  # inside the guest's records
    with open(image, "r+b") as handle:
        handle.seek(middle)
        byte = handle.read(1)
        handle.seek(middle)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert error_of(unretain_large_files, ctx) == 38
    image.unlink()
    assert error_of(unretain_large_files, ctx) == 37
    assert hypervisor.domain(ctx.vm).state.name == "RUNNING"  # the live VM was never touched


def damage_state(ctx):
    state = ctx.layout().small_file("state")
    with open(state, "r+b") as handle:
        handle.write(b"\0" * 4096)


def test_damaged_state_with_force_start_boots(make_guest, tmp_path, hypervisor):
    """If the memory state cannot be restored and ForceStart is TRUE, the VM is booted."""
    guest, ctx, _ = backed_up(make_guest, tmp_path, hypervisor, force_start=True)
    unretain_small_files(ctx)
    unretain_large_files(ctx)
    damage_state(ctx)
    guest.domain.destroy()
    guest.domain.undefineFlags(0)
    printed = len(read_console(guest.console_log))
    restore(ctx)
    assert new_console_seqs(guest, printed, 3)[0] == 1
    assert hypervisor.domain(ctx.vm).state.name == "RUNNING"


def test_damaged_state_without_force_start_fails_with_disks_in_place(make_guest, tmp_path,
                                                                      hypervisor):
    """Without ForceStart a damaged state is 21 or 44; the restored disks are in place."""
    guest, ctx, backup = backed_up(make_guest, tmp_path, hypervisor)
    unretain_small_files(ctx)
    unretain_large_files(ctx)
    damage_state(ctx)
    guest.domain.destroy()
    guest.domain.undefineFlags(0)
    assert error_of(restore, ctx) in (21, 44)
    assert read_records(guest.disks[0]) == backup
    assert list(guest.disks[0].parent.glob("*.before-restore.*"))  # the old image is kept


def test_restore_refuses_a_running_domain(make_guest, tmp_path, hypervisor):
    """restore while the VM still runs is refused with 22 and its disk is untouched."""
    guest, ctx, backup = backed_up(make_guest, tmp_path, hypervisor)
    unretain_small_files(ctx)
    unretain_large_files(ctx)
    assert error_of(restore, ctx) == 22
    assert len(read_records(guest.disks[0], force_share=True)) > len(backup)


def test_unretain_without_a_backup_is_37(make_guest, tmp_path, hypervisor):
    """Restoring a backup date that does not exist is 37, not a warning with success."""
    guest = make_guest(start=False)
    ctx = make_context(guest, tmp_path, hypervisor, date="20200101T000000Z")
    assert error_of(unretain_small_files, ctx) == 37
    assert error_of(unretain_large_files, ctx) == 37
