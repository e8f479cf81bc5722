"""The merge step: export the frozen images, then commit the overlays back (CONTRACT.md 5).

The original pulled the whole backing image into the overlay, a cost that grows with
the disk. Here each frozen image is first copied, sparsely and checksummed, into the
backup directory under a hidden name (the only full read of the disk in a backup);
then the overlay, which holds only what the guest wrote since the snapshot, is
committed into the image and the VM pivots back to its original path.
"""

from __future__ import annotations

from pathlib import Path

from provbackup import errors
from provbackup.workflow import storage
from provbackup.workflow.context import StepContext, allocated_bytes, consistent_domain
from provbackup.workflow.journal import Journal, Phase
from provbackup.workflow.layout import Layout

MIB = 1024 * 1024


def merge(ctx: StepContext) -> dict[str, float]:
    """Copy every frozen image to the backup directory and commit its overlay."""
    start = ctx.clock()
    layout = ctx.layout()
    journal = _journal(ctx, layout)
    if journal.phase is Phase.MERGED:
        ctx.log.info("already merged; answering again")
        return {"merge": journal.times.get("merge", 0.0)}
    domain = consistent_domain(ctx, allow_overlays=layout)
    journal = ctx.journals.advance(journal, ctx.vm, ctx.date, Phase.MERGING)
    storage.require_root(layout.backup_root, errors.BackupRootDirectoryDoesNotExistError)
    storage.make_directories(layout.backup_root, layout.intermediate, *ctx.dir_mode())
    storage.remove_stale_temporaries(layout.backup)  # from a copy cut short by a crash
    live = {d.target: str(d.source) for d in domain.disks}
    for disk in ctx.machine.disks:
        record = journal.disks.setdefault(disk.target, {"source": disk.source})
        overlay = layout.overlay(disk.source)
        on_overlay = live.get(disk.target) == str(overlay)
        if on_overlay and not _copied(layout, disk.source, record):
            _export(ctx, layout, disk.source, record)
            ctx.journals.save(journal)
        if not _copied(layout, disk.source, record):
            raise errors.MissingNecessaryFilesError(
                f"the point-in-time copy of {disk.target} is gone and {disk.source} has moved on")
        if on_overlay:
            ctx.hypervisor.commit(ctx.vm, disk.target, ctx.policy.bandwidth_merge)
        try:
            overlay.unlink(missing_ok=True)
        except OSError as e:
            raise errors.CannotRemoveOldDiskImageError(f"{overlay}: {e.strerror}") from None
    journal.times["merge"] = ctx.clock() - start
    ctx.journals.advance(journal, ctx.vm, ctx.date, Phase.MERGED)
    return {"merge": journal.times["merge"]}


def _journal(ctx: StepContext, layout: Layout) -> Journal:
    """This iteration's journal, rebuilt from libvirt if it was lost (VM on our overlays)."""
    journal = ctx.journals.load(ctx.vm)
    if journal is not None and journal.backup_date == ctx.date:
        if journal.phase not in (Phase.SNAPSHOTTED, Phase.MERGING, Phase.MERGED):
            raise errors.WrongStateInformationError(
                f"backup {ctx.date} is not ready to merge ({journal.phase.value})")
        return journal
    overlays = {str(layout.overlay(d.source)) for d in ctx.machine.disks}
    if not any(str(d.source) in overlays for d in ctx.hypervisor.domain(ctx.vm).disks):
        raise errors.WrongStateInformationError(f"no snapshot {ctx.date} of {ctx.vm} to merge")
    ctx.log.warning("journal missing; continuing from what libvirt shows")
    journal = Journal(vm=ctx.vm, backup_date=ctx.date, phase=Phase.SNAPSHOTTED)
    ctx.journals.save(journal)
    return journal


def _copied(layout: Layout, source: str, record: dict) -> bool:
    return bool(record.get("sha256")) and layout.pending_disk(source).exists()


def _export(ctx: StepContext, layout: Layout, source: str, record: dict) -> None:
    """Copy one frozen image into the backup directory under its hidden name."""
    storage.check_space(layout.backup, storage.space_needed(allocated_bytes([Path(source)]), 0))
    result = storage.sparse_copy(Path(source), layout.pending_disk(source),
                                 bandwidth_bytes=ctx.policy.bandwidth_merge * MIB,
                                 error=errors.CannotCopyImageToBackupLocationError)
    owner, group, mode = ctx.file_mode()
    storage.apply_ownership(result.temp, owner, group, mode, directory=False)
    storage.publish(result.temp, layout.pending_disk(source),
                    error=errors.CannotCopyImageToBackupLocationError)
    record["sha256"] = result.sha256 or ""
    record["copied_bytes"] = str(result.bytes_copied)
    ctx.log.info("%s copied: %d bytes of data", source, result.bytes_copied)
