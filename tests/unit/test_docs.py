"""The operator documentation says what the code does."""

import re
from pathlib import Path

from provbackup import errors
from provbackup.configkeys import KEYS
from provbackup.exitcodes import ExitCode

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_return_value_table_in_docs_matches_the_code():
    """docs/return-values.md lists exactly the numbers, names and classes of errors.py."""
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \| (.+?) \|", (DOCS / "return-values.md").read_text(), re.M)
    assert {int(n): name for n, name, _ in rows} == errors.RETURN_VALUES
    classes = errors.step_error_classes()
    for n, _name, cls in rows:
        if int(n):
            assert cls == f"`{classes[int(n)].__name__}`"


def test_exit_codes_in_docs_match_the_code():
    """docs/exit-codes.md lists every process exit code with its number."""
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", (DOCS / "exit-codes.md").read_text(), re.M)
    assert {name: int(n) for n, name in rows} == {c.name: c.value for c in ExitCode}


def test_every_config_key_is_documented():
    """docs/configuration.md mentions every key provbackup reads."""
    text = (DOCS / "configuration.md").read_text()
    missing = [f"[{k.section}] {k.name}" for k in KEYS if k.name not in text]
    assert not missing
