"""The return-value table (CONTRACT.md section 6) and its exception classes."""

import re

import pytest

from provbackup import errors
from tests.shared import shared_file


def _contract_table() -> dict[int, str]:
    """Parse `N NAME` pairs out of section 6 of the wire contract."""
    text = shared_file("docs/CONTRACT.md").read_text(encoding="utf-8")
    section = text.split("## 6.", 1)[1].split("\n## ", 1)[0]
    return {int(n): name for n, name in re.findall(r"\b(\d{1,2}) ([A-Z][A-Z_]+)\b", section)}


def test_table_matches_the_contract():
    """Every number and original name, misspellings included, is as the contract says."""
    assert errors.RETURN_VALUES == _contract_table()


def test_fourteen_is_unused_and_the_misspelt_three_is_kept():
    """14 has no name and 3 keeps the original's VALUD spelling."""
    assert 14 not in errors.RETURN_VALUES
    assert errors.RETURN_VALUES[3] == "CONFIGURED_RAM_DISK_IS_NOT_VALUD"


def test_one_class_per_failure_value():
    """Each return value 1-48 except 14 has exactly one exception class."""
    classes = errors.step_error_classes()
    assert sorted(classes) == sorted(set(errors.RETURN_VALUES) - {0})
    assert all(cls.__name__.endswith("Error") for cls in classes.values())


@pytest.mark.parametrize("code", sorted(set(errors.RETURN_VALUES) - {0}))
def test_every_error_carries_its_number_name_and_message(code):
    """An instance knows its number and original name and says what happened."""
    error = errors.error_for_code(code, "vm-1: something specific")
    assert error.code == code
    assert error.name == errors.RETURN_VALUES[code]
    assert str(error).endswith(f"[{code} {errors.RETURN_VALUES[code]}]")
    assert "vm-1: something specific" in str(error)
    assert error.message.split(":")[0].strip()  # a summary precedes the detail


def test_unknown_code_becomes_undefined_error():
    """A number outside the table maps to 1, never to a raw foreign number."""
    assert errors.error_for_code(9999).code == 1
    assert errors.return_value_name(9999) == "UNKNOWN_RETURN_VALUE_9999"


def test_message_without_detail_is_the_summary():
    """With no detail the message is the class's one-line summary."""
    assert errors.CannotFindMachineError().message == "the machine is not defined on this node"
