"""Steps handled again after a crash: rollback of a snapshot, resumed merge and restore."""

import pytest

from provbackup.errors import StepError
from provbackup.workflow.journal import Phase
from provbackup.workflow.merge import merge
from provbackup.workflow.recovery import abandon_snapshot
from provbackup.workflow.restore import restore, unretain_large_files, unretain_small_files
from provbackup.workflow.retain import retain
from provbackup.workflow.snapshot import snapshot
from tests.integration.test_backup_steps import assert_running_on_own_images, make_context

pytestmark = pytest.mark.integration


def test_interrupted_snapshot_is_rolled_back_and_failed(make_guest, tmp_path, hypervisor):
    """A snapshot cut short (journal still 'snapshotting', VM on overlays) is undone: 5."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor)
    snapshot(ctx)
    journal = ctx.journals.load(ctx.vm)
    journal.phase = Phase.SNAPSHOTTING  # as if killed right after libvirt's call
    ctx.journals.save(journal)
    with pytest.raises(StepError) as caught:
        abandon_snapshot(ctx)
    assert caught.value.code == 5 and "rolled back" in str(caught.value)
    assert_running_on_own_images(ctx, guest)
    assert not ctx.layout().working.exists()
    assert ctx.journals.load(ctx.vm) is None
    snapshot(ctx)  # and the next request for that date works from scratch
    merge(ctx)
    retain(ctx)
    assert ctx.layout().manifest.exists()


def test_snapshot_interrupted_before_libvirt_is_rolled_back(make_guest, tmp_path, hypervisor):
    """Killed before the snapshot call: only files to remove; the VM never left its image."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor)
    layout = ctx.layout()
    layout.working.mkdir(parents=True)
    layout.small_file("xml").write_text("<domain/>")
    ctx.journals.advance(None, ctx.vm, ctx.date, Phase.SNAPSHOTTING)
    with pytest.raises(StepError):
        abandon_snapshot(ctx)
    assert not layout.working.exists()
    assert_running_on_own_images(ctx, guest)


def test_merge_cut_during_the_copy_is_finished(make_guest, tmp_path, hypervisor):
    """A merge killed mid-copy (temporary file left, journal 'merging') completes when rerun."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor)
    snapshot(ctx)
    layout = ctx.layout()
    layout.backup.mkdir(parents=True)
    (layout.backup / f".{guest.disks[0].name}.{ctx.date}.provbackup-tmp-x").write_bytes(b"half")
    ctx.journals.advance(ctx.journals.load(ctx.vm), ctx.vm, ctx.date, Phase.MERGING)
    merge(ctx)
    retain(ctx)
    assert_running_on_own_images(ctx, guest)
    assert layout.manifest.exists()
    assert not [p for p in layout.backup.iterdir() if p.name.startswith(".")]


def test_restore_cut_after_the_vm_came_back_is_finished(make_guest, tmp_path, hypervisor):
    """restore run again after the VM already runs on the restored disks just tidies up."""
    guest = make_guest()
    ctx = make_context(guest, tmp_path, hypervisor)
    snapshot(ctx)
    merge(ctx)
    retain(ctx)
    unretain_small_files(ctx)
    unretain_large_files(ctx)
    guest.domain.destroy()
    restore(ctx)
    aside = guest.disks[0].with_name(f"{guest.disks[0].name}.before-restore.{ctx.date}")
    aside.write_bytes(b"old image")  # as if killed before the cleanup
    ctx.layout().working.mkdir(parents=True)
    assert set(restore(ctx)) == {"restore"}
    assert not aside.exists() and not ctx.layout().working.exists()
    assert hypervisor.domain(ctx.vm).state.name == "RUNNING"
