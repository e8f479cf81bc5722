"""The operator commands of issue 6 item 6: status, explain, backup, restore, verify.

Each command reads the directory over ONE bound connection with plain searches (no
syncrepl, no mirror) and prints for a human. Failures are raised, never turned into
exit codes here: `provbackup.cli.main` does that (`CommandFailed` -> FAILED).
"""


class CommandFailed(Exception):
    """An operator command could not do what it was asked; the message says why."""
