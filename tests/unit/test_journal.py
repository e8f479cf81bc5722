"""The per-VM journal: the backup state machine as data, written durably."""

import pytest

from provbackup.workflow.journal import (IN_FLIGHT, TRANSITIONS, Journal, JournalError,
                                         JournalStore, Phase)


@pytest.fixture
def store(tmp_path):
    return JournalStore(tmp_path)


def test_a_backup_walks_the_table_and_persists(store):
    """snapshotting -> snapshotted -> merging -> merged -> retaining, each step saved."""
    journal = None
    for phase in (Phase.SNAPSHOTTING, Phase.SNAPSHOTTED, Phase.MERGING, Phase.MERGED,
                  Phase.RETAINING):
        journal = store.advance(journal, "vm-1", "20261122T030000Z", phase)
        assert store.load("vm-1").phase is phase
    journal.disks["vda"] = {"copy_sha256": "ab"}
    store.save(journal)
    assert store.load("vm-1").disks == {"vda": {"copy_sha256": "ab"}}
    store.remove("vm-1")
    assert store.load("vm-1") is None


@pytest.mark.parametrize("current, wanted", [
    (None, Phase.MERGING), (None, Phase.RETAINING), (Phase.SNAPSHOTTING, Phase.MERGING),
    (Phase.SNAPSHOTTED, Phase.RETAINING), (Phase.MERGED, Phase.SNAPSHOTTED),
])
def test_moves_outside_the_table_are_refused(store, current, wanted):
    """The journal refuses any move the transition table does not list."""
    journal = None
    if current is not None:
        journal = Journal("vm-1", "d", current)
    with pytest.raises(JournalError, match="cannot go from"):
        store.advance(journal, "vm-1", "d", wanted)


def test_interrupted_phases_are_resumable():
    """Each in-flight phase may be entered again (a step run again after a crash)."""
    assert IN_FLIGHT == {Phase.SNAPSHOTTING, Phase.MERGING, Phase.RETAINING}
    for phase in IN_FLIGHT:
        assert phase in TRANSITIONS[phase]


def test_every_phase_has_a_row():
    """The table says where each phase may go next."""
    assert set(TRANSITIONS) - {None} == set(Phase)


def test_damaged_journal_is_a_clear_error(store):
    """A journal that is not ours gives JournalError, not a traceback from json."""
    store.directory.mkdir(parents=True)
    store.path("vm-1").write_text("{not json")
    with pytest.raises(JournalError, match="unreadable journal"):
        store.load("vm-1")


def test_in_progress_lists_every_vm(store):
    """At start-up the daemon finds the journal of every VM it was working on."""
    store.advance(None, "a", "d1", Phase.SNAPSHOTTING)
    store.advance(None, "b", "d2", Phase.SNAPSHOTTING)
    assert [j.vm for j in store.in_progress()] == ["a", "b"]
