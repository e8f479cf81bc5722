"""The per-VM state machine and the steps, in provbackup's own terms."""
