"""The operator commands (issue 6 item 6) as processes on the rig's slapd, libvirtd and daemon."""

import re
import subprocess
import sys

import pytest

from provbackup.exitcodes import ExitCode
from tests.integration.test_directory_follow import read
from tests.rig.daemon_rig import DATE
from tests.rig.ldap_fixtures import SERVICE_DN
from tests.rig.vm_entries import vm_ldif

pytestmark = pytest.mark.integration

WEB = "53d39b08-4323-4f98-b8b9-68f94e7fd712"  # web-01: node-01, its own configuration
DB = "0a261bb2-9da0-45ad-902c-25cf4cc1ccef"  # db-01: node-02, the pool's configuration
POOL_CONFIG = ("ou=backup,sstVirtualMachinePool=dad483bd-f35b-453f-ab67-ea637526a216,"
               f"ou=virtual machine pools,{SERVICE_DN}")


def vm_dn(name):
    return f"sstVirtualMachine={name},ou=virtual machines,{SERVICE_DN}"


def provbackup(config, *args, timeout=600):
    """Run `python -m provbackup COMMAND -c CONFIG ...` and return the finished process."""
    command, *rest = args
    return subprocess.run([sys.executable, "-m", "provbackup", command, "-c", str(config), *rest],
                          capture_output=True, text=True, timeout=timeout, check=False)


def row(output, first):
    """The cells (two or more spaces apart) of the output line whose first cell is `first`."""
    rows = (re.split(r"\s{2,}", line.strip()) for line in output.splitlines())
    return next(cells for cells in rows if cells[0] == first)


def test_explain_shows_vm_level_values_with_their_origin(directory, rig_config):
    """web-01's own ou=backup applies: its values name that entry, the others 'default'."""
    result = provbackup(rig_config(), "explain", WEB)
    assert result.returncode == ExitCode.OK, result.stderr
    own = f"ou=backup,{vm_dn(WEB)}"
    assert f"level vm: {own}" in result.stdout
    assert row(result.stdout, "sstBackupNumberOfIterations") == \
        ["sstBackupNumberOfIterations", "5", own]
    assert row(result.stdout, "sstRestoreVMWithoutState") == ["sstRestoreVMWithoutState",
                                                              "TRUE", own]
    assert row(result.stdout, "sstVirtualizationDiskImagePermission") == \
        ["sstVirtualizationDiskImagePermission", "660", "default"]
    assert row(result.stdout, "vda")[1:] == [
        "file", "/var/virtualization/vm-persistent/34d7bbf2-f97d-4b90-9331-80b9c091838d/"
                "7e94659d-7ddb-47cc-8c9b-1f0c607cfa35.qcow2"]
    assert "hdc" not in result.stdout.split("DHCP:")[0]  # a CD-ROM is no disk
    assert f"cn={WEB},ou=virtual machines,cn=192.168.140.0" in result.stdout


def test_explain_shows_pool_level_values(directory, rig_config):
    """db-01's ou=backup is a plain container, so every value comes from its pool's entry."""
    result = provbackup(rig_config(), "explain", DB)
    assert result.returncode == ExitCode.OK, result.stderr
    assert f"level pool: {POOL_CONFIG}" in result.stdout
    assert row(result.stdout, "sstVirtualizationBandwidthMerge") == \
        ["sstVirtualizationBandwidthMerge", "20", POOL_CONFIG]
    assert row(result.stdout, "sstRestoreVMWithoutState") == ["sstRestoreVMWithoutState",
                                                              "FALSE", "default"]


def test_explain_of_an_unusable_configuration_exits_3_with_the_message(directory, rig_config,
                                                                         roots, tmp_path):
    """A value the daemon would refuse with 39 is printed with its number; exit COMMAND_FAILED."""
    directory.slapd.add_ldif(vm_ldif("pb-bad-config", [tmp_path / "bad.qcow2"],
                                     backup_root=roots[0], retain_root=roots[1],
                                     extra_config="sstVirtualizationDiskImageFormat: raw\n"))
    result = provbackup(rig_config(), "explain", "pb-bad-config")
    assert result.returncode == ExitCode.COMMAND_FAILED, result.stdout + result.stderr
    assert "[39 UNSUPPORTED_CONFIGURATION_PARAMETER]" in result.stderr
    assert "sstVirtualizationDiskImageFormat 'raw'" in result.stderr
    assert "Traceback" not in result.stderr
    missing = provbackup(rig_config(), "explain", "pb-no-such-vm")
    assert missing.returncode == ExitCode.COMMAND_FAILED
    assert "[43 CANNOT_WORK_ON_UNDEFINED_OBJECT]" in missing.stderr


def test_status_lists_this_nodes_vms_only(directory, rig_config, roots, tmp_path):
    """node-01's VMs in aligned columns, the newest leaf each; node-02's db-01 is absent."""
    directory.slapd.add_ldif(vm_ldif("pb-status-new", [tmp_path / "new.qcow2"],
                                     backup_root=roots[0], retain_root=roots[1]))
    result = provbackup(rig_config(), "status")
    assert result.returncode == ExitCode.OK, result.stderr
    lines = result.stdout.splitlines()
    assert row(result.stdout, "VM") == ["VM", "BACKUP", "MODE", "RETURN VALUE", "ANSWERED"]
    assert row(result.stdout, WEB)[:4] == [WEB, "20261101T030000Z", "finished",
                                           "0 SUCCESS_CODE"]
    assert row(result.stdout, WEB)[4].endswith(" ago")
    assert row(result.stdout, "pb-status-new")[1:] == ["no backup"]
    assert DB not in result.stdout
    header = lines[0]
    web = next(line for line in lines if line.startswith(WEB))
    assert web.index("20261101T030000Z") == header.index("BACKUP")  # aligned


def test_backup_verify_and_restore_of_a_guest_through_the_daemon(
        directory, daemon, make_guest, roots, rig_config):
    """backup runs the three steps, verify finds the backup intact, restore brings the guest
    back running on; a flipped byte in the backup is then reported and exits 3."""
    guest = make_guest()
    directory.slapd.add_ldif(vm_ldif(guest.name, guest.disks, backup_root=roots[0],
                                     retain_root=roots[1]))
    config = rig_config()
    process = daemon(config=config)
    process.wait_ready()
    guest.wait_for_records(5)

    backup = provbackup(config, "backup", guest.name, "--date", DATE, "--timeout", "180")
    assert backup.returncode == ExitCode.OK, backup.stdout + backup.stderr + process.log()
    for verb in ("snapshot", "merge", "retain"):
        assert f"{verb}: 0 SUCCESS_CODE, mode {verb}" in backup.stdout.replace(
            "snapshotted", "snapshot").replace("merged", "merge").replace("retained", "retain")
    leaf = f"ou={DATE},ou=backup,{vm_dn(guest.name)}"
    assert read(directory, leaf)["sstProvisioningMode"] == ["finished"]

    for args in ((guest.name, DATE), (guest.name,)):
        verify = provbackup(config, "verify", *args)
        assert verify.returncode == ExitCode.OK, verify.stdout + verify.stderr
        assert verify.stdout.startswith(f"OK: {guest.name} {DATE}: 4 files match")

    seq = guest.last_seq()
    restore = provbackup(config, "restore", guest.name, DATE, "--timeout", "180")
    assert restore.returncode == ExitCode.OK, restore.stdout + restore.stderr + process.log()
    assert f"domain {guest.name}: destroyed and undefined" in restore.stdout
    for verb, completion in (("unretainSmallFiles", "unretainedSmallFiles"),
                             ("unretainLargeFiles", "unretainedLargeFiles"),
                             ("restore", "restored")):
        assert f"{verb}: 0 SUCCESS_CODE, mode {completion}" in restore.stdout
    guest.wait_for_records(seq + 3, timeout=60)  # the restored guest runs on

    image = next(roots[0].rglob(f"{guest.disks[0].name}.{DATE}"))
    with open(image, "r+b") as handle:
        handle.seek(1024)
        byte = handle.read(1)
        handle.seek(1024)
        handle.write(bytes([byte[0] ^ 0xFF]))
    broken = provbackup(config, "verify", guest.name, DATE)
    assert broken.returncode == ExitCode.COMMAND_FAILED, broken.stdout + broken.stderr
    assert f"mismatch: {image.name}: sha256" in broken.stdout
    assert "1 problem(s)" in broken.stderr


def test_backup_without_a_daemon_times_out_and_exits_3(directory, rig_config, roots, tmp_path):
    """With no daemon running the request is never answered: the timeout names the cause."""
    directory.slapd.add_ldif(vm_ldif("pb-no-daemon", [tmp_path / "x.qcow2"],
                                     backup_root=roots[0], retain_root=roots[1]))
    result = provbackup(rig_config(), "backup", "pb-no-daemon", "--timeout", "1")
    assert result.returncode == ExitCode.COMMAND_FAILED, result.stdout + result.stderr
    assert "snapshot: no answer after 1 s; is `provbackup run` active" in result.stderr
