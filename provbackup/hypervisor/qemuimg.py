"""qemu-img, and every other subprocess of the hypervisor package, run in one place.

`run` executes an argv list (never a shell) with a timeout; on a timeout the
whole process group is killed, so no half-finished qemu-img keeps an image
locked. Failures become provbackup errors carrying the command and qemu-img's
stderr, so the step that failed can say why without seeing CalledProcessError.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Sequence

from provbackup.errors import (CannotCreateEmptyDiskImageError, CannotMergeDiskImagesError,
                               CorruptDiskImageFoundError, MissingNecessaryFilesError,
                               StepError, UndefinedError)

log = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"
INFO_TIMEOUT = 30.0
CREATE_TIMEOUT = 60.0
# A commit or check reads and writes at least this fast even on a busy node; the
# timeouts below are proportional to the data at this rate, plus a fixed margin.
MIN_RATE = 20 * 1024 * 1024
MARGIN = 60.0
_STDERR_LIMIT = 2000

# qemu-img check's exit codes (qemu-img(1)).
CHECK_OK, CHECK_FAILED, CHECK_CORRUPT, CHECK_LEAKS, CHECK_UNSUPPORTED = 0, 1, 2, 3, 63


def run(argv: Sequence[str | os.PathLike], *, timeout: float, ok_codes=(0,),
        error: type[StepError] = UndefinedError) -> subprocess.CompletedProcess:
    """Run argv in its own process group; raise `error` unless it exits with an ok code.

    stdout and stderr are decoded text. The C locale keeps qemu-img's messages
    stable and English for the log and the directory.
    """
    argv = [os.fspath(a) for a in argv]
    command = " ".join(argv)
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as e:
        raise error(f"cannot run {command}: {e}") from e
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        raise error(f"{command} timed out after {timeout:.0f} s; "
                    f"stderr: {_tail(stderr)}") from e
    except BaseException:
        _kill_group(proc)  # e.g. KeyboardInterrupt: leave no orphan holding a lock
        proc.wait()
        raise
    done = subprocess.CompletedProcess(argv, proc.returncode,
                                       stdout.decode(errors="replace"),
                                       stderr.decode(errors="replace"))
    if done.returncode not in ok_codes:
        raise error(f"{command} exited with {done.returncode}: {_tail(stderr)}")
    return done


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
    except ProcessLookupError:
        pass


def _tail(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return text[-_STDERR_LIMIT:] if text else "(no message)"


def _format_args(fmt: str | None) -> list[str]:
    # Naming the format stops qemu-img from probing: a raw guest disk could
    # otherwise pose as a qcow2 image whose "backing file" is any host file.
    return ["-f", fmt] if fmt else []


def _require(path: Path) -> None:
    if not Path(path).exists():
        raise MissingNecessaryFilesError(f"{path} does not exist")


def info(path: Path, fmt: str | None = None, *,
         error: type[StepError] = UndefinedError) -> dict:
    """qemu-img's facts about one image (not its chain), readable while a VM uses it.

    Keys used here: `format`, `virtual-size`, `actual-size`, `backing-filename`
    and `full-backing-filename` (absolute) when the image has a backing file.
    MissingNecessaryFilesError (37) if the file is absent, else `error` on failure.
    """
    _require(path)
    done = run([QEMU_IMG, "info", "--output=json", "-U", *_format_args(fmt), path],
               timeout=INFO_TIMEOUT, error=error)
    try:
        return json.loads(done.stdout)
    except ValueError as e:
        raise error(f"qemu-img info {path}: unreadable output: {e}") from e


def backing_file(path: Path, fmt: str | None = None, *,
                 error: type[StepError] = UndefinedError) -> Path | None:
    """The absolute path of the image's backing file, or None."""
    facts = info(path, fmt, error=error)
    backing = facts.get("full-backing-filename") or facts.get("backing-filename")
    if not backing:
        return None
    # A relative backing name is relative to the image's own directory.
    return Path(path).parent / backing if not os.path.isabs(backing) else Path(backing)


def create_overlay(path: Path, backing: Path, backing_format: str) -> None:
    """Create a new qcow2 image at `path` on top of `backing` (CannotCreateEmptyDiskImageError).

    The path must not exist: an existing file may be someone's data.
    """
    if Path(path).exists():
        raise CannotCreateEmptyDiskImageError(f"{path} already exists")
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, path],
        timeout=CREATE_TIMEOUT, error=CannotCreateEmptyDiskImageError)


def commit(overlay: Path, bandwidth_mib: int = 0) -> None:
    """Write an unused overlay's data into its immediate backing file (offline).

    -d leaves the overlay as it is instead of emptying it: the caller deletes it,
    and if anything fails later the overlay still reads the same data, so the
    commit can simply be repeated. CannotMergeDiskImagesError (11) on failure,
    e.g. while a running QEMU holds the image (qemu-img's lock refuses).
    """
    facts = info(overlay, "qcow2", error=CannotMergeDiskImagesError)
    if not facts.get("backing-filename"):
        raise CannotMergeDiskImagesError(f"{overlay} has no backing file to commit into")
    rate = ["-r", f"{bandwidth_mib}M"] if bandwidth_mib > 0 else []
    speed = bandwidth_mib * 1024 * 1024 if bandwidth_mib > 0 else MIN_RATE
    timeout = MARGIN + 2 * int(facts.get("actual-size", 0)) / min(speed, MIN_RATE)
    run([QEMU_IMG, "commit", "-q", "-d", "-f", "qcow2", *rate, overlay],
        timeout=timeout, error=CannotMergeDiskImagesError)


def check(path: Path, fmt: str | None = None) -> None:
    """Raise CorruptDiskImageFoundError (38) unless qemu-img check finds the image sound.

    What counts as damage: corruptions (exit 2) and a check that could not run
    to the end (exit 1: unreadable metadata, truncated file, not an image of the
    format). Leaked clusters alone (exit 3) are space that no guest data uses,
    left by an interrupted write: the data is intact, so they are only logged.
    Formats without consistency checks (raw, exit 63) pass. A missing file is
    MissingNecessaryFilesError (37). Run it only on images no VM has open: the
    write lock qemu-img takes fails on an image in use (reported as 38).
    """
    _require(path)
    size = Path(path).stat().st_size
    done = run([QEMU_IMG, "check", *_format_args(fmt), path],
               timeout=MARGIN + 2 * size / MIN_RATE,
               ok_codes=(CHECK_OK, CHECK_FAILED, CHECK_CORRUPT, CHECK_LEAKS, CHECK_UNSUPPORTED),
               error=CorruptDiskImageFoundError)
    if done.returncode in (CHECK_CORRUPT, CHECK_FAILED):
        message = " ".join((done.stderr.strip() + " " + done.stdout.strip()).split())
        raise CorruptDiskImageFoundError(
            f"qemu-img check {path} exited with {done.returncode}: "
            f"{message[-_STDERR_LIMIT:] or '(no message)'}")
    if done.returncode == CHECK_LEAKS:
        log.warning("%s has leaked clusters (wasted space, data intact): %s",
                    path, " ".join(done.stdout.split())[-300:])
