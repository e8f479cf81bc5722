"""What the steps read of a VM, from the mirror of the real slapd, and the LDIF export."""


import ldap3
import pytest

from provbackup.directory.dn import normalize_dn
from provbackup.directory.machine import read_machine, to_ldif
from provbackup.directory.resolve import resolve
from provbackup.errors import StepError
from tests.integration.test_directory_follow import VM1, VM2, Stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def followed(directory, tmp_path):
    """node-01's mirror of the sample directory, after the first refresh."""
    node = Stack(directory, tmp_path).start()
    yield node
    node.stop()


def test_machine_has_its_disks_and_dhcp_entry(directory, followed):
    """A VM is read with its file disks (not its CD-ROM) and its DHCP host entry."""
    machine = read_machine(followed.mirror, VM1, directory.service_dn)
    assert machine.node == "node-01"
    assert [d.target for d in machine.disks] == ["vda"]
    assert machine.disks[0].kind == "file"
    assert machine.disks[0].source.startswith("/var/virtualization/vm-persistent/")
    assert [e.first("cn") for e in machine.dhcp] == [VM1]
    assert machine.subtree[0].dn.lower().startswith(f"sstvirtualmachine={VM1}")


def test_unknown_vm_is_43(directory, followed):
    """A VM without an entry is CANNOT_WORK_ON_UNDEFINED_OBJECT."""
    with pytest.raises(StepError) as caught:
        read_machine(followed.mirror, "no-such-vm", directory.service_dn)
    assert caught.value.code == 43


def test_ldif_export_round_trips_through_slapd(directory, followed):
    """The LDIF of the VM subtree plus DHCP entry re-creates exactly those entries."""
    machine = read_machine(followed.mirror, VM2, directory.service_dn)
    exported = machine.entries_for_export
    text = to_ldif(exported)
    conn = directory.conn
    for entry in sorted(exported, key=lambda e: len(e.key), reverse=True):
        conn.delete(entry.dn)
    directory.slapd.add_ldif(text)
    for entry in exported:
        conn.search(entry.dn, "(objectClass=*)", ldap3.BASE, attributes=["*"])
        back = {k.lower(): sorted(v) for k, v in conn.entries[0].entry_raw_attributes.items()}
        want = {k.lower(): sorted(x.encode() for x in v) for k, v in entry.attributes.items()}
        assert back == want, entry.dn


def test_ldif_encodes_unsafe_values_and_folds(directory):
    """Values with leading spaces or non-ASCII are base64; long lines are folded."""
    from provbackup.directory.entry import Entry
    entry = Entry.from_dict("cn=x,dc=y", {"objectClass": ["top"], "description": [" lead", "Zürich"],
                                          "cn": ["x" * 200]})
    text = to_ldif([entry])
    assert "description:: IGxlYWQ=" in text
    assert "description:: WsO8cmljaA==" in text
    assert all(len(line) <= 76 for line in text.splitlines())
    assert text.splitlines()[1] == "objectClass: top"


@pytest.mark.parametrize("vm, level, iterations", [(VM1, "vm", 5), (VM2, "pool", 3)])
def test_resolution_from_the_mirror(directory, followed, vm, level, iterations):
    """The sample's VM-level and pool-level configurations are found with their provenance."""
    machine = read_machine(followed.mirror, vm, directory.service_dn)
    policy = resolve(machine.subtree[0], followed.mirror.get, directory.service_dn,
                     followed.settings.cloud_wide_dn)
    assert (policy.level, policy.iterations) == (level, iterations)
    assert normalize_dn(policy.source_dn).startswith("ou=backup,")


def test_resolution_falls_back_to_cloud_wide(directory, followed):
    """With the VM's and the pool's ou=backup made plain containers, the cloud-wide entry applies."""
    vm_dn = f"sstVirtualMachine={VM1},ou=virtual machines,{directory.service_dn}"
    pool_dn = f"sstVirtualMachinePool={followed.mirror.get(vm_dn).first('sstVirtualMachinePool')}," \
              f"ou=virtual machine pools,{directory.service_dn}"
    for dn in (f"ou=backup,{vm_dn}", f"ou=backup,{pool_dn}"):
        make_plain_container(directory.conn, dn)
        wait_for(lambda dn=dn: not followed.mirror.get(dn).has_object_class(
            "sstVirtualizationBackupObjectClass"), f"{dn} to change in the mirror")
    policy = resolve(followed.mirror.get(vm_dn), followed.mirror.get, directory.service_dn,
                     followed.settings.cloud_wide_dn)
    assert policy.level == "cloud" and policy.iterations == 1
    assert normalize_dn(policy.source_dn) == normalize_dn(followed.settings.cloud_wide_dn)


def make_plain_container(conn, dn):
    """Turn a configuration entry into a plain organizationalUnit (as the stoney seed has)."""
    conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["*"])
    names = [n for n in conn.entries[0].entry_attributes if n.lower() not in ("ou", "objectclass",
                                                                             "description")]
    changes = {n: [(ldap3.MODIFY_DELETE, [])] for n in names}
    changes["objectClass"] = [(ldap3.MODIFY_REPLACE, ["top", "organizationalUnit"])]
    conn.modify(dn, changes)
