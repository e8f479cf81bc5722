"""Everything provbackup does with backup files and directories (CONTRACT.md sections 4-6).

Paths of an iteration, the space check, roots and directories with the configured
owner, group and mode, atomic publication, the checksum manifest and removal. The
copy itself is in `provbackup.workflow.copying` and re-exported here. Every failure
is the StepError of the contract's table, with the path and the system's reason.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import grp
import os
import pwd
import re
import shutil
import stat
from pathlib import Path, PurePosixPath
from typing import Callable

from provbackup import errors
# the copy's API is re-exported: steps need only this module
from provbackup.workflow.copying import (NO_SPACE_ERRNOS, TEMP_MARKER, CopyResult, TokenBucket,
                                         file_sha256, sparse_copy, temp_path)

#: the prefix the original daemon strips from the first disk's path (section 4)
VIRTUALIZATION_ROOT = PurePosixPath("/var/virtualization")
#: section 6: the space needed is the data plus 5 %
SPACE_MARGIN_PERCENT = 105


def _bad_name(value: str) -> bool:
    """A path component we will not build from: empty, `.`/`..`, a slash or a control character."""
    return (value in ("", ".", "..") or "/" in value
            or any(ord(c) < 0x20 or c == "\x7f" for c in value))


def intermediate_path(first_disk: PurePosixPath | str, vm: str,
                      backup_date: str) -> PurePosixPath:
    """`<disk dir without /var/virtualization/>/<vm>/<date>` (section 4); bad input is 39."""
    disk = PurePosixPath(first_disk)
    if not disk.is_absolute():
        raise errors.UnsupportedConfigurationParameterError(
            f"disk path {str(first_disk)!r} is not absolute")
    parts = disk.parts[1:]  # without the root, which may be '/' or '//'
    if ".." in parts:
        raise errors.UnsupportedConfigurationParameterError(
            f"disk path {str(first_disk)!r} has a '..' component")
    if not parts:
        raise errors.UnsupportedConfigurationParameterError(
            f"disk path {str(first_disk)!r} has no file name")
    if any(_bad_name(p) for p in parts):
        raise errors.UnsupportedConfigurationParameterError(
            f"disk path {str(first_disk)!r} has a component with a control character")
    for what, value in (("VM name", vm), ("backup date", backup_date)):
        if _bad_name(value):
            raise errors.UnsupportedConfigurationParameterError(
                f"{what} {value!r} cannot be a directory name")
    prefix = VIRTUALIZATION_ROOT.parts[1:]
    if parts[:len(prefix)] == prefix:
        parts = parts[len(prefix):]
    # outside /var/virtualization the disk's directory is used as it is, minus the '/'
    return PurePosixPath(*parts[:-1], vm, backup_date)


# --- space (section 6) ---------------------------------------------------------------

def space_needed(allocated_bytes: int, memory_bytes: int) -> int:
    """ceil((allocated + memory) x 1.05), in exact integer arithmetic."""
    if allocated_bytes < 0 or memory_bytes < 0:
        raise ValueError(f"negative sizes: {allocated_bytes}, {memory_bytes}")
    return -(-(allocated_bytes + memory_bytes) * SPACE_MARGIN_PERCENT // 100)


def _nearest_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def check_space(directory: Path, needed: int, *,
                statvfs: Callable[[Path], os.statvfs_result] = os.statvfs) -> int:
    """Raise 47 if the filesystem of `directory` has less than `needed` bytes free, 48 if unknown.

    A directory that does not exist yet is measured on its nearest existing
    ancestor: that is the filesystem it will be created on (a mount point must
    exist). Returns the free bytes.
    """
    directory = Path(directory)
    where = _nearest_existing(directory)
    try:
        info = statvfs(where)
    except OSError as e:
        raise errors.NoDiskSpaceInformationError(
            f"statvfs({where}) for {directory} failed: {e.strerror or e}; "
            f"{needed} bytes needed") from e
    # f_bavail, not f_bfree: the blocks reserved for root are not for backups
    free = info.f_bavail * (info.f_frsize or info.f_bsize)
    if info.f_blocks == 0 and free == 0:
        raise errors.NoDiskSpaceInformationError(
            f"the filesystem of {where} reports no size; {needed} bytes needed")
    if free < needed:
        raise errors.NotEnoughDiskSpaceError(
            f"{directory}: {needed} bytes needed, {free} bytes free on the filesystem "
            f"of {where} (short by {needed - free})")
    return free


# --- roots and directories (section 4) -----------------------------------------------

def require_root(path: Path, error_cls: type[errors.StepError]) -> None:
    """Raise `error_cls` (25 retain, 26 backup) unless `path` is an existing directory."""
    try:
        info = os.stat(path)
    except OSError as e:
        raise error_cls(f"{path}: {e.strerror}") from e
    if not stat.S_ISDIR(info.st_mode):
        raise error_cls(f"{path} is not a directory")


def check_writable(path: Path, error_cls: type[errors.StepError]
                   = errors.CannotWriteToBackupLocationError) -> None:
    """Raise 6 unless a file can really be created in `path` (read-only mounts, ACLs, quota)."""
    probe = temp_path(Path(path) / "write-check")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise error_cls(f"cannot create a file in {path}: {e.strerror}") from e
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError as e:
        raise error_cls(f"cannot remove the probe {probe}: {e.strerror}") from e


def _fsync_directory(path: Path) -> None:
    """Make a directory's entries durable (some filesystems cannot: that is not an error)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def make_directories(root: Path, relative: PurePosixPath | str, owner: str | int,
                     group: str | int, mode: int) -> list[Path]:
    """Create each missing directory of root/relative below root, with owner, group and mode.

    Directories that already exist are left as they are (they may be shared with
    other VMs); a symbolic link on the way is refused, since it could lead outside
    the root. Failure is 27 (30/31 for ownership); returns the directories created.
    """
    root = Path(root)
    relative = PurePosixPath(relative)
    if relative.is_absolute() or ".." in relative.parts:
        raise errors.UnsupportedConfigurationParameterError(
            f"{relative} is not a plain path below {root}")
    if not root.is_dir():
        raise errors.CannotCreateDirectoryError(f"{root} does not exist or is not a directory")
    created = []
    current = root
    for part in relative.parts:
        parent, current = current, current / part
        try:
            os.mkdir(current, 0o700)  # the configured mode is applied right after
        except FileExistsError:
            if os.path.islink(current) or not current.is_dir():
                raise errors.CannotCreateDirectoryError(
                    f"{current} exists and is not a directory") from None
            continue
        except OSError as e:
            raise errors.CannotCreateDirectoryError(
                f"cannot create {current}: {e.strerror}") from e
        created.append(current)
        apply_ownership(current, owner, group, mode, directory=True)
        try:
            _fsync_directory(parent)
        except OSError as e:
            raise errors.CannotCreateDirectoryError(
                f"cannot sync {parent} after creating {part}: {e.strerror}") from e
    return created


# --- ownership and permissions (section 4) -------------------------------------------

def _resolve_id(name: str | int, kind: str) -> int:
    """A uid/gid from a name or numeric id (a numeric string is an id); KeyError if unknown."""
    if isinstance(name, int):
        return name
    text = str(name).strip()
    if text.isdigit():
        return int(text)
    if kind == "user":
        return pwd.getpwnam(text).pw_uid
    return grp.getgrnam(text).gr_gid


def apply_ownership(path: Path, owner: str | int, group: str | int, mode: int, *,
                    directory: bool) -> None:
    """chown and chmod one file (19/20) or directory (30/31); never through a symbolic link."""
    if directory:
        own_error, mode_error = (errors.CannotSetDirectoryOwnershipError,
                                 errors.CannotSetDirectoryPermissionError)
    else:
        own_error, mode_error = (errors.CannotSetDiskImageOwnershipError,
                                 errors.CannotSetDiskImagePermissionError)
    try:
        uid = _resolve_id(owner, "user")
    except KeyError:
        raise own_error(f"{path}: unknown user {owner!r}") from None
    try:
        gid = _resolve_id(group, "group")
    except KeyError:
        raise own_error(f"{path}: unknown group {group!r}") from None
    if not 0 <= mode <= 0o7777:
        raise mode_error(f"{path}: {mode:#o} is not a permission mode")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        # through a descriptor: what is changed is what was checked, with no race
        fd = os.open(path, flags | (os.O_DIRECTORY if directory else 0))
    except OSError as e:
        raise own_error(f"cannot open {path}: {e.strerror}") from e
    try:
        kind_ok = stat.S_ISDIR if directory else stat.S_ISREG
        if not kind_ok(os.fstat(fd).st_mode):
            raise own_error(f"{path} is not a {'directory' if directory else 'regular file'}")
        try:
            os.fchown(fd, uid, gid)
        except OSError as e:
            raise own_error(f"chown {uid}:{gid} {path}: {e.strerror}") from e
        try:
            # after chown, which clears set-id bits
            os.fchmod(fd, mode)
        except OSError as e:
            raise mode_error(f"chmod {mode:o} {path}: {e.strerror}") from e
    finally:
        os.close(fd)


# --- publication ---------------------------------------------------------------------

def _discarded(tmp: Path, e: OSError, error: type[errors.StepError],
               what: str) -> errors.StepError:
    """Remove a temporary file after `e`; the error to raise (47 for a full disk)."""
    try:
        os.unlink(tmp)
    except OSError:
        pass
    cls = errors.NotEnoughDiskSpaceError if e.errno in NO_SPACE_ERRNOS else error
    return cls(f"{what}: {e.strerror}")


def publish(tmp: Path, final: Path, *, error: type[errors.StepError]
            = errors.CannotCopyFileToBackupLocationError) -> None:
    """Rename a complete temporary file to its final name (replacing it) and sync the directory."""
    tmp, final = Path(tmp), Path(final)
    if tmp.parent != final.parent:
        raise ValueError(f"{tmp} and {final} are not in one directory")
    try:
        os.rename(tmp, final)
        _fsync_directory(final.parent)
    except OSError as e:
        raise _discarded(tmp, e, error, f"cannot publish {final}") from e


def write_file_atomic(path: Path, data: bytes, *, owner: str | int | None = None,
                      group: str | int | None = None, mode: int = 0o600,
                      error: type[errors.StepError]
                      = errors.CannotCopyFileToBackupLocationError) -> None:
    """Write a small file (xml, ldif, manifest): temp file, fsync, ownership, rename, fsync dir."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while len(view):
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _discarded(tmp, e, error, f"cannot write {path}") from e
    try:
        if owner is not None or group is not None:
            if owner is None or group is None:
                raise ValueError("owner and group go together")
            apply_ownership(tmp, owner, group, mode, directory=False)
        else:
            os.chmod(tmp, mode)
    except BaseException:
        os.unlink(tmp)
        raise
    publish(tmp, path, error=error)


# --- the checksum manifest (section 4, beyond) ---------------------------------------

_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def _manifest_name_ok(name: str) -> bool:
    """sha256sum would escape these; our file names never need it."""
    return not _bad_name(name) and "\\" not in name


def write_manifest(directory: Path, name: str, entries: dict[str, str], *,
                   owner: str | int | None = None, group: str | int | None = None,
                   mode: int = 0o600) -> Path:
    """Write `<hex>  <file>` lines, sorted, so that `sha256sum -c <name>` works in `directory`."""
    lines = []
    for filename in sorted(entries):
        digest = entries[filename]
        if not _manifest_name_ok(filename) or filename == name:
            raise errors.UnsupportedConfigurationParameterError(
                f"{filename!r} cannot be listed in the manifest {name}")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{filename}: {digest!r} is not a SHA-256 hex digest")
        lines.append(f"{digest}  {filename}\n")
    path = Path(directory) / name
    write_file_atomic(path, "".join(lines).encode("utf-8"), owner=owner, group=group, mode=mode)
    return path


def read_manifest(path: Path) -> dict[str, str]:
    """{file: sha256} from a manifest; ValueError for a line that is not `<hex>  <file>`."""
    entries = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        match = _MANIFEST_LINE.match(line)
        if not match or not _manifest_name_ok(match.group(2)):
            raise ValueError(f"{path} line {number}: {line[:100]!r}")
        entries[match.group(2)] = match.group(1)
    return entries


class ProblemKind(enum.Enum):
    """What is wrong with one file of an iteration."""

    MISSING = "missing"
    MISMATCH = "mismatch"
    UNREADABLE = "unreadable"
    MALFORMED = "malformed"

    @property
    def code(self) -> int:
        """The contract's return value: 37 for a missing file, 38 for a corrupt one."""
        if self is ProblemKind.MISSING:
            return errors.MissingNecessaryFilesError.code
        return errors.CorruptDiskImageFoundError.code


@dataclasses.dataclass(frozen=True)
class Problem:
    """One file that fails verification."""

    filename: str
    kind: ProblemKind
    detail: str

    def error(self) -> errors.StepError:
        """The StepError this problem would be (37 missing, 38 corrupt)."""
        return errors.error_for_code(self.kind.code, f"{self.filename}: {self.detail}")


def verify_entries(directory: Path, entries: dict[str, str]) -> list[Problem]:
    """Recompute the SHA-256 of each listed file in `directory`; the problems, sorted by name."""
    problems = []
    for filename in sorted(entries):
        path = Path(directory) / filename
        if not path.is_file():
            problems.append(Problem(filename, ProblemKind.MISSING, f"{path} is missing"))
            continue
        try:
            actual = file_sha256(path)
        except errors.StepError as e:
            problems.append(Problem(filename, ProblemKind.UNREADABLE, e.detail))
            continue
        if actual != entries[filename]:
            problems.append(Problem(filename, ProblemKind.MISMATCH,
                                    f"sha256 {actual}, the manifest says {entries[filename]}"))
    return problems


def verify_manifest(directory: Path, name: str) -> list[Problem]:
    """Verify every file the manifest `name` in `directory` lists; [] when all match."""
    path = Path(directory) / name
    try:
        entries = read_manifest(path)
    except FileNotFoundError:
        return [Problem(name, ProblemKind.MISSING, f"the manifest {path} is missing")]
    except OSError as e:
        return [Problem(name, ProblemKind.UNREADABLE, f"{path}: {e.strerror or e}")]
    except ValueError as e:  # a bad line, or not UTF-8 at all
        return [Problem(name, ProblemKind.MALFORMED, f"not a sha256sum manifest: {e}")]
    return verify_entries(directory, entries)


# --- removal -------------------------------------------------------------------------

def remove_tree(path: Path, root: Path) -> None:
    """Remove a file or directory tree strictly inside `root` (symlinks resolved; else 39).

    Nothing there is success (a repeated delete); a failure is 13. Links inside the
    tree are removed, never followed.
    """
    path, root = Path(path), Path(root)
    real_root = Path(os.path.realpath(root))
    real_path = Path(os.path.realpath(path))
    if real_root not in real_path.parents:
        raise errors.UnsupportedConfigurationParameterError(
            f"refusing to remove {path} (= {real_path}): not inside {root} (= {real_root})")
    if os.path.islink(path):
        raise errors.UnsupportedConfigurationParameterError(
            f"refusing to remove {path}: it is a symbolic link")
    failures: list[str] = []

    def note(function, failed_path, exc_info) -> None:
        failures.append(f"{failed_path}: {getattr(exc_info[1], 'strerror', None) or exc_info[1]}")

    try:
        if not os.path.lexists(real_path):
            return
        if real_path.is_dir():
            # rmtree works through directory descriptors, so it cannot be led outside
            shutil.rmtree(real_path, onerror=note)
        else:
            os.unlink(real_path)
    except OSError as e:
        failures.append(f"{real_path}: {e.strerror}")
    if failures:
        raise errors.CannotRemoveFileError(
            f"removing {path}: " + "; ".join(failures[:5])
            + (f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""))


__all__ = [
    "TEMP_MARKER", "CopyResult", "Problem", "ProblemKind", "TokenBucket", "apply_ownership",
    "check_space", "check_writable", "file_sha256", "intermediate_path", "make_directories",
    "publish", "read_manifest", "remove_tree", "require_root", "space_needed", "sparse_copy",
    "temp_path", "verify_entries", "verify_manifest", "write_file_atomic", "write_manifest",
]


def remove_stale_temporaries(directory: Path) -> int:
    """Remove the temporary files an interrupted copy left in `directory`; how many."""
    removed = 0
    if not Path(directory).is_dir():
        return 0
    for path in Path(directory).iterdir():
        if path.name.startswith(".") and TEMP_MARKER in path.name and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
