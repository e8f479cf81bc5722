"""`provbackup run` as a process on the rig's slapd and libvirtd, driven through LDAP (issue 6).

The daemon is started exactly as systemd starts it (`python -m provbackup run -c FILE`
in the foreground) with NOTIFY_SOCKET pointing at a socket of the test, so READY=1,
STOPPING=1 and the STATUS= lines are checked as systemd would receive them.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from provbackup.exitcodes import ExitCode
from tests.integration.test_directory_follow import read, request, wait_for
from tests.rig.daemon_rig import (DATE, add_vm, answered, journal_phase, run_step,
                                  slow_disk)
from tests.rig.guest import read_records

pytestmark = pytest.mark.integration

def test_backup_and_restore_purely_through_ldap(directory, daemon, make_guest, roots):
    """The broker's backup and restore sequences on a leaf, answered by the daemon process."""
    guest = make_guest()
    dn = add_vm(directory, guest.name, guest.disks, roots)
    process = daemon()
    ready = process.wait_ready()
    guest.wait_for_records(10)
    for verb, completion in (("snapshot", "snapshotted"), ("merge", "merged"),
                             ("retain", "retained")):
        run_step(directory, dn, verb, completion)
    backups = list(roots[0].rglob(f"{guest.disks[0].name}.{DATE}"))
    assert len(backups) == 1
    seqs = [r.seq for r in read_records(backups[0])]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 10
    run_step(directory, dn, "unretainSmallFiles", "unretainedSmallFiles")
    run_step(directory, dn, "unretainLargeFiles", "unretainedLargeFiles")
    guest.domain.destroy()  # what the broker does before it requests restore
    guest.domain.undefineFlags(0)
    attrs = run_step(directory, dn, "restore", "restored")
    assert any(t.startswith("restore: ") for t in attrs["sstProvisioningExecutionTime"])
    seq = guest.last_seq()
    guest.wait_for_records(seq + 3, timeout=60)  # the restored guest runs on
    code, took = process.terminate()
    log = process.log()
    assert code == ExitCode.OK, log
    assert f"{guest.name} {DATE} restore: done in" in log
    print(f"\nstart to READY=1: {ready:.2f} s; SIGTERM to exit (idle): {took:.2f} s")


def test_one_instance_per_node_and_a_clean_stop(daemon, rig_config):
    """A second instance exits 75 naming the first; SIGTERM: STOPPING=1, exit 0, lock free."""
    first = daemon()
    ready = first.wait_ready()
    second = subprocess.run(first.argv, env=first.env, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == ExitCode.ALREADY_RUNNING, second.stderr
    assert f"provbackup: already running on this node (pid {first.proc.pid}, lock file " \
           f"{first.lock_file})" in second.stderr
    assert "Traceback" not in second.stderr
    status = [line for line in first.notify.drain() if line.startswith("STATUS=following")]
    assert status and status[-1] == "STATUS=following the directory; 0 steps running, 0 queued"
    code, took = first.terminate(timeout=15)
    assert code == ExitCode.OK, first.log()
    assert "STOPPING=1" in first.notify.drain()
    assert took < 5, f"SIGTERM to exit took {took:.1f} s"
    assert first.lock_file.read_text() == ""  # released, so the next start gets it
    assert "SIGTERM received; stopping" in first.log()
    print(f"\nstart to READY=1: {ready:.2f} s; SIGTERM to exit (idle): {took:.2f} s")


def test_an_unreachable_directory_at_start_exits_69(daemon, rig_config, directory):
    """With nothing listening on the LDAP port the daemon retries ATTEMPTS times, then exits 69."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = daemon(config=rig_config(port=port, sleep=1, attempts=1))
    code = process.proc.wait(60)
    log = process.log()
    assert code == ExitCode.UNAVAILABLE, log
    assert f"cannot reach the directory at ldap://127.0.0.1:{port} after 2 attempts" in log
    assert "READY=1" not in process.notify.drain()


def test_a_refused_bind_at_start_exits_69_at_once(daemon, rig_config):
    """Wrong credentials are not retried at start (waiting cannot fix them): 69 at once."""
    process = daemon(config=rig_config(wrong_password=True, sleep=30, attempts=3))
    code = process.proc.wait(30)
    log = process.log()
    assert code == ExitCode.UNAVAILABLE, log
    assert "the server refused the bind DN or password" in log
    assert "not-the-password" not in log


def test_detach_leaves_a_background_daemon_with_pid_file_and_lock(daemon, tmp_path):
    """--detach: the command returns 0, the daemon runs on with its pid in both files and
    logs to the stderr it was given; SIGTERM stops it and removes the pid file."""
    pid_file = tmp_path / "provbackup.pid"
    process = daemon("--detach", "--pid-file", str(pid_file))
    assert process.proc.wait(30) == ExitCode.OK, process.log()
    process.wait_ready()
    pid = int(pid_file.read_text())
    try:
        assert pid != process.proc.pid
        assert int(process.lock_file.read_text()) == pid
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the detached daemon to exit", 15)
    finally:
        if Path(f"/proc/{pid}").exists():  # not our child: the fixture cannot stop it
            os.kill(pid, signal.SIGKILL)
    assert not pid_file.exists()
    assert "ready after" in process.log() and "provbackup.daemon: stopped\n" in process.log()


def test_two_vms_run_in_parallel_a_third_is_locked_at_once_and_sigterm_waits(
        directory, daemon, make_guest, roots, tmp_path, rig_config):
    """Two merges run at once; a third VM's request is locked while both still copy; SIGTERM
    lets both merges finish and answer, and leaves the third request locked, not started.

    The lock's latency is printed, not asserted (no timed assertions): what must hold is
    that it does not wait for a worker, i.e. it happens while both merges still run.
    """
    # 4 MiB of data at 1 MiB/s: each merge copies for about 4 s, on any machine.
    guests = [make_guest([slow_disk(tmp_path / f"slow-{n}.qcow2", 4)]) for n in (1, 2)]
    dns = [add_vm(directory, g.name, g.disks, roots, "sstVirtualizationBandwidthMerge: 1\n")
           for g in guests]
    # The third VM only needs to exist in the directory: its step must not start.
    third = "pb-daemon-third-vm"
    third_dn = add_vm(directory, third, [tmp_path / "third.qcow2"], roots)
    state = tmp_path / "state"
    process = daemon(config=rig_config(max_steps=2))
    process.wait_ready()
    for dn in dns:
        request(directory, dn, "snapshot")
    for dn in dns:
        wait_for(lambda: answered(directory, dn), "the snapshots", 120)
        assert read(directory, dn)["sstProvisioningReturnValue"] == [0]
    for dn in dns:
        request(directory, dn, "merge")
    wait_for(lambda: all(journal_phase(state, g.name) == "merging" for g in guests),
             "both merges running at once", 30)
    asked = time.monotonic()
    request(directory, third_dn, "snapshot")
    wait_for(lambda: read(directory, third_dn)["sstProvisioningMode"] == ["snapshotting"],
             "the third VM's lock", 5)
    locked_after = time.monotonic() - asked
    assert all(journal_phase(state, g.name) == "merging" for g in guests), \
        "a merge ended before the third VM was locked: the lock waited for a worker"
    wait_for(lambda: any(line.startswith("STATUS=following the directory; 2 steps running (")
                         and line.endswith(", 1 queued") for line in process.notify.drain()),
             "STATUS= with two steps running and one queued", 3)
    code, took = process.terminate(timeout=60)
    log = process.log()
    assert code == ExitCode.OK, log
    for g, dn in zip(guests, dns):
        attrs = read(directory, dn)
        assert (attrs["sstProvisioningMode"], attrs["sstProvisioningReturnValue"]) == \
            (["merged"], [0]), attrs
        assert f"{g.name} {DATE} merge" in log.split("waiting up to")[1].splitlines()[0]
    attrs = read(directory, third_dn)
    assert (attrs["sstProvisioningMode"], attrs["sstProvisioningState"]) == \
        (["snapshotting"], ["0"]), attrs
    assert f"{third} {DATE} snapshot: locked but not started; left locked" in log
    print(f"\nthird VM locked after {locked_after:.2f} s; SIGTERM to exit with two "
          f"merges running: {took:.2f} s")


def test_the_stop_timeout_abandons_a_step_that_runs_too_long(
        directory, daemon, make_guest, roots, tmp_path, rig_config):
    """With --stop-timeout 1 a long merge is abandoned: exit 0 soon, the step named in the log."""
    guest = make_guest([slow_disk(tmp_path / "slow.qcow2", 8)])
    dn = add_vm(directory, guest.name, guest.disks, roots, "sstVirtualizationBandwidthMerge: 1\n")
    process = daemon("--stop-timeout", "1")
    process.wait_ready()
    run_step(directory, dn, "snapshot", "snapshotted")
    request(directory, dn, "merge")
    wait_for(lambda: journal_phase(tmp_path / "state", guest.name) == "merging", "the merge", 30)
    code, took = process.terminate(timeout=30)
    log = process.log()
    assert code == ExitCode.OK, log
    assert took < 4, f"SIGTERM to exit took {took:.1f} s with a 1 s stop timeout"
    assert f"stop timeout of 1 s over; abandoning {guest.name} {DATE} merge" in log
    # Not answered: the journal says MERGING, for the recovery at the next start.
    attrs = read(directory, dn)
    assert (attrs["sstProvisioningMode"], attrs["sstProvisioningState"]) == \
        (["merging"], ["0"]), attrs
    assert journal_phase(tmp_path / "state", guest.name) == "merging"
    print(f"\nSIGTERM to exit with --stop-timeout 1 and a merge running: {took:.2f} s")


def test_request_waiting_at_start_is_run_not_recovered(directory, daemon, make_guest, roots):
    """A request written while no daemon ran is run once at start, never taken for a crash."""
    guest = make_guest()
    dn = add_vm(directory, guest.name, guest.disks, roots)
    request(directory, dn, "snapshot")
    process = daemon()
    process.wait_ready()
    wait_for(lambda: answered(directory, dn), "the answer to the waiting snapshot", 120)
    attrs = read(directory, dn)
    assert (attrs["sstProvisioningMode"], attrs["sstProvisioningReturnValue"]) == \
        (["snapshotted"], [0]), process.log()
    assert "found in flight" not in process.log()
    run_step(directory, dn, "merge", "merged")
