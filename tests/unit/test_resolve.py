"""Configuration resolution (CONTRACT.md section 3): VM, then pool, then cloud-wide."""

from pathlib import PurePosixPath

import pytest

from provbackup.errors import StepError

from provbackup.directory.dn import normalize_dn
from provbackup.directory.entry import Entry
from provbackup.directory.resolve import resolve

S = "ou=virtualization,ou=services,dc=stoney-cloud,dc=org"
CLOUD_DN = f"ou=backup,ou=configuration,{S}"
POOL_DN = f"ou=backup,sstVirtualMachinePool=pool-1,ou=virtual machine pools,{S}"
VM_DN = f"sstVirtualMachine=vm-1,ou=virtual machines,{S}"
VM_BACKUP_DN = f"ou=backup,{VM_DN}"
CLASSES = ["top", "organizationalUnit", "sstVirtualizationBackupObjectClass"]


def config_entry(dn, classes=CLASSES, **attributes):
    """A backup configuration entry with the given attributes."""
    return Entry.from_dict(dn, {"objectClass": classes, **attributes})


def vm(pools=("pool-1",)):
    """The VM entry, in the given pools."""
    return Entry.from_dict(VM_DN, {"sstVirtualMachine": "vm-1", "sstNode": "node-01",
                                   "sstVirtualMachinePool": list(pools)})


def run(entries, vm_entry=None, cloud_dn=CLOUD_DN):
    """Resolve for the VM with `entries` as the whole directory."""
    directory = {normalize_dn(e.dn): e for e in entries}
    return resolve(vm_entry or vm(), lambda dn: directory.get(normalize_dn(dn)), S, cloud_dn)


CLOUD = config_entry(CLOUD_DN, sstBackupNumberOfIterations="1",
                     sstBackupRootDirectory="file:///var/backup/virtualization")
POOL = config_entry(POOL_DN, sstBackupNumberOfIterations="3")
VM_LEVEL = config_entry(VM_BACKUP_DN, sstBackupNumberOfIterations="7",
                        sstVirtualizationBandwidthMerge="50")
VM_CONTAINER = config_entry(VM_BACKUP_DN, classes=["top", "organizationalUnit"])
POOL_CONTAINER = config_entry(POOL_DN, classes=["top", "organizationalUnit"])


@pytest.mark.parametrize("entries, level, source, iterations", [
    ([CLOUD, POOL, VM_LEVEL], "vm", VM_BACKUP_DN, 7),
    ([CLOUD, POOL, VM_CONTAINER], "pool", POOL_DN, 3),
    ([CLOUD, POOL_CONTAINER, VM_CONTAINER], "cloud", CLOUD_DN, 1),
    ([CLOUD], "cloud", CLOUD_DN, 1),
    ([POOL, VM_LEVEL], "vm", VM_BACKUP_DN, 7),
])
def test_first_level_with_the_object_class_wins(entries, level, source, iterations):
    """The VM's entry, else the pool's, else the cloud-wide one; a plain ou=backup is skipped."""
    policy = run(entries)
    assert (policy.level, policy.source_dn, policy.iterations) == (level, source, iterations)


def test_levels_are_not_mixed_and_missing_values_are_defaults():
    """The winning entry supplies every value it has; the rest are defaults, never the pool's."""
    pool = config_entry(POOL_DN, sstBackupRootDirectory="file:///srv/pool-backups",
                        sstVirtualizationDiskImageOwner="qemu")
    policy = run([CLOUD, pool, VM_LEVEL])
    assert policy.root_directory == PurePosixPath("/var/backup/virtualization")
    assert policy.image_owner == "root"
    assert policy.bandwidth_merge == 50
    assert policy.origin("sstVirtualizationBandwidthMerge") == VM_BACKUP_DN
    assert policy.origin("sstBackupRootDirectory") == "default"


def test_defaults_are_the_documented_ones():
    """An empty configuration entry yields the contract's defaults."""
    policy = run([config_entry(CLOUD_DN)])
    assert policy.root_directory == PurePosixPath("/var/backup/virtualization")
    assert policy.retain_directory == PurePosixPath("/var/virtualization/retain")
    assert policy.ram_disk is None
    assert (policy.iterations, policy.bandwidth_merge, policy.image_format) == (1, 0, "qcow2")
    assert (policy.exclude_from_backup, policy.restore_without_state, policy.force_start) == \
        (False, False, False)
    assert (policy.image_owner, policy.image_group, policy.image_mode) == ("root", "vm-storage", 0o660)
    assert (policy.directory_owner, policy.directory_group, policy.directory_mode) == \
        ("root", "vm-storage", 0o770)


def test_every_value_is_read_with_its_type():
    """Booleans, counts, octal modes and file URLs become typed values."""
    policy = run([config_entry(
        CLOUD_DN, sstBackupRootDirectory="file:///srv/backup%20root/",
        sstBackupRetainDirectory="file://localhost/var/virtualization/retain",
        sstBackupRamDiskLocation="file:///dev/shm", sstBackupNumberOfIterations="12",
        sstBackupExcludeFromBackup="TRUE", sstRestoreVMWithoutState="TRUE",
        sstVirtualizationVirtualMachineForceStart="TRUE", sstVirtualizationBandwidthMerge="0",
        sstVirtualizationDiskImagePermission="640", sstVirtualizationDiskImageDirectoryPermission="750",
        sstVirtualizationDiskImageOwner="1000", sstVirtualizationDiskImageGroup="kvm")])
    assert policy.root_directory == PurePosixPath("/srv/backup root")
    assert policy.retain_directory == PurePosixPath("/var/virtualization/retain")
    assert policy.ram_disk == PurePosixPath("/dev/shm")
    assert policy.iterations == 12
    assert policy.exclude_from_backup and policy.restore_without_state and policy.force_start
    assert (policy.image_mode, policy.directory_mode) == (0o640, 0o750)
    assert (policy.image_owner, policy.image_group) == ("1000", "kvm")
    assert policy.defaulted == {"sstVirtualizationDiskImageFormat",
                                "sstVirtualizationDiskImageDirectoryOwner",
                                "sstVirtualizationDiskImageDirectoryGroup"}


@pytest.mark.parametrize("attribute, value, code, says", [
    ("sstBackupRootDirectory", "/var/backup", 39, "expected a file:///absolute/path URL"),
    ("sstBackupRootDirectory", "file://var/backup", 39, "no host"),
    ("sstBackupRootDirectory", "file:///var/../etc", 39, "without '..'"),
    ("sstBackupRootDirectory", "file:relative/path", 39, "without '..'"),
    ("sstBackupRootDirectory", "ftp://host/backup", 35, "only file:// URLs"),
    ("sstBackupRetainDirectory", "nfs://server/retain", 35, "only file:// URLs"),
    ("sstBackupRamDiskLocation", "file:///tmp/../ram", 3, "without '..'"),
    ("sstBackupNumberOfIterations", "0", 39, "at least 1"),
    ("sstBackupNumberOfIterations", "three", 39, "at least 1"),
    ("sstVirtualizationBandwidthMerge", "-5", 39, "at least 0"),
    ("sstBackupExcludeFromBackup", "yes", 39, "expected TRUE or FALSE"),
    ("sstRestoreVMWithoutState", "true", 39, "expected TRUE or FALSE"),
    ("sstVirtualizationDiskImagePermission", "680", 39, "octal digits"),
    ("sstVirtualizationDiskImageDirectoryPermission", "rwx", 39, "octal digits"),
    ("sstVirtualizationDiskImageOwner", "bad name", 39, "user or group name"),
    ("sstVirtualizationDiskImageFormat", "vmdk", 39, "expected qcow2"),
])
def test_bad_values_get_their_return_value(attribute, value, code, says):
    """A value that cannot be used fails with 39 (35 for a scheme, 3 for the RAM disk)."""
    with pytest.raises(StepError) as caught:
        run([config_entry(CLOUD_DN, **{attribute: value})])
    error = caught.value
    assert error.code == code
    assert attribute in str(error) and repr(value) in str(error) and says in str(error)
    assert CLOUD_DN in str(error)


def test_two_values_for_one_option_is_39():
    """A single-valued option with two values is refused, naming both count and entry."""
    with pytest.raises(StepError) as caught:
        run([config_entry(CLOUD_DN, sstBackupNumberOfIterations=["1", "2"])])
    assert caught.value.code == 39 and "has 2 values" in str(caught.value)


def test_no_configuration_anywhere_is_32_listing_where_it_looked():
    """Without any configuration entry the error is 32 and names every place looked at."""
    with pytest.raises(StepError) as caught:
        run([VM_CONTAINER])
    error = caught.value
    assert error.code == 32
    for dn in (VM_BACKUP_DN, POOL_DN, CLOUD_DN):
        assert dn in str(error)
    assert "without sstVirtualizationBackupObjectClass" in str(error)


def test_cloud_entry_without_the_object_class_is_not_a_configuration():
    """The cloud-wide DN must carry the backup object class to count."""
    with pytest.raises(StepError) as caught:
        run([config_entry(CLOUD_DN, classes=["top", "organizationalUnit"])])
    assert caught.value.code == 32


def test_vm_in_two_pools_is_ambiguous_32():
    """A VM naming two different pools has no unambiguous configuration."""
    with pytest.raises(StepError) as caught:
        run([CLOUD, POOL], vm_entry=vm(pools=("pool-1", "pool-2")))
    assert caught.value.code == 32 and "ambiguous" in str(caught.value)


def test_vm_without_pool_falls_back_to_cloud():
    """A VM with no pool attribute skips the pool level."""
    assert run([CLOUD, POOL], vm_entry=vm(pools=())).level == "cloud"


def test_lookup_is_case_and_space_insensitive():
    """Configuration entries are found whatever the case or spacing of their DNs."""
    odd = config_entry(CLOUD_DN.upper().replace(",", ", "), sstBackupNumberOfIterations="4")
    assert run([odd]).iterations == 4
