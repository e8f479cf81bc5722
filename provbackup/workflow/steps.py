"""Which function runs each request verb."""

from provbackup.workflow.merge import merge
from provbackup.workflow.restore import restore, unretain_large_files, unretain_small_files
from provbackup.workflow.retain import delete, retain
from provbackup.workflow.snapshot import snapshot

#: request verb -> step
STEPS = {"snapshot": snapshot, "merge": merge, "retain": retain, "delete": delete,
         "unretainSmallFiles": unretain_small_files, "unretainLargeFiles": unretain_large_files,
         "restore": restore}
