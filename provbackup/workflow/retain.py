"""The retain and delete steps (CONTRACT.md sections 4 and 5).

retain publishes the iteration in the backup directory: the state, XML and LDIF
files are copied from the working directory (sparse, checksummed, synced), the disk
copies merge left under hidden names get their final names, and the checksum
manifest is written last, so its presence means the backup is complete. Then the
working directory goes. delete removes exactly one iteration's directory.
"""

from __future__ import annotations

from provbackup import errors
from provbackup.workflow import storage
from provbackup.workflow.context import StepContext, remove_working
from provbackup.workflow.journal import Phase

#: which return value a failed copy of each small file gets
_SMALL_FILES = (("state", errors.CannotCopyFileToBackupLocationError),
                ("xml", errors.CannotCopyXmlToBackupLocationError),
                ("ldif", errors.CannotCopyBackendFileToBackupLocationError))


def retain(ctx: StepContext) -> dict[str, float]:
    """Publish the iteration's files under their final names; remove the working directory."""
    start = ctx.clock()
    layout = ctx.layout()
    journal = ctx.journals.load(ctx.vm)
    if journal is None or journal.backup_date != ctx.date:
        if layout.manifest.exists():
            ctx.log.info("already retained; answering again")
            return {"retain": 0.0}
        raise errors.WrongStateInformationError(f"no merged backup {ctx.date} of {ctx.vm}")
    if journal.phase not in (Phase.MERGED, Phase.RETAINING):
        raise errors.WrongStateInformationError(
            f"backup {ctx.date} is not merged yet ({journal.phase.value})")
    journal = ctx.journals.advance(journal, ctx.vm, ctx.date, Phase.RETAINING)
    owner, group, mode = ctx.file_mode()

    disks = {}
    for disk in ctx.machine.disks:
        pending, final = layout.pending_disk(disk.source), layout.backup_disk(disk.source)
        if not pending.exists() and not final.exists():
            raise errors.MissingNecessaryFilesError(f"the copy of {disk.target} ({pending}) is gone")
        disks[final.name] = (pending, final, journal.disks.get(disk.target, {}).get("sha256"))
    small = [(layout.memory_file if kind == "state" else layout.small_file(kind),
              layout.small_file(kind, layout.backup), error) for kind, error in _SMALL_FILES]
    missing = [str(src) for src, final, _ in small if not src.exists() and not final.exists()]
    if missing:
        raise errors.MissingNecessaryFilesError(f"not in the working directory: {', '.join(missing)}")
    needed = sum(src.stat().st_blocks * 512 for src, _, _ in small if src.exists())
    storage.check_space(layout.backup, storage.space_needed(needed, 0))

    manifest = {}
    for src, final, error in small:
        if src.exists():  # not yet copied (or copied, then cut short before cleanup)
            result = storage.sparse_copy(src, final, error=error)
            storage.apply_ownership(result.temp, owner, group, mode, directory=False)
            storage.publish(result.temp, final, error=error)
            manifest[final.name] = result.sha256
        else:
            manifest[final.name] = storage.file_sha256(final)
    for name, (pending, final, sha256) in disks.items():
        if pending.exists():
            storage.apply_ownership(pending, owner, group, mode, directory=False)
            storage.publish(pending, final, error=errors.CannotRenameDiskImageError)
        manifest[name] = sha256 or storage.file_sha256(final)
    storage.remove_stale_temporaries(layout.backup)
    storage.write_manifest(layout.backup, layout.manifest.name, manifest,
                           owner=owner, group=group, mode=mode)
    remove_working(layout)
    _remove_memory_file(layout)
    ctx.journals.remove(ctx.vm)
    return {"retain": ctx.clock() - start}


def _remove_memory_file(layout) -> None:
    """The state on a RAM disk is outside the working directory: free that memory too."""
    if layout.ram_root is None:
        return
    try:
        layout.memory_file.unlink(missing_ok=True)
    except OSError as e:
        raise errors.NotAllFilesDeletedFromRetainLocationError(
            f"{layout.memory_file}: {e.strerror}") from None




def delete(ctx: StepContext) -> dict[str, float]:
    """Remove this iteration's backup directory, every file in it (the disk images too)."""
    start = ctx.clock()
    layout = ctx.layout()
    journal = ctx.journals.load(ctx.vm)
    if journal is not None and journal.backup_date == ctx.date:
        raise errors.CannotLockMachineError(
            f"backup {ctx.date} is still in progress ({journal.phase.value}); not deleting it")
    if layout.backup.exists():
        storage.remove_tree(layout.backup, layout.backup_root)
    else:
        ctx.log.warning("%s does not exist; nothing to delete", layout.backup)
    if layout.working.exists():
        remove_working(layout)
    _remove_memory_file(layout)
    return {"delete": ctx.clock() - start}
