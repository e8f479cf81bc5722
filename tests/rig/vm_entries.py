"""The directory entries of a rig guest, as a stoney control instance would create them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tests.rig.ldap_fixtures import SERVICE_DN

POOL = "dad483bd-f35b-453f-ab67-ea637526a216"  # the sample directory's pool


def vm_ldif(name: str, disks: Sequence[Path], *, backup_root: Path, retain_root: Path,
            node: str = "node-01", memory_mib: int = 256, extra_config: str = "") -> str:
    """LDIF for a VM `name` on `node` with file disks vda, vdb, ... and its own backup config.

    The configuration keeps every file root:root so that tests run without the
    stoney `vm-storage` group.
    """
    vm_dn = f"sstVirtualMachine={name},ou=virtual machines,{SERVICE_DN}"
    blocks = [f"""dn: {vm_dn}
objectClass: top
objectClass: sstVirtualizationVirtualMachine
objectClass: sstRelationship
sstVirtualMachine: {name}
sstDisplayName: {name}
sstNode: {node}
sstVirtualMachinePool: {POOL}
sstVirtualMachineType: persistent
sstType: kvm
sstStatus: running
sstMemory: {memory_mib * 1024 * 1024}
sstVCPU: 1
sstClockOffset: utc
sstOnCrash: destroy
sstOnPowerOff: destroy
sstOnReboot: restart
sstOSArchitecture: x86_64
sstOSBootDevice: hd
sstOSMachine: pc
sstOSType: hvm
sstBelongsToResellerUID: 4000000
sstBelongsToCustomerUID: 4000001
""", f"""dn: ou=devices,{vm_dn}
objectClass: top
objectClass: organizationalUnit
ou: devices
"""]
    for i, disk in enumerate(disks):
        target = f"vd{chr(97 + i)}"
        blocks.append(f"""dn: sstDisk={target},ou=devices,{vm_dn}
objectClass: top
objectClass: sstVirtualizationVirtualMachineDisk
sstDisk: {target}
sstDevice: disk
sstType: file
sstSourceFile: {disk}
sstTargetBus: virtio
sstDriverName: qemu
sstDriverType: qcow2
""")
    blocks.append(f"""dn: ou=backup,{vm_dn}
objectClass: top
objectClass: organizationalUnit
objectClass: sstVirtualizationBackupObjectClass
ou: backup
sstBackupRootDirectory: file://{backup_root}
sstBackupRetainDirectory: file://{retain_root}
sstBackupNumberOfIterations: 3
sstVirtualizationDiskImageOwner: root
sstVirtualizationDiskImageGroup: root
sstVirtualizationDiskImagePermission: 640
sstVirtualizationDiskImageDirectoryOwner: root
sstVirtualizationDiskImageDirectoryGroup: root
sstVirtualizationDiskImageDirectoryPermission: 750
{extra_config}""")
    return "\n".join(blocks)
