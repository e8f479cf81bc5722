"""Where log records go: the journal under systemd, stderr otherwise.

Step log lines carry `extra={"vm", "backup_date", "step", "return_value"}` (the
runner and StepContext.log set them). In the journal they become the fields
PROVBACKUP_VM, PROVBACKUP_BACKUP_DATE, PROVBACKUP_STEP and PROVBACKUP_RETURN_VALUE,
so `journalctl -u provbackup PROVBACKUP_VM=<uuid>` shows one VM's history; on stderr
they are shown in brackets after the logger name. Secrets are never logged: the
password is a config.Secret that prints as asterisks, and ldap3's own protocol
logging stays off.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Mapping, TextIO

#: record attributes (from extra=) that are shown and sent as journal fields
FIELDS = ("vm", "backup_date", "step", "return_value")
IDENTIFIER = "provbackup"
STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s%(provbackup_fields)s: %(message)s"


def under_systemd(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether systemd started us (it sets these for every service it runs)."""
    return bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))


class JournalFields(logging.Filter):
    """Copies FIELDS present on a record to upper-case PROVBACKUP_* attributes.

    JournalHandler sends every record attribute as a field, but journald keeps only
    upper-case names, so `vm` would be dropped silently.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                setattr(record, f"PROVBACKUP_{name.upper()}", str(value))
        return True


class FieldsFormatter(logging.Formatter):
    """The stderr format, with ` [vm=... step=...]` when the record has such fields."""

    def format(self, record: logging.LogRecord) -> str:
        shown = [f"{name}={getattr(record, name)}" for name in FIELDS
                 if getattr(record, name, None) is not None]
        record.provbackup_fields = f" [{' '.join(shown)}]" if shown else ""
        return super().format(record)


def journal_handler(sender: Callable[..., None] | None = None) -> logging.Handler:
    """A JournalHandler tagged `provbackup`, with the PROVBACKUP_* fields."""
    from systemd import journal  # only needed (and only importable) where it is used

    kwargs = {"sender_function": sender} if sender is not None else {}
    handler = journal.JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER, **kwargs)
    handler.addFilter(JournalFields())
    # The journal stamps time, priority and identifier itself: MESSAGE is the message.
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def stream_handler(stream: TextIO | None = None) -> logging.Handler:
    """A handler writing the stderr format to `stream` (default: sys.stderr)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(FieldsFormatter(STDERR_FORMAT))
    return handler


def setup(level: str, *, journal: bool | None = None,
          stream: TextIO | None = None) -> logging.Handler:
    """Send every record of `level` and above to the journal or stderr; returns the handler.

    `journal` None decides by the environment (under_systemd()); True forces the
    journal (`--journal`), False stderr. Replaces handlers an earlier call installed.
    """
    use_journal = under_systemd() if journal is None else journal
    handler = journal_handler() if use_journal else stream_handler(stream)
    handler.set_name(IDENTIFIER)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == IDENTIFIER]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # ldap3 logs the protocol (with attribute values) only when asked to; make sure a
    # DEBUG level here never asks it to.
    logging.getLogger("ldap3").setLevel(max(logging.INFO, logging.getLevelName(level)))
    return handler
