"""A generated stoney cloud directory of N VMs, loaded into a private rig slapd.

Each VM is shaped like the sample directory's web-01 (etc/ldap/sample.ldif): the VM
entry, ou=devices with a disk and a CD-ROM, ou=backup with LEAVES finished backup
leaves, and a DHCP host entry - 6 + LEAVES entries per VM. VM i runs on node
`node-{i % NODES + 1:02d}`, so a node owns 1/NODES of them (the benchmark's daemon is
node-01). Loaded offline with slapadd, which is what an operator would do to seed a
directory of this size; slapd then serves it as usual, syncprov included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

from tests.rig.daemon_config import NODE
from tests.rig.ldap_fixtures import PROJECT_SCHEMA_FILES, SAMPLE_LDIF, SERVICE_DN, SUFFIX
from tests.rig.slapd import Slapd, _tool

NODES = 20
LEAVES = 3
THIS_NODE = NODE  # the node the daemon's configuration names
POOL = "dad483bd-f35b-453f-ab67-ea637526a216"  # the sample directory's pool
DHCP_VMS = f"ou=virtual machines,cn=192.168.140.0,cn=config-01,ou=dhcp,ou=networks,{SERVICE_DN}"
VMS = f"ou=virtual machines,{SERVICE_DN}"
LEAF_DATES = [f"202611{day:02d}T030000Z" for day in range(1, 29)]


def vm_name(i: int) -> str:
    """The name (a UUID, as stoney uses) of generated VM number i."""
    return str(uuid.UUID(int=0xB0B0_0000_0000_4000_8000_0000_0000_0000 + i))


def node_of(i: int) -> str:
    return f"node-{i % NODES + 1:02d}"


def vm_dn(i: int) -> str:
    return f"sstVirtualMachine={vm_name(i)},{VMS}"


def leaf_dn(i: int, date: str) -> str:
    return f"ou={date},ou=backup,{vm_dn(i)}"


def entries_per_vm() -> int:
    """VM, ou=devices, two disks, ou=backup, the leaves and the DHCP host entry."""
    return 6 + LEAVES


def vm_ldif(i: int) -> str:
    """The LDIF of generated VM number i (entries separated by blank lines)."""
    name, dn = vm_name(i), vm_dn(i)
    blocks = [f"""dn: {dn}
objectClass: top
objectClass: sstVirtualizationVirtualMachine
objectClass: sstRelationship
sstVirtualMachine: {name}
sstDisplayName: vm-{i:05d}
sstNode: {node_of(i)}
sstVirtualMachinePool: {POOL}
sstVirtualMachineType: persistent
sstVirtualMachineSubType: Server
sstType: kvm
sstStatus: running
sstMemory: 268435456
sstVCPU: 1
sstClockOffset: utc
sstOnCrash: destroy
sstOnPowerOff: destroy
sstOnReboot: restart
sstOSArchitecture: x86_64
sstOSBootDevice: hd
sstOSMachine: pc
sstOSType: hvm
sstFeature: acpi
sstFeature: apic
sstNetworkHostname: vm-{i:05d}
sstNetworkDomainName: example.org
sstBelongsToResellerUID: 4000000
sstBelongsToCustomerUID: 4000001
""", f"""dn: ou=devices,{dn}
objectClass: top
objectClass: organizationalUnit
objectClass: sstVirtualizationVirtualMachineDevices
ou: devices
sstEmulator: /usr/bin/qemu-kvm
sstMemBalloon: virtio
""", f"""dn: sstDisk=vda,ou=devices,{dn}
objectClass: top
objectClass: sstVirtualizationVirtualMachineDisk
sstDisk: vda
sstDevice: disk
sstType: file
sstSourceFile: /var/virtualization/vm-persistent/{POOL}/{name}.qcow2
sstTargetBus: virtio
sstDriverName: qemu
sstDriverType: qcow2
sstDriverCache: none
sstReadonly: FALSE
sstVolumeName: {name}
sstVolumeCapacity: 1073741824
sstVolumeAllocation: 209715200
""", f"""dn: sstDisk=hdc,ou=devices,{dn}
objectClass: top
objectClass: sstVirtualizationVirtualMachineDisk
sstDisk: hdc
sstDevice: cdrom
sstType: file
sstSourceFile: /var/virtualization/iso/debian-12-netinst.iso
sstTargetBus: ide
sstDriverName: qemu
sstDriverType: raw
sstReadonly: TRUE
""", f"""dn: ou=backup,{dn}
objectClass: top
objectClass: organizationalUnit
objectClass: sstVirtualizationBackupObjectClass
ou: backup
"""]
    for date in LEAF_DATES[:LEAVES]:
        blocks.append(f"""dn: {leaf_dn(i, date)}
objectClass: top
objectClass: organizationalUnit
objectClass: sstProvisioning
ou: {date}
sstProvisioningMode: finished
sstProvisioningState: {date[:9]}021845Z
sstProvisioningExecutionDate: 0
sstProvisioningReturnValue: 0
sstProvisioningExecutionTime: snapshot: 5.108
sstProvisioningExecutionTime: merge: 331.901
sstProvisioningExecutionTime: retain: 893.729
""")
    blocks.append(f"""dn: cn={name},{DHCP_VMS}
objectClass: top
objectClass: dhcpHost
objectClass: sstVirtualizationNetwork
cn: {name}
dhcpHWAddress: ethernet 52:54:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}
dhcpStatements: fixed-address 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}
sstBelongsToResellerUID: 4000000
sstBelongsToCustomerUID: 4000001
""")
    return "\n".join(blocks)


def ldif(n: int) -> Iterator[str]:
    """The sample directory, then n generated VMs (the suffix entry is the rig's)."""
    yield SAMPLE_LDIF.read_text() + "\n"
    for i in range(n):
        yield vm_ldif(i) + "\n"


def filled_slapd(workdir: Path, n: int) -> Slapd:
    """A private slapd (tests/rig/slapd.py) holding the sample directory and n VMs."""
    server = Slapd(workdir, PROJECT_SCHEMA_FILES, SUFFIX)
    server.stop()
    source = workdir / f"directory-{n}.ldif"
    with open(source, "w") as out:
        out.writelines(ldif(n))
    # -q: no checks beyond the schema's, the fast path for a large import (50x faster).
    # Not -w: with -q, slapadd 2.5.13 aborts with "double free or corruption" in about
    # one run of four. syncprov finds the contextCSN itself when slapd starts.
    done = subprocess.run([_tool("slapadd"), "-F", str(server.config_dir), "-b", SUFFIX, "-q",
                           "-l", str(source)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "LC_ALL": "C"})
    if done.returncode != 0:
        raise RuntimeError(f"slapadd of {n} VMs failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    source.unlink()
    server.start()
    return server


def remove(server: Slapd) -> None:
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)
