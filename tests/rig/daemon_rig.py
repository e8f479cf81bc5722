"""The daemon as a process on the rig: its configuration file, notify socket and leaves.

Shared by tests/integration/test_daemon.py and test_daemon_recovery.py; the fixtures
(`rig_config`, `daemon`, `roots`) reach the tests through tests/conftest.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_directory_follow import add_leaf, read, request, wait_for
from tests.rig.daemon_config import write_daemon_config
from tests.rig.vm_entries import vm_ldif

__all__ = ["rig_config", "daemon", "roots"]

DATE = "20261122T030000Z"
MIB = 1024 * 1024
# What systemd would tell the daemon: removed so that it logs to stderr, not the journal.
_SYSTEMD_ENV = ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                "WATCHDOG_PID")


def write_config(path: Path, directory, libvirtd, state: Path, *, port=None, sleep=1,
                 attempts=1, max_steps=2, wrong_password=False) -> Path:
    """A configuration file for the rig: plain LDAP on loopback, password in a 0600 file."""
    password = directory.slapd.write_password_file(path.parent / "ldap.password")
    if wrong_password:
        password.write_text("not-the-password")
    return write_daemon_config(path, port=port or directory.slapd.port,
                               root_dn=directory.slapd.root_dn, password=password,
                               libvirt_uri=libvirtd.uri, state=state, sleep=sleep,
                               attempts=attempts, max_steps=max_steps)


class NotifySocket:
    """Receives sd_notify() datagrams as systemd's notify socket would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []  # (monotonic time, one line)

    def drain(self) -> list[str]:
        """Every line received so far."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return [line for _, line in self.received]
            now = time.monotonic()
            self.received.extend((now, line) for line in data.decode().splitlines())

    def wait_for(self, line: str, timeout: float) -> float:
        """Wait until `line` arrives; returns when it did (monotonic)."""
        wait_for(lambda: line in self.drain(), f"{line} on the notify socket", timeout)
        return next(t for t, got in self.received if got == line)

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    """`python -m provbackup run` in the foreground, its stderr in a file."""

    def __init__(self, tmp: Path, config: Path, *extra: str) -> None:
        self.log_path = tmp / "daemon.log"
        self.lock_file = tmp / "run" / "provbackup.lock"
        self.argv = [sys.executable, "-m", "provbackup", "run", "-c", str(config),
                     "--lock-file", str(self.lock_file), *extra]
        self.notify = NotifySocket(tmp / "notify.sock")
        self.env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        self.env["NOTIFY_SOCKET"] = str(self.notify.path)
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> "DaemonProcess":
        with open(self.log_path, "ab") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log, env=self.env)
        return self

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds from the start of the process to READY=1."""
        try:
            return self.notify.wait_for("READY=1", timeout) - self.started
        except AssertionError:
            raise AssertionError(f"no READY=1; exit {self.proc.poll()}; log:\n{self.log()}")

    def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took to exit."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - sent

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.notify.close()


@pytest.fixture
def rig_config(directory, libvirtd, tmp_path):
    """Factory: the rig's configuration file with some values changed."""
    def make(**overrides):
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        return write_config(tmp_path / "provbackup.conf", directory, libvirtd, state,
                            **overrides)
    return make


@pytest.fixture
def daemon(tmp_path, rig_config):
    """Factory: start the daemon process; it is killed after the test whatever happened."""
    started = []

    def make(*extra, config=None):
        process = DaemonProcess(tmp_path, config or rig_config(), *extra).start()
        started.append(process)
        return process
    yield make
    for process in started:
        process.kill()


@pytest.fixture
def roots(tmp_path):
    """The backup and retain roots of the test VMs."""
    for name in ("backup", "retain"):
        (tmp_path / name).mkdir()
    return tmp_path / "backup", tmp_path / "retain"


def add_vm(directory, name, disks, roots, extra_config=""):
    """The VM's entries as the control instance writes them, and its backup leaf."""
    directory.slapd.add_ldif(vm_ldif(name, disks, backup_root=roots[0], retain_root=roots[1],
                                     extra_config=extra_config))
    return add_leaf(directory, name, ou=DATE)


def answered(directory, dn):
    """Whether the daemon has answered the request on `dn` (state is a timestamp)."""
    return read(directory, dn)["sstProvisioningState"] != ["0"]


def run_step(directory, dn, verb, completion, timeout=120):
    """Request a step as the broker does and check the complete answer."""
    request(directory, dn, verb)
    wait_for(lambda: answered(directory, dn), f"the answer to {verb}", timeout)
    attrs = read(directory, dn)
    assert (attrs["sstProvisioningMode"], attrs["sstProvisioningReturnValue"]) == \
        ([completion], [0]), attrs
    return attrs


def slow_disk(path: Path, data_mib: int) -> Path:
    """A 64 MiB qcow2 holding `data_mib` MiB of random data (above pbrec's records)."""
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as handle:
        handle.truncate(64 * MIB)
        handle.seek(16 * MIB)
        handle.write(os.urandom(data_mib * MIB))
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(path)], check=True, timeout=60)
    raw.unlink()
    return path


def journal_phase(state: Path, vm: str) -> str | None:
    """The phase in the per-VM journal of the daemon, or None without one."""
    try:
        return json.loads((state / "jobs" / f"{vm}.json").read_text())["phase"]
    except (FileNotFoundError, ValueError):
        return None  # absent, or caught between write and rename
