"""One provbackup per node: the lock file, its pid, stale locks; the pid file (issue 6)."""

import os
import subprocess
import sys
import textwrap

import pytest

from provbackup.locking import AlreadyRunningError, InstanceLock, PidFile, read_pid

HOLDER = textwrap.dedent("""
    import sys, time
    from provbackup.locking import InstanceLock
    lock = InstanceLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock at tmp_path/run/provbackup.lock."""
    path = tmp_path / "run" / "provbackup.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "locked\n"
        yield proc, path
    finally:
        proc.kill()
        proc.wait(10)


def test_the_lock_file_holds_our_pid_while_locked(tmp_path):
    """Acquiring creates the directory and writes our pid; releasing empties the file."""
    path = tmp_path / "run" / "provbackup" / "provbackup.lock"
    with InstanceLock(path):
        assert read_pid(path) == os.getpid()
    assert path.read_text() == ""


def test_a_second_instance_fails_naming_the_running_one(holder):
    """While another process holds the lock, acquire fails at once with its pid."""
    proc, path = holder
    with pytest.raises(AlreadyRunningError) as caught:
        InstanceLock(path).acquire()
    assert caught.value.pid == proc.pid
    assert f"already running on this node (pid {proc.pid}, lock file {path})" \
        in str(caught.value)


def test_a_stale_lock_is_taken_over(holder):
    """When the holder dies (even by SIGKILL) the next instance gets the lock and its pid."""
    proc, path = holder
    proc.kill()
    proc.wait(10)
    assert read_pid(path) == proc.pid  # the stale pid is still in the file
    with InstanceLock(path):
        assert read_pid(path) == os.getpid()


def test_a_left_over_file_with_a_dead_pid_does_not_block(tmp_path):
    """A lock file from a crashed run (a pid, nobody holding it) is simply reused."""
    path = tmp_path / "provbackup.lock"
    path.write_text("999999999\n")
    with InstanceLock(path):
        assert read_pid(path) == os.getpid()


def test_the_same_process_cannot_lock_twice(tmp_path):
    """flock() conflicts between two opens even in one process: no accidental second daemon."""
    path = tmp_path / "provbackup.lock"
    with InstanceLock(path):
        with pytest.raises(AlreadyRunningError) as caught:
            InstanceLock(path).acquire()
    assert caught.value.pid == os.getpid()


def test_the_lock_survives_in_a_child_after_the_parent_closes_its_copy(tmp_path):
    """As after --detach: a forked child keeps the lock when the parent's descriptor is gone."""
    path = tmp_path / "provbackup.lock"
    lock = InstanceLock(path)
    lock.acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             pass_fds=[lock.fileno()])
    try:
        os.close(lock.fileno())  # the parent's copy only, as os._exit() in the parent would
        lock._fd = None
        with pytest.raises(AlreadyRunningError):
            InstanceLock(path).acquire()
    finally:
        child.kill()
        child.wait(10)
    with InstanceLock(path):
        pass


def test_pid_file_is_written_and_removed(tmp_path):
    """--pid-file holds our pid while running and is gone afterwards."""
    path = tmp_path / "run" / "provbackup.pid"
    with PidFile(path):
        assert read_pid(path) == os.getpid()
    assert not path.exists()


def test_pid_file_of_someone_else_is_left_alone(tmp_path):
    """At exit a pid file that another process has replaced is not removed."""
    path = tmp_path / "provbackup.pid"
    with PidFile(path):
        path.write_text("12345\n")
    assert path.read_text() == "12345\n"


@pytest.mark.parametrize("text", ["", "abc", "12 34"])
def test_read_pid_of_garbage_is_none(tmp_path, text):
    """An empty or garbled file has no pid (the message then says 'pid unknown')."""
    path = tmp_path / "x.lock"
    path.write_text(text)
    assert read_pid(path) is None
    assert "pid unknown" in str(AlreadyRunningError(path, read_pid(path)))
