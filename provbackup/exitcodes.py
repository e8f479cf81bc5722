"""Process exit codes of the `provbackup` command.

These are for systemd and shell scripts, not for LDAP: the return values of a step
(`provbackup.errors`) are a different table. The numbers follow sysexits(3) where one
fits, so that `RestartPreventExitStatus=` in the unit can name the ones a restart
cannot cure. docs/exit-codes.md lists them for operators.
"""

import enum


class ExitCode(enum.IntEnum):
    """How the provbackup process ended."""

    OK = 0
    #: an unexpected internal error (a bug); systemd restarts the service
    INTERNAL_ERROR = 1
    #: wrong command line (argparse's own code)
    USAGE = 2
    #: an operator command (status, explain, backup, restore, verify) failed: a step
    #: answered an error or no answer came, the configuration did not resolve, or
    #: verify found a problem
    COMMAND_FAILED = 3
    #: `run`: the directory or libvirt could not be reached at start (EX_UNAVAILABLE);
    #: systemd restarts the service after RestartSec. The operator commands: the
    #: directory could not be reached or refused the bind
    UNAVAILABLE = 69
    #: `run`: another provbackup already runs on this node (EX_TEMPFAIL); a restart
    #: cannot help while it does
    ALREADY_RUNNING = 75
    #: the configuration file is missing or wrong; a restart cannot help
    CONFIG_ERROR = 78
    #: interrupted by the operator (Ctrl-C), as a shell reports SIGINT
    INTERRUPTED = 130
