"""The request verbs of a backup leaf and the words the daemon answers with.

This table is the protocol of CONTRACT.md section 2 as data: the control instance
writes the request, the daemon locks it by writing the progress word and, on
success, answers with the completion word.
"""

from __future__ import annotations

import dataclasses
import enum


class Phase(enum.Enum):
    """Which half of the protocol a step belongs to."""

    BACKUP = "backup"
    RESTORE = "restore"


@dataclasses.dataclass(frozen=True)
class Verb:
    """One request verb with its progress (lock) and completion words."""

    request: str
    progress: str
    completion: str
    phase: Phase


VERBS: dict[str, Verb] = {v.request: v for v in (
    Verb("snapshot", "snapshotting", "snapshotted", Phase.BACKUP),
    Verb("merge", "merging", "merged", Phase.BACKUP),
    Verb("retain", "retaining", "retained", Phase.BACKUP),
    Verb("delete", "deleting", "deleted", Phase.BACKUP),
    Verb("unretainSmallFiles", "unretainingSmallFiles", "unretainedSmallFiles", Phase.RESTORE),
    Verb("unretainLargeFiles", "unretainingLargeFiles", "unretainedLargeFiles", Phase.RESTORE),
    Verb("restore", "restoring", "restored", Phase.RESTORE),
)}

#: a word of the daemon's (progress) -> its verb: a leaf found at one of these with
#: state 0 was being worked on when a daemon stopped.
BY_PROGRESS: dict[str, Verb] = {v.progress: v for v in VERBS.values()}

#: words that appear in the mode with state 0 and must be left alone: a new leaf,
#: the control side's final word, and the daemon's own words.
LEAVE_ALONE: frozenset[str] = frozenset(
    {"initialized", "finished"}
    | {v.progress for v in VERBS.values()}
    | {v.completion for v in VERBS.values()})
