"""Sparse copies of backup files with their SHA-256 in the same pass (CONTRACT.md sections 4-5).

Disk images are mostly holes and zeros, so a copy reads only the source's data
extents (SEEK_DATA/SEEK_HOLE), writes only the blocks of those that are not all
zero, and leaves the rest of the copy a hole: a fully allocated source still gives a
sparse copy. The SHA-256 covers the whole logical content; holes are hashed from a
shared zero buffer without being read, on a second thread so that hashing overlaps
the reads and writes (hashlib releases the GIL for large updates).

A copy is written under a temporary name beside its destination and handed back;
the caller sets ownership and then publishes it, so no file appears under its final
name before it is complete (section 4, beyond).

Writes are pwrite from the buffer just read, not os.copy_file_range: the data has to
come into user space anyway, to find the zero blocks and to hash it, and the
in-kernel copy of the same runs measured no faster on ext4 (`bench/bench_copy.py
--variants`). mmap is not used: an I/O error on a mapping is a SIGBUS, which would
kill the daemon instead of failing one step.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import queue
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from provbackup import errors

#: bytes per read: syscall overhead is noise at this size and the buffer is still in
#: cache while it is scanned for zero blocks and hashed (1-4 MiB measured the same).
CHUNK = 1 << 20
#: read buffers in flight with a checksum: how far reading may run ahead of hashing.
#: The hash is the slow part (SHA-256 of every logical byte, holes included); a lead
#: of 16 MiB lets a slow read and a long hole overlap instead of waiting on each other.
BUFFERS = 16
#: hand the copy's dirty pages to writeback every so many bytes, so the final fsync
#: does not write the whole image at once and dirty memory stays bounded on the node.
WRITEBACK_STEP = 16 << 20
#: write the non-zero runs with os.copy_file_range from the source instead of pwrite
#: from the buffer just read; measured no faster here (bench/bench_copy.py --variants)
#: because the data is in user space anyway, for the zero scan and the hash.
USE_COPY_FILE_RANGE = False
#: the temporary name marker; a crash can leave such files, and nothing reads them.
TEMP_MARKER = ".provbackup-tmp-"
#: calloc'd, so its pages are the kernel's shared zero page: hashing it stays in cache.
_ZEROS = bytes(CHUNK)
_ZEROS_VIEW = memoryview(_ZEROS)
#: errno values that mean "the target filesystem is full" (return value 47).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclasses.dataclass(frozen=True)
class CopyResult:
    """What a copy wrote: data bytes written, logical size, SHA-256 hex, and where."""

    bytes_copied: int
    size: int
    sha256: str | None
    temp: Path


class TokenBucket:
    """A bandwidth limit in bytes per second; `consume` sleeps until the bytes are allowed."""

    def __init__(self, rate: int, *, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = rate
        # a quarter second of burst smooths sleeps without letting a stalled copy
        # catch up with a flood later
        self.burst = burst if burst is not None else max(rate // 4, 1)
        self._clock = clock
        self._sleep = sleep
        # start empty: the whole copy then takes at least bytes/rate
        self._tokens = 0.0
        self._last = clock()

    def consume(self, n: int) -> None:
        """Take `n` bytes' worth of tokens, sleeping while the bucket is in debt."""
        now = self._clock()
        self._tokens = min(self._tokens + (now - self._last) * self.rate, self.burst)
        self._last = now
        self._tokens -= n
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)


def chunk_for_rate(rate: int) -> int:
    """The read size for a bandwidth limit: about 1/10 s of it, 64 KiB to CHUNK."""
    if rate <= 0:
        return CHUNK
    return min(CHUNK, max(64 << 10, (rate // 10) & ~0xFFFF))


def temp_path(final: Path) -> Path:
    """A fresh temporary name beside `final` (one filesystem, so the rename is atomic)."""
    return final.with_name(f".{final.name}{TEMP_MARKER}{secrets.token_hex(4)}")


def extents(fd: int, size: int, align: int = 1) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) pieces covering [0, size) in order; data aligned to `align`.

    Without hole information from the filesystem, everything is data.
    """
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                data = hole = size
            elif e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                data, hole = pos, size
            else:
                raise
        # widen data to whole blocks so zero-block detection matches the target's
        # blocks; the widened bytes are hole, so reading them yields zeros
        data = max(pos, min(size, data - data % align))
        hole = min(size, hole + (-hole % align))
        if data > pos:
            yield pos, data - pos, False
        if hole > data:
            yield data, hole - data, True
        pos = max(hole, data)


def data_runs(buf: bytearray, n: int, block: int) -> list[tuple[int, int]]:
    """(start, end) runs of buf[:n] that are not all-zero `block`-sized blocks."""
    if buf.startswith(_ZEROS_VIEW[:n]):
        return []
    zero_block = _ZEROS_VIEW[:block]
    # one C search finds the first zero block candidate; no aligned zero block can
    # start before it, so data with no zeros costs one call
    first = buf.find(zero_block, 0, n)
    if first < 0:
        return [(0, n)]
    runs = []
    start = 0
    for offset in range(first - first % block, n - block + 1, block):
        if buf.startswith(zero_block, offset):
            if offset > start:
                runs.append((start, offset))
            start = offset + block
    if start < n:
        runs.append((start, n))
    return runs


class _Pipeline:
    """Read buffers and, with a checksum, the thread that hashes and recycles them in order."""

    def __init__(self, chunk: int, checksum: bool) -> None:
        self._pool: "queue.Queue[bytearray]" = queue.Queue()
        for _ in range(BUFFERS if checksum else 1):
            self._pool.put(bytearray(chunk))
        self._hash = hashlib.sha256() if checksum else None
        self._failure: BaseException | None = None
        self._abort = False
        self._work: "queue.Queue[tuple[bytearray | None, int]]" = queue.Queue()
        self._thread = None
        if checksum:
            self._thread = threading.Thread(target=self._run, name="provbackup-sha256",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._hash is not None
        while True:
            buf, n = self._work.get()
            if n < 0:
                return
            try:
                if buf is None:
                    while n > 0 and not self._abort:
                        step = min(n, len(_ZEROS))
                        self._hash.update(_ZEROS_VIEW[:step])
                        n -= step
                elif not self._abort:
                    with memoryview(buf) as view:
                        self._hash.update(view[:n])
            except BaseException as e:  # noqa: B902 - re-raised by finish()
                self._failure = self._failure or e
            finally:
                # always recycle, or the reading thread would wait for ever
                if buf is not None:
                    self._pool.put(buf)

    def take(self) -> bytearray:
        """A free buffer (waits while the hasher is that far behind)."""
        return self._pool.get()

    def data(self, buf: bytearray, n: int) -> None:
        """Hash buf[:n] (if hashing); the buffer is recycled afterwards."""
        if self._thread is None:
            self._pool.put(buf)
        else:
            self._work.put((buf, n))

    def zeros(self, n: int) -> None:
        """Hash `n` zero bytes without reading anything (if hashing)."""
        if self._thread is not None:
            self._work.put((None, n))

    def finish(self, abort: bool = False) -> str | None:
        """Stop the thread; the hex digest, or None without a checksum (or when aborted)."""
        if self._thread is None:
            return None
        # a failed copy must not wait for the hash of the holes still queued
        self._abort = self._abort or abort
        self._work.put((None, -1))
        self._thread.join()
        if self._abort:
            return None
        if self._failure is not None:
            raise self._failure
        assert self._hash is not None
        return self._hash.hexdigest()


def _read_exactly(fd: int, view: memoryview, offset: int, path: Path) -> None:
    """Fill `view` from `offset`; a short file is an error, not silent zeros."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(errno.EIO, f"{path} ended at {offset + done}, before its size")
        done += got


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    """pwrite the whole view (pwrite may write less than asked)."""
    while len(view):
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, f"write at {offset} made no progress")
        view = view[written:]
        offset += written


def _copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """copy_file_range the whole range (it may copy less than asked)."""
    while count:
        done = os.copy_file_range(src_fd, dst_fd, count, offset, offset)
        if done <= 0:
            raise OSError(errno.EIO, f"copy_file_range at {offset} made no progress")
        offset += done
        count -= done


def _advise(fd: int, offset: int, length: int, advice: int) -> None:
    """posix_fadvise, ignoring failure: advice must never fail a backup."""
    try:
        os.posix_fadvise(fd, offset, length, advice)
    except OSError:
        pass


def _stream(src_fd: int, dst_fd: int | None, size: int, pipeline: _Pipeline, *, src: Path,
            block: int, chunk: int, bucket: TokenBucket | None) -> int:
    """Read the data of src, hash it, write its non-zero blocks to dst; bytes written."""
    written = 0
    flushed = 0  # dst below this offset has been handed to writeback
    for offset, length, is_data in extents(src_fd, size, block):
        if not is_data:
            pipeline.zeros(length)
            continue
        end = offset + length
        while offset < end:
            n = min(chunk, end - offset)
            if bucket:
                bucket.consume(n)
            buf = pipeline.take()
            with memoryview(buf) as view:
                _read_exactly(src_fd, view[:n], offset, src)
                if dst_fd is not None:
                    for start, stop in data_runs(buf, n, block):
                        if USE_COPY_FILE_RANGE:
                            _copy_range(src_fd, dst_fd, offset + start, stop - start)
                        else:
                            _write_all(dst_fd, view[start:stop], offset + start)
                        written += stop - start
            pipeline.data(buf, n)  # only after the writes: the hasher recycles buf
            offset += n
            if dst_fd is not None and offset - flushed >= WRITEBACK_STEP:
                # on Linux, DONTNEED starts asynchronous writeback of dirty pages
                _advise(dst_fd, flushed, offset - flushed, os.POSIX_FADV_DONTNEED)
                flushed = offset
    return written


def _fail(e: OSError, what: str, path: Path, error: type[errors.StepError]) -> errors.StepError:
    """The step error for an OSError: 47 for a full filesystem, else `error`."""
    cls = errors.NotEnoughDiskSpaceError if e.errno in NO_SPACE_ERRNOS else error
    return cls(f"{what} {path}: {e.strerror or e}")


def _open_source(src: Path, error: type[errors.StepError]) -> tuple[int, int]:
    """Open a regular file for reading: (fd, size)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"cannot open {src}: {e.strerror}") from e
    try:
        info = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise error(f"cannot stat {src}: {e.strerror}") from e
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise error(f"{src} is not a regular file")
    # doubles the readahead window for the sequential pass
    _advise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd, info.st_size


def sparse_copy(src: Path, dst: Path, *, bandwidth_bytes: int = 0, checksum: bool = True,
                error: type[errors.StepError] = errors.CannotCopyImageToBackupLocationError
                ) -> CopyResult:
    """Copy src to a temporary file beside dst, sparsely, fsynced; the caller publishes it.

    ENOSPC/EDQUOT raise NotEnoughDiskSpaceError (47), anything else `error`; on any
    failure the temporary file is removed. `bandwidth_bytes` limits the bytes read
    per second (holes are free), 0 = unlimited.
    """
    src, dst = Path(src), Path(dst)
    src_fd, size = _open_source(src, error)
    try:
        tmp = temp_path(dst)
        try:
            # 0600 until the caller applies the configured owner and mode
            dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise _fail(e, "cannot create", tmp, error) from e
        try:
            written, digest = _copy_into(src_fd, dst_fd, size, src=src,
                                         bandwidth_bytes=bandwidth_bytes, checksum=checksum)
        except BaseException as e:
            _discard(tmp)
            if isinstance(e, OSError):
                raise _fail(e, f"cannot copy {src} to", tmp, error) from e
            raise
    finally:
        os.close(src_fd)
    return CopyResult(bytes_copied=written, size=size, sha256=digest, temp=tmp)


def _copy_into(src_fd: int, dst_fd: int, size: int, *, src: Path, bandwidth_bytes: int,
               checksum: bool) -> tuple[int, str | None]:
    """The copy proper, closing dst_fd: (bytes written, sha256 or None)."""
    chunk = chunk_for_rate(bandwidth_bytes)
    bucket = TokenBucket(bandwidth_bytes) if bandwidth_bytes > 0 else None
    try:
        # the size first: every block left unwritten is a hole
        os.ftruncate(dst_fd, size)
        block = max(512, min(os.fstat(dst_fd).st_blksize, 1 << 16))
        pipeline = _Pipeline(chunk, checksum)
        try:
            written = _stream(src_fd, dst_fd, size, pipeline, src=src, block=block,
                              chunk=chunk, bucket=bucket)
            # fsync while the hasher catches up on the last buffers and holes
            os.fsync(dst_fd)
        except BaseException:
            pipeline.finish(abort=True)
            raise
        digest = pipeline.finish()
        # the copy will not be read soon: leave the node's page cache to its VMs
        _advise(dst_fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(dst_fd)
    return written, digest


def _discard(path: Path) -> None:
    """Remove a temporary file, ignoring that it may already be gone."""
    try:
        os.unlink(path)
    except OSError:
        pass


def file_sha256(path: Path, *, error: type[errors.StepError] = errors.CorruptDiskImageFoundError
                ) -> str:
    """SHA-256 of a file's logical content, reading only its data extents."""
    path = Path(path)
    fd, size = _open_source(path, error)
    try:
        pipeline = _Pipeline(CHUNK, True)
        try:
            _stream(fd, None, size, pipeline, src=path, block=1, chunk=CHUNK, bucket=None)
        except BaseException:
            pipeline.finish(abort=True)
            raise
        digest = pipeline.finish()
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    assert digest is not None
    return digest
