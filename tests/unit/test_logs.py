"""Logging: structured journal fields under systemd, a readable stderr line otherwise."""

import io
import logging

import pytest

from provbackup import logs

STEP_FIELDS = {"vm": "vm-1", "backup_date": "20261122T030000Z", "step": "merge",
               "return_value": 0}


@pytest.fixture
def logger():
    """A private logger, so the root configuration of other tests is left alone."""
    log = logging.getLogger("provbackup.test-logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    log.handlers.clear()


def test_step_fields_become_upper_case_journal_fields(logger):
    """extra= vm/backup_date/step/return_value reach the journal as PROVBACKUP_* fields."""
    sent = []
    # (the record's own attributes, `message` among them, come as keywords too)
    logger.addHandler(logs.journal_handler(sender=lambda text, **fields:
                                           sent.append((text, fields))))
    logger.info("vm-1 20261122T030000Z merge: done in %.3f s", 1.5, extra=STEP_FIELDS)
    (message, fields), = sent
    assert message == "vm-1 20261122T030000Z merge: done in 1.500 s"
    assert fields["SYSLOG_IDENTIFIER"] == "provbackup"
    assert fields["PRIORITY"] == "6"
    assert {k: v for k, v in fields.items() if k.startswith("PROVBACKUP_")} == {
        "PROVBACKUP_VM": "vm-1", "PROVBACKUP_BACKUP_DATE": "20261122T030000Z",
        "PROVBACKUP_STEP": "merge", "PROVBACKUP_RETURN_VALUE": "0"}


def test_a_line_without_fields_sends_none(logger):
    """Lines that are not about a VM carry no PROVBACKUP_* field."""
    sent = []
    logger.addHandler(logs.journal_handler(sender=lambda text, **fields: sent.append(fields)))
    logger.warning("directory unavailable")
    assert not [k for k in sent[0] if k.startswith("PROVBACKUP_")]


def test_stderr_line_shows_the_fields_when_present(logger):
    """On stderr the fields follow the logger name in brackets; absent ones are left out."""
    out = io.StringIO()
    logger.addHandler(logs.stream_handler(out))
    logger.error("failed: 26", extra={"vm": "vm-1", "step": "snapshot", "return_value": 26})
    logger.info("ready")
    first, second = out.getvalue().splitlines()
    assert first.endswith(" ERROR provbackup.test-logs [vm=vm-1 step=snapshot "
                          "return_value=26]: failed: 26")
    assert second.endswith(" INFO provbackup.test-logs: ready")


@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    ({"INVOCATION_ID": "0123abcd"}, True),
    ({"JOURNAL_STREAM": "8:12345"}, True),
    ({"JOURNAL_STREAM": "", "INVOCATION_ID": ""}, False),
])
def test_under_systemd_is_told_by_the_environment(environ, expected):
    """systemd sets INVOCATION_ID and JOURNAL_STREAM for its services."""
    assert logs.under_systemd(environ) is expected


def test_setup_replaces_its_own_handler_and_sets_the_level():
    """Calling setup twice leaves one provbackup handler, at the configured level."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        logs.setup("WARNING", journal=False, stream=io.StringIO())
        handler = logs.setup("DEBUG", journal=False, stream=io.StringIO())
        ours = [h for h in root.handlers if h.get_name() == logs.IDENTIFIER]
        assert ours == [handler] and root.level == logging.DEBUG
        assert logging.getLogger("ldap3").level == logging.INFO
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)
