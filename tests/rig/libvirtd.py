"""A private root libvirtd for tests, in its own mount namespace.

Debian 12 has only the monolithic libvirtd, and as root qemu:///session goes to
the system socket.  So each instance runs under ``unshare --mount`` with the
five libvirt directories bind-mounted from its work directory (see
../shared/docs/TEST-RIG.md).  Run as a script, this module is the small
supervisor inside the new namespace: it does the bind mounts, starts
libvirtd and reaps the QEMU processes libvirtd daemonizes (see
_supervise_in_namespace), so no shell string is ever built.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt

LIBVIRTD = "/usr/sbin/libvirtd"
QEMU = "/usr/bin/qemu-system-x86_64"
# (directory under the work dir, where libvirtd expects it)
BIND_MOUNTS = (
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
)
QEMU_CONF = """\
# Written by tests/rig/libvirtd.py: a private daemon without systemd,
# cgroups, virtlogd or a security driver (see TEST-RIG.md).
stdio_handler = "file"
security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
namespaces = [ ]
"""
LIBVIRTD_CONF = """\
# Written by tests/rig/libvirtd.py.  No polkit or dbus here: root only.
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class RigError(RuntimeError):
    """A step of the test rig failed; the message says which and why."""


def run(argv, *, timeout: float = 60.0, cwd=None, input=None, stdout=subprocess.PIPE,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run argv (never a shell) with a timeout; raise RigError carrying its stderr."""
    argv = [str(a) for a in argv]
    try:
        done = subprocess.run(argv, cwd=cwd, input=input, stdout=stdout,
                              stderr=subprocess.PIPE, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise RigError(f"{argv[0]} timed out after {timeout} s: {argv}") from e
    except OSError as e:
        raise RigError(f"cannot run {argv}: {e}") from e
    if check and done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        raise RigError(f"{argv} exited {done.returncode}: {stderr}")
    return done


def cache_root() -> Path:
    """The rig's cache directory, shared by test sessions (PROVBACKUP_TEST_CACHE)."""
    default = Path.home() / ".cache" / "provbackup-tests"
    return Path(os.environ.get("PROVBACKUP_TEST_CACHE", default))


def ensure_qemu_user() -> None:
    """Create the libvirt-qemu system user: libvirtd will not start without it."""
    try:
        pwd.getpwnam("libvirt-qemu")
        return
    except KeyError:
        pass
    added = run(["useradd", "--system", "--user-group", "--no-create-home", "libvirt-qemu"],
                check=False)
    try:
        pwd.getpwnam("libvirt-qemu")  # a parallel session may have added it first
    except KeyError:
        raise RigError(f"useradd libvirt-qemu failed: {added.stderr.decode().strip()}") from None


def _caps_seed_dir() -> Path:
    """Where a probed QEMU capability cache is kept for these exact binaries."""
    key = hashlib.sha256()
    for path in (LIBVIRTD, QEMU):
        st = os.stat(path)
        key.update(f"{path} {st.st_size} {st.st_mtime_ns}\n".encode())
    key.update(os.uname().release.encode())
    return cache_root() / f"libvirt-qemu-caps-{key.hexdigest()[:16]}"


def _alive(pid: int, mntns: str | None) -> bool:
    """True while pid runs (a zombie counts as gone), in mntns if one is given."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):
            return False
        return mntns is None or os.readlink(f"/proc/{pid}/ns/mnt") == mntns
    except (OSError, IndexError):
        return False


class Libvirtd:
    """One private libvirtd with its own config, state, sockets and logs."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self._proc: subprocess.Popen | None = None  # the supervisor
        self._daemon_pid: int | None = None
        self._mntns: str | None = None

    @property
    def uri(self) -> str:
        """The libvirt URI of this instance."""
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def socket(self) -> Path:
        """The read-write socket, as seen from the host."""
        return self.workdir / "run" / "libvirt-sock"

    @property
    def pid(self) -> int | None:
        """libvirtd's own pid while it runs (its supervisor is its parent)."""
        return self._daemon_pid if self._proc else None

    @property
    def log(self) -> Path:
        """libvirtd's own log file."""
        return self.workdir / "log" / "libvirtd.log"

    def domain_log(self, name: str) -> Path:
        """The QEMU log (command line, stderr) of domain `name`."""
        return self.workdir / "log" / "qemu" / f"{name}.log"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the daemon and return once its socket answers."""
        if self._proc is not None:
            raise RigError(f"libvirtd in {self.workdir} is already running")
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise RigError(f"socket path too long for AF_UNIX: {self.socket}")
        ensure_qemu_user()
        self._prepare()
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                sys.executable, "-I", __file__]
        for sub, target in BIND_MOUNTS:
            # The mount points must exist on the host; empty directories at
            # libvirt's usual places (only libvirt-daemon-system makes them).
            os.makedirs(target, exist_ok=True)
            argv += [str(self.workdir / sub), target]
        argv += ["--", LIBVIRTD, "--pid-file", "/run/libvirt/libvirtd.pid"]
        with open(self.workdir / "log" / "libvirtd.stderr", "ab") as out:
            # Own session: a Ctrl-C at the terminal must not reach the daemon
            # before stop() has killed its guests.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          env={**os.environ, "LC_ALL": "C"})
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Kill this instance's QEMU processes, then the daemon; safe to call twice."""
        if self._proc is None:
            return
        if self._mntns is None and self._proc.poll() is None:
            self._mntns = self._private_namespace()  # stop() during start()
        try:
            # Guests first, while the supervisor still reaps them and libvirtd
            # can notice they are gone.
            self._kill_namespace(timeout, keep={self._proc.pid, self._daemon_pid})
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)  # forwarded to libvirtd
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout)
            # Whatever is left: a hung libvirtd, a guest started meanwhile.
            self._kill_namespace(timeout)
        finally:
            self._proc = None
            self._daemon_pid = None
            self._mntns = None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of libvirtd's log and stderr, for error messages."""
        parts = []
        for path in (self.log, self.workdir / "log" / "libvirtd.stderr"):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(parts) or "(no log written)"

    def __enter__(self) -> Libvirtd:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _prepare(self) -> None:
        """Create the private directories and config, seeded with probed QEMU caps."""
        for sub, _ in BIND_MOUNTS:
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "etc" / "qemu.conf").write_text(QEMU_CONF)
        (self.workdir / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        seed, caps = _caps_seed_dir(), self.workdir / "cache" / "qemu"
        if seed.is_dir() and not caps.exists():
            shutil.copytree(seed, caps, symlinks=True)

    def _wait_ready(self, timeout: float) -> None:
        """Poll until the socket answers and the QEMU capabilities are known."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RigError(f"libvirtd exited {self._proc.returncode} while starting:\n"
                               f"{self.log_tail()}")
            if self.socket.exists():
                try:
                    conn = libvirt.open(self.uri)
                except libvirt.libvirtError:
                    conn = None
                if conn is not None:
                    try:
                        # Forces the QEMU probe now (0.6 s when not seeded), so
                        # the first test does not pay for it.
                        conn.getDomainCapabilities(QEMU, "x86_64", None, "qemu")
                    finally:
                        conn.close()
                    break
            if time.monotonic() > deadline:
                raise RigError(f"libvirtd did not answer on {self.socket} within "
                               f"{timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)
        self._mntns = self._private_namespace()
        if self._mntns is None:
            raise RigError("libvirtd runs in the host's mount namespace; unshare failed")
        self._daemon_pid = int((self.workdir / "run" / "libvirtd.pid").read_text())
        self._save_caps_seed()

    def _save_caps_seed(self) -> None:
        """Keep the first probe's capability cache for later instances."""
        seed, caps = _caps_seed_dir(), self.workdir / "cache" / "qemu"
        if seed.exists() or not any(caps.glob("capabilities/*.xml")):
            return
        seed.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".caps-", dir=seed.parent))
        try:
            shutil.copytree(caps, tmp / "qemu", symlinks=True)
            os.rename(tmp / "qemu", seed)
        except OSError:
            pass  # another session saved it first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _private_namespace(self) -> str | None:
        """The supervisor's mount namespace, None while it is still the host's."""
        try:
            ns = os.readlink(f"/proc/{self._proc.pid}/ns/mnt")
        except OSError:
            return None
        return None if ns == os.readlink("/proc/self/ns/mnt") else ns

    def _kill_namespace(self, timeout: float, keep: set = frozenset()) -> None:
        """SIGKILL the processes in our mount namespace but `keep`; wait until gone."""
        if self._mntns is None:
            return  # never got that far: only the supervisor ran
        # Every process libvirtd started inherited its namespace, so this finds
        # all QEMU processes, even ones whose pid file is already gone.
        pids = {int(e) for e in os.listdir("/proc")
                if e.isdigit() and _alive(int(e), self._mntns)} - set(keep)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(_alive(pid, self._mntns) for pid in pids):
            if time.monotonic() > deadline:
                raise RigError(f"processes {sorted(pids)} of {self.workdir} survived SIGKILL")
            time.sleep(0.02)


def _supervise_in_namespace(args: list[str]) -> None:
    """Supervisor side: bind-mount SRC DST pairs, run the command after '--',
    forward signals to it, reap orphans, and exit with its status."""
    split = args.index("--")
    pairs, command = args[:split], args[split + 1:]
    for src, dst in zip(pairs[0::2], pairs[1::2]):
        run(["mount", "--bind", src, dst], timeout=10)
    # libvirtd daemonizes each QEMU, so it is re-parented to init.  Until init
    # reaps it, libvirt sees it alive and keeps waiting: in this sandbox about
    # 1 s per destroy and 3-4 s for the capability probe; where init never
    # reaps, 15 s and an error.  As a subreaper we get those orphans and reap
    # them at once.
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    forwarded = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    # Blocked across the fork, so a stop() that comes early is forwarded too.
    signal.pthread_sigmask(signal.SIG_BLOCK, forwarded)
    child = os.fork()
    if child == 0:
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, forwarded)
            os.execv(command[0], command)
        finally:
            os._exit(127)

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass  # already exited; os.wait() below returns it

    for signum in forwarded:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, forwarded)
    while True:
        pid, status = os.wait()
        if pid == child:
            sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    _supervise_in_namespace(sys.argv[1:])
