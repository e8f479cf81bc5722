"""Which function runs each request verb."""

from provbackup.workflow.merge import merge
from provbackup.workflow.retain import delete, retain
from provbackup.workflow.snapshot import snapshot

#: request verb -> step (the restore steps join with the restore issue)
STEPS = {"snapshot": snapshot, "merge": merge, "retain": retain, "delete": delete}
