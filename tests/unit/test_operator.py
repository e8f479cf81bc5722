"""The pure helpers of the operator commands: ages, the default date, tables, leaves."""

import datetime

import pytest

from provbackup.commands.control import default_backup_date, leaf_dn, new_times
from provbackup.commands.report import (age_text, format_table, newest_leaf, option_value,
                                        return_value_text, state_age, status_rows)
from provbackup.directory.entry import Entry

NOW = datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.timezone.utc)
S = "ou=virtualization,ou=services,dc=stoney-cloud,dc=org"
VMS = f"ou=virtual machines,{S}"


def vm(name):
    return Entry.from_dict(f"sstVirtualMachine={name},{VMS}", {"sstVirtualMachine": name})


def leaf(name, date, mode="retained", state="20261122T090000Z", rv="0"):
    return Entry.from_dict(f"ou={date},ou=backup,sstVirtualMachine={name},{VMS}", {
        "objectClass": ["top", "organizationalUnit", "sstProvisioning"], "ou": date,
        "sstProvisioningMode": mode, "sstProvisioningState": state,
        "sstProvisioningReturnValue": rv})


@pytest.mark.parametrize("seconds, text", [
    (0, "0s ago"), (59, "59s ago"), (60, "1m ago"), (3599, "59m ago"), (3600, "1h ago"),
    (3 * 3600 + 59, "3h ago"), (86400 * 2 + 5, "2d ago"), (-5, "0s ago"),
    (-3600, "in the future")])
def test_age_text(seconds, text):
    """Ages are shown in the largest whole unit; a small clock skew reads as now."""
    assert age_text(seconds) == text


@pytest.mark.parametrize("state, text", [
    ("20261122T090000Z", "3h ago"), ("0", "pending"), (None, "-"), ("yesterday", "?")])
def test_state_age(state, text):
    """sstProvisioningState is a UTC timestamp, 0 while a request is pending."""
    assert state_age(state, NOW) == text


def test_default_backup_date_is_local_time_with_seconds_00_and_a_literal_z():
    """The default leaf name is the broker's: the local wall clock, seconds 00, then Z."""
    local = datetime.datetime(2026, 11, 22, 3, 7, 42)
    assert default_backup_date(local) == "20261122T030700Z"


def test_format_table_aligns_columns_and_strips_trailing_blanks():
    """Columns are as wide as their widest cell, two spaces apart; short rows are allowed."""
    lines = format_table([("VM", "BACKUP", "MODE"), ("web-01", "20261122T030000Z", "retained"),
                          ("db-01", "no backup")])
    assert lines == ["VM      BACKUP            MODE",
                     "web-01  20261122T030000Z  retained",
                     "db-01   no backup"]


def test_return_value_text_names_the_value():
    """A return value is shown with its original name; absent is '-'."""
    assert return_value_text("0") == "0 SUCCESS_CODE"
    assert return_value_text("47") == "47 NOT_ENOUGH_DISK_SPACE"
    assert return_value_text(None) == "-"


def test_status_rows_take_each_vms_newest_leaf():
    """Each VM gets its newest leaf by date; a VM without leaves says 'no backup'."""
    leaves = [leaf("web-01", "20261121T030000Z", "finished"),
              leaf("web-01", "20261122T030000Z", "merging", state="0"),
              leaf("other", "20261123T030000Z")]
    rows = status_rows([vm("web-01"), vm("db-01")], leaves, NOW)
    assert rows == [("VM", "BACKUP", "MODE", "RETURN VALUE", "ANSWERED"),
                    ("db-01", "no backup"),
                    ("web-01", "20261122T030000Z", "merging", "0 SUCCESS_CODE", "pending")]


def test_newest_leaf_among_modes():
    """verify's default: the newest leaf whose mode is retained or finished."""
    leaves = [leaf("a", "20261120T030000Z", "finished"), leaf("a", "20261121T030000Z"),
              leaf("a", "20261122T030000Z", "merging")]
    assert newest_leaf(leaves, ("retained", "finished")).first("ou") == "20261121T030000Z"
    assert newest_leaf([], ("retained",)) is None


def test_option_values_are_spelt_as_in_the_directory():
    """Booleans as TRUE/FALSE, modes in octal, an unset value says so."""
    assert option_value(True, "force_start") == "TRUE"
    assert option_value(0o660, "image_mode") == "660"
    assert option_value(None, "ram_disk") == "(unset)"
    assert option_value(3, "iterations") == "3"


def test_leaf_dn_and_new_times():
    """The leaf lies under the VM's ou=backup; only times new since the request are shown."""
    assert leaf_dn(f"sstVirtualMachine=a,{VMS}", "20261122T030000Z") == \
        f"ou=20261122T030000Z,ou=backup,sstVirtualMachine=a,{VMS}"
    assert new_times(("snapshot: 1.000",), ("snapshot: 1.000", "merge: 2.000")) == \
        ["merge: 2.000"]
