"""The snapshot step: a point-in-time copy of every disk and of the memory (CONTRACT.md 5).

The guest keeps running while its memory is written; it is paused only for the
switch of its disks to overlays (a live external snapshot, one atomic libvirt call).
From then on the images at the original paths are frozen until merge has copied
them. A shut-off VM gets overlays too (so merge works alike) and the placeholder
state file.
"""

from __future__ import annotations

from pathlib import Path

from provbackup import errors
from provbackup.hypervisor.base import PowerState
from provbackup.workflow import storage
from provbackup.workflow.context import (StepContext, allocated_bytes, consistent_domain,
                                         prepare_roots)
from provbackup.workflow.journal import Journal, Phase
from provbackup.workflow.layout import PLACEHOLDER_STATE, Layout


def snapshot(ctx: StepContext) -> dict[str, float]:
    """Take the snapshot; returns the `snapshot` and `downtime` times in seconds."""
    start = ctx.clock()
    layout = ctx.layout()
    journal = _previous(ctx, layout)
    if journal is not None and journal.phase is Phase.SNAPSHOTTED:
        ctx.log.info("snapshot already taken; answering again")
        return journal.times
    domain = consistent_domain(ctx, allow_overlays=layout if journal else None)
    overlays = {d.target: layout.overlay(d.source) for d in ctx.machine.disks}
    if journal is not None and all(str(d.source) == str(overlays[d.target])
                                   for d in domain.disks):
        # Cut short after the atomic snapshot took effect: it is complete.
        return _done(ctx, journal, {"snapshot": ctx.clock() - start, "downtime": 0.0})

    prepare_roots(ctx, layout)
    storage.check_writable(layout.backup_root)
    running = domain.state is PowerState.RUNNING
    memory = domain.memory_bytes if running else 0
    images = [Path(d.source) for d in ctx.machine.disks]
    storage.check_space(layout.backup, storage.space_needed(allocated_bytes(images), memory))
    _check_memory_space(layout, memory)
    storage.make_directories(layout.retain_root, layout.intermediate, *ctx.dir_mode())
    state_file = layout.memory_file
    # libvirt refuses to overwrite: clear what an earlier, failed attempt left.
    for leftover in [state_file, *overlays.values()]:
        leftover.unlink(missing_ok=True)

    owner, group, mode = ctx.file_mode()
    storage.write_file_atomic(layout.small_file("xml"), ctx.hypervisor.definition(ctx.vm).encode(),
                              owner=owner, group=group, mode=mode, error=errors.CannotSaveXmlError)
    storage.write_file_atomic(layout.small_file("ldif"), ctx.ldif.encode("utf-8", "surrogateescape"),
                              owner=owner, group=group, mode=mode,
                              error=errors.CannotSaveBackendEntryError)

    journal = ctx.journals.advance(journal, ctx.vm, ctx.date, Phase.SNAPSHOTTING)
    journal.disks = {d.target: {"source": d.source, "overlay": str(overlays[d.target])}
                     for d in ctx.machine.disks}
    ctx.journals.save(journal)
    result = ctx.hypervisor.snapshot(ctx.vm, overlays, state_file if running else None)
    if not running:
        storage.write_file_atomic(state_file, PLACEHOLDER_STATE, owner=owner, group=group,
                                  mode=mode, error=errors.CannotSaveMachineStateError)
    else:
        storage.apply_ownership(state_file, owner, group, mode, directory=False)
    ctx.log.info("snapshot taken, guest stopped for %.3f s", result.downtime)
    return _done(ctx, journal, {"snapshot": ctx.clock() - start, "downtime": result.downtime})


def _check_memory_space(layout: Layout, memory: int) -> None:
    """Room for the memory state: on the RAM disk (3, 4) or in the working directory."""
    if layout.ram_root is None:
        storage.check_space(layout.working, storage.space_needed(0, memory))
        return
    if not layout.ram_root.is_dir():
        raise errors.RamDiskNotValidError(f"{layout.ram_root} is not a directory")
    try:
        storage.check_space(layout.ram_root, storage.space_needed(0, memory))
    except errors.NotEnoughDiskSpaceError as e:
        raise errors.NotEnoughSpaceOnRamDiskError(e.detail) from None
    except errors.NoDiskSpaceInformationError as e:
        raise errors.RamDiskNotValidError(e.detail) from None


def _previous(ctx: StepContext, layout: Layout) -> Journal | None:
    """This iteration's journal; another iteration's is dropped unless it holds the VM."""
    journal = ctx.journals.load(ctx.vm)
    if journal is None or journal.backup_date == ctx.date:
        if journal is not None and journal.phase not in (Phase.SNAPSHOTTING, Phase.SNAPSHOTTED):
            raise errors.WrongStateInformationError(
                f"backup {ctx.date} is already past the snapshot ({journal.phase.value})")
        return journal
    if journal.phase in (Phase.SNAPSHOTTED, Phase.MERGING) or any(
            Path(d.source).name.endswith(f".overlay.{journal.backup_date}")
            for d in ctx.hypervisor.domain(ctx.vm).disks):
        raise errors.CannotLockMachineError(
            f"backup {journal.backup_date} of {ctx.vm} is not merged yet ({journal.phase.value})")
    ctx.log.warning("abandoning the unfinished backup %s (%s)", journal.backup_date,
                    journal.phase.value)
    ctx.journals.remove(ctx.vm)
    return None


def _done(ctx: StepContext, journal: Journal, times: dict[str, float]) -> dict[str, float]:
    journal.times = times
    ctx.journals.advance(journal, ctx.vm, ctx.date, Phase.SNAPSHOTTED)
    return times
