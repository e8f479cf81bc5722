"""One provbackup per node: an flock()ed file in the runtime directory that holds our pid.

Two daemons on one node would both lock requests and run steps of the same VMs; the
compare-and-set in LDAP keeps them from running one request twice, but not from
running a merge of a VM while the other runs its retain. So `run` takes this lock
first and a second instance stops with ALREADY_RUNNING, naming the pid that holds it.

The kernel releases the lock when the holder dies, however it dies, so a stale lock
needs no detection: whoever comes next simply gets it and writes its own pid over the
old one. flock() rather than fcntl(F_SETLK): a POSIX record lock is lost when the
process closes *any* descriptor of the file (reading the pid for a message would drop
it) and is not inherited by the child `--detach` forks; an flock() belongs to the open
file description, which the detached child keeps.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

DEFAULT_LOCK_FILE = Path("/run/provbackup/provbackup.lock")


class AlreadyRunningError(Exception):
    """Another provbackup holds the lock file."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"already running on this node ({holder}, lock file {path}); "
                         f"stop that one first")


class InstanceLock:
    """The node-wide lock; a context manager. `fileno()` stays open while held."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid, or raise AlreadyRunningError at once."""
        # /run/provbackup comes from RuntimeDirectory= under systemd; elsewhere we
        # create it (0755: the pid in it is no secret).
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunningError(self.path, read_pid(self.path)) from None
            raise
        self._fd = fd
        self.write_pid()

    def write_pid(self) -> None:
        """(Re)write our pid into the held file, e.g. after `--detach` forked."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not locked by this process")
        data = f"{os.getpid()}\n".encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Empty the file and drop the lock (the file stays: unlinking it would race)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # An empty file reads as "nobody" to a human; the next holder writes its pid.
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def fileno(self) -> int:
        """The locked descriptor, for DaemonContext(files_preserve=...)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not locked by this process")
        return self._fd

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_pid(path: Path) -> int | None:
    """The pid written in a lock or pid file, or None when absent or unreadable."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class PidFile:
    """`--pid-file` for init scripts: our pid, written atomically, removed at exit.

    Only informational: the InstanceLock is what keeps a second daemon out, so a pid
    file left behind by a crash never blocks a start (python-daemon's lockfile-based
    PID files would).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pid: int | None = None

    def __enter__(self) -> PidFile:
        self._pid = os.getpid()
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{self._pid}")
        temp.write_text(f"{self._pid}\n", encoding="ascii")
        os.replace(temp, self.path)
        return self

    def __exit__(self, *exc) -> None:
        # Another instance may have replaced it meanwhile (e.g. started by hand with
        # another lock file): only remove what is still ours.
        if self._pid is not None and read_pid(self.path) == self._pid:
            self.path.unlink(missing_ok=True)
