"""`make demo`: provbackup's main job end to end, on a private directory, libvirtd and guest.

Starts a slapd with the sample stoney directory, a private libvirtd and the tiny test
guest (which writes numbered records to its disk), runs `provbackup run` as a process,
then acts as the control instance: a backup (snapshot, merge, retain) and a restore
(unretainSmallFiles, unretainLargeFiles, destroy and undefine, restore), showing each
answer with ldapsearch and the backup files on disk. Everything is removed at the end.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import ldap3
import libvirt

from tests.rig import guest as guestlib
from tests.rig.daemon_rig import write_config
from tests.rig.ldap_fixtures import PROJECT_SCHEMA_FILES, SAMPLE_LDIF, SERVICE_DN, SUFFIX
from tests.rig.libvirtd import Libvirtd
from tests.rig.slapd import Slapd
from tests.rig.vm_entries import vm_ldif

VM = "demo-vm"
DATE = "20261122T030000Z"


def say(text: str) -> None:
    """A headline of the demo."""
    print(f"\n=== {text}", flush=True)


def ldapsearch(slapd: Slapd, password_file: Path, dn: str) -> None:
    """Show the leaf the way an operator would look at it."""
    subprocess.run(["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", slapd.ldap_uri,
                    "-D", slapd.root_dn, "-y", str(password_file), "-b", dn, "-s", "base",
                    "sstProvisioningMode", "sstProvisioningState",
                    "sstProvisioningReturnValue", "sstProvisioningExecutionTime"],
                   check=True, timeout=30)


def step(conn: ldap3.Connection, slapd: Slapd, password_file: Path, dn: str, verb: str) -> None:
    """Request one step as the control instance does and wait for the answer."""
    say(f"control instance requests {verb!r}")
    conn.modify(dn, {"sstProvisioningMode": [(ldap3.MODIFY_REPLACE, [verb])],
                     "sstProvisioningState": [(ldap3.MODIFY_REPLACE, ["0"])]})
    deadline = time.monotonic() + 300
    while True:
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["sstProvisioningState",
                                                                   "sstProvisioningReturnValue"])
        entry = conn.entries[0]
        if entry.sstProvisioningState.value != "0":
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"no answer to {verb} within 5 minutes")
        time.sleep(0.1)
    ldapsearch(slapd, password_file, dn)
    if entry.sstProvisioningReturnValue.value != 0:
        raise SystemExit(f"{verb} failed with {entry.sstProvisioningReturnValue.value}")


def main() -> int:
    """Run the demo; 0 when the backup and the restore both worked."""
    work = Path(tempfile.mkdtemp(prefix="provbackup-demo-", dir="/var/tmp"))
    slapd = libvirtd = daemon = None
    try:
        say(f"starting a private slapd, libvirtd and guest in {work}")
        slapd = Slapd(work / "slapd", PROJECT_SCHEMA_FILES, SUFFIX)
        slapd.add_ldif(SAMPLE_LDIF)
        libvirtd = Libvirtd(work / "libvirtd")
        libvirtd.start()
        artifacts = guestlib.build_guest()
        for name in ("images", "backup", "retain", "state"):
            (work / name).mkdir()
        disk = guestlib.make_disk(work / "images" / f"{VM}-vda.qcow2")
        console = work / "console.log"
        conn_virt = libvirt.open(libvirtd.uri)
        domain = conn_virt.defineXML(guestlib.domain_xml(VM, [disk], artifacts,
                                                         console_log=console))
        domain.create()
        guestlib.wait_for_records(console, 10, timeout=120)
        print(f"guest {VM} runs and writes records to {disk}")
        slapd.add_ldif(vm_ldif(VM, [disk], backup_root=work / "backup",
                               retain_root=work / "retain"))
        conn = slapd.connection()
        leaf = f"ou={DATE},ou=backup,sstVirtualMachine={VM},ou=virtual machines,{SERVICE_DN}"
        conn.add(leaf, ["top", "organizationalUnit", "sstProvisioning"], {
            "ou": DATE, "sstProvisioningMode": "initialized",
            "sstProvisioningState": "20261122T020000Z", "sstProvisioningExecutionDate": "0"})

        say("starting provbackup run (the daemon, as systemd would)")
        directory = types.SimpleNamespace(slapd=slapd)
        config = write_config(work / "provbackup.conf", directory, libvirtd, work / "state")
        password_file = work / "ldap.password"
        daemon = subprocess.Popen([sys.executable, "-m", "provbackup", "run", "-c", str(config),
                                   "--lock-file", str(work / "provbackup.lock")])
        for verb in ("snapshot", "merge", "retain"):
            step(conn, slapd, password_file, leaf, verb)
        backup = next((work / "backup").rglob(f"{VM}.sha256.{DATE}")).parent
        say(f"the backup directory {backup}")
        subprocess.run(["ls", "-l", str(backup)], check=True, timeout=30)
        subprocess.run(["sha256sum", "-c", f"{VM}.sha256.{DATE}"], cwd=backup, check=True,
                       timeout=120)
        records = guestlib.read_records(backup / f"{disk.name}.{DATE}")
        print(f"the backed-up disk holds records 1 to {records[-1].seq}; "
              f"the guest has written up to {guestlib.read_console(console)[-1][0]}")

        for verb in ("unretainSmallFiles", "unretainLargeFiles"):
            step(conn, slapd, password_file, leaf, verb)
        say("control instance destroys and undefines the VM")
        domain.destroy()
        domain.undefine()
        printed = len(guestlib.read_console(console))
        step(conn, slapd, password_file, leaf, "restore")
        time.sleep(1)
        resumed = [seq for seq, _ in guestlib.read_console(console)[printed:]]
        print(f"the restored guest carries on writing from record {resumed[0] if resumed else '?'}"
              f" (the backup ended at {records[-1].seq})")
        say("done: backup and restore worked; cleaning up")
        return 0
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        if libvirtd is not None:
            libvirtd.stop()
        if slapd is not None:
            slapd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
