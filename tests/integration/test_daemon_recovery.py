"""SIGKILL of the daemon inside each step, then a restart: nothing is lost (issue 6).

After the restart every leaf ends answered or completed, the guest runs on its own
image, and no working directory or journal is left once the sequence is over.
"""

import signal

import pytest

from provbackup.hypervisor.libvirt import LibvirtHypervisor
from tests.rig.daemon_rig import (DATE, DaemonProcess, add_vm, answered, journal_phase,
                                  run_step, slow_disk)
from tests.integration.test_directory_follow import read, request, wait_for

pytestmark = pytest.mark.integration

BACKUP = (("snapshot", "snapshotted"), ("merge", "merged"), ("retain", "retained"))
RESTORE = (("unretainSmallFiles", "unretainedSmallFiles"),
           ("unretainLargeFiles", "unretainedLargeFiles"), ("restore", "restored"))


def killed_inside(process, directory, dn, verb, state, vm, roots):
    """Request `verb` and SIGKILL the daemon while it works on it."""
    request(directory, dn, verb)
    if verb == "merge":  # slow (1 MiB/s): kill while the image is being copied
        wait_for(lambda: any(".provbackup-tmp-" in p.name for p in roots[0].rglob(".*")),
                 "the copy to start", 60)
    elif verb in ("snapshot", "retain"):
        # These are quick: the kill lands inside the step or, at worst, just after it.
        phase = {"snapshot": "snapshotting", "retain": "retaining"}[verb]
        wait_for(lambda: journal_phase(state, vm) == phase or answered(directory, dn),
                 f"the {verb} to start", 60)
    else:
        wait_for(lambda: read(directory, dn)["sstProvisioningMode"] == ["restoring"],
                 "the restore to be locked", 60)
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait(10)


@pytest.mark.parametrize("victim", ["snapshot", "merge", "retain", "restore"])
def test_sigkill_inside_a_step_then_restart(victim, directory, libvirtd, rig_config, make_guest,
                                            roots, tmp_path):
    """Killed inside `victim`, restarted: the leaf is answered and the VM is safe."""
    disk = slow_disk(tmp_path / "vm-vda.qcow2", 4)
    guest = make_guest(disks=[disk])
    dn = add_vm(directory, guest.name, guest.disks, roots,
                extra_config="sstVirtualizationBandwidthMerge: 1\n")
    config = rig_config()
    state = tmp_path / "state"
    processes = []

    def start(name):
        (tmp_path / name).mkdir()
        process = DaemonProcess(tmp_path / name, config).start()
        processes.append(process)
        process.wait_ready()
        return process

    try:
        process = start("first")
        guest.wait_for_records(5)
        sequence = list(BACKUP + RESTORE)
        for verb, completion in sequence:
            if verb == "restore":
                guest.domain.destroy()
                guest.domain.undefineFlags(0)
            if verb != victim:
                run_step(directory, dn, verb, completion, timeout=180)
                continue
            killed_inside(process, directory, dn, verb, state, guest.name, roots)
            process = start("second")
            wait_for(lambda: answered(directory, dn), f"the answer to {verb} after the restart",
                     180)
            attrs = read(directory, dn)
            if attrs["sstProvisioningReturnValue"] != [0]:
                # Only an interrupted snapshot is failed (rolled back, 5); then stop here.
                assert (verb, attrs["sstProvisioningReturnValue"]) == ("snapshot", [5]), attrs
                break
            assert attrs["sstProvisioningMode"] == [completion], attrs
        hv = LibvirtHypervisor(libvirtd.uri)
        domain = hv.domain(guest.name)
        hv.close()
        assert domain.state.name == "RUNNING"
        assert [(str(d.source), d.backing) for d in domain.disks] == [(str(disk), None)]
        assert not list(roots[1].rglob(DATE)), "a working directory was left"
        assert journal_phase(state, guest.name) is None
        log = processes[-1].log()
        assert "found in flight after a restart" in log or victim == "snapshot", log
        seq = guest.last_seq()
        guest.wait_for_records(seq + 3, timeout=60)
    finally:
        for process in processes:
            process.kill()
