"""After a crash: bring every VM this node was working on to a safe state.

A leaf found at a progress word with state `0` was locked by a daemon that never
answered it. At start-up, after the first refresh, each such leaf is handled again:
- an interrupted **snapshot** (one that left a journal, overlays or working files) is
  rolled back (the overlays are committed back, the
  working files removed) and answered with 5: a snapshot taken at an unknown moment
  is not the backup that was asked for, and the VM must not stay on an overlay;
- every other step is **run again**: merge, retain, delete and the restore steps are
  resumable from what they find on disk and in libvirt, and then answered as usual.
"""

from __future__ import annotations

from provbackup import errors
from provbackup.directory.schema import MODE, STATE
from provbackup.workflow import gate
from provbackup.workflow.context import StepContext, remove_working
from provbackup.workflow.intake import Entries, Request
from provbackup.workflow.snapshot import snapshot
from provbackup.workflow.steps import STEPS
from provbackup.workflow.verbs import BY_PROGRESS


def in_flight(entries: Entries, node: str) -> list[Request]:
    """The leaves of this node's VMs that were locked and never answered."""
    found = []
    for entry in entries.pending():
        leaf = gate.locate(entry.dn)
        verb = BY_PROGRESS.get(entry.first(MODE) or "")
        if leaf is None or verb is None or entry.first(STATE) != gate.PENDING:
            continue
        vm = entries.get(leaf.vm_dn)
        if vm is not None and vm.first("sstNode") == node:
            found.append(Request(leaf, verb, entry))
    return found


def abandon_snapshot(ctx: StepContext) -> dict[str, float]:
    """Undo an interrupted snapshot, then fail it with 5 (the step's answer).

    A snapshot that was locked but never started (the daemon stopped with it still
    queued) left no trace: it is simply taken now.
    """
    layout = ctx.layout()
    overlays = {d.target: str(layout.overlay(d.source)) for d in ctx.machine.disks}
    on_overlays = []
    if ctx.hypervisor.exists(ctx.vm):
        # libvirtd finishes a snapshot its killed caller began: let it, or the domain
        # would move onto the overlays after we looked.
        ctx.hypervisor.settle(ctx.vm)
        on_overlays = [d.target for d in ctx.hypervisor.domain(ctx.vm).disks
                       if str(d.source) == overlays.get(d.target)]
    journal = ctx.journals.load(ctx.vm)
    started = (journal is not None and journal.backup_date == ctx.date) or on_overlays \
        or layout.working.exists()
    if not started:
        return snapshot(ctx)
    for target in on_overlays:
        ctx.hypervisor.commit(ctx.vm, target, 0)
    remove_working(layout)
    layout.memory_file.unlink(missing_ok=True)
    if journal is not None and journal.backup_date == ctx.date:
        ctx.journals.remove(ctx.vm)
    raise errors.CannotSaveMachineStateError(
        "the snapshot was interrupted by a stop of provbackup; it was rolled back, the VM "
        "runs on its own images")


#: the steps a recovering daemon runs for leaves found in flight
RECOVERY_STEPS = {**STEPS, "snapshot": abandon_snapshot}
