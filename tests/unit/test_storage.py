"""Backup files on real filesystems: sparse copies, paths, space, ownership, manifest, removal.

No mocks: files are made in tmp_path (ext4 or whatever the host has) and, for a
full or read-only filesystem, in a small tmpfs mounted for the test (the tests run
as root, as the daemon does).
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import hashlib
import os
import random
import stat
import subprocess
import time
from pathlib import Path, PurePosixPath

import pytest

from provbackup import errors
from provbackup.workflow import copying, storage

BLOCK = 4096


# --- helpers -------------------------------------------------------------------------

def _sparse_file(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> Path:
    """A file of `size` bytes that is a hole except for `pieces` written at their offsets."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    return path


def _dense_copy(src: Path, dst: Path) -> Path:
    """The same content with every block allocated (zeros written out)."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        while chunk := f.read(1 << 20):
            g.write(chunk)
    return dst


def _sha256(path: Path) -> str:
    """hashlib over the whole file, read in full: the reference."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _nonzero_blocks(path: Path) -> int:
    """How many 4 KiB blocks of the file hold a byte that is not zero."""
    count = 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            count += block.count(0) != len(block)
    return count


def _copy(src: Path, dst: Path, **kwargs) -> copying.CopyResult:
    """sparse_copy and publish, as a step does."""
    result = storage.sparse_copy(src, dst, **kwargs)
    storage.publish(result.temp, dst)
    return result


@contextlib.contextmanager
def _tmpfs(where: Path, size: str = "1m", readonly: bool = False):
    """A small tmpfs mounted at `where` for the duration of the block."""
    where.mkdir()
    options = f"size={size}" + (",ro" if readonly else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@contextlib.contextmanager
def _immutable(path: Path):
    """chattr +i for the duration of the block (even root cannot change such a file)."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def scattered(tmp_path):
    """A 64 MiB sparse image with scattered data, unaligned pieces and zero runs inside data."""
    rng = random.Random(4711)
    size = 64 << 20
    pieces = [(0, rng.randbytes(65536))]  # a header, as qcow2 has
    for _ in range(60):
        length = rng.choice([1, 100, 4096, 5000, 65536, 1 << 20])
        pieces.append((rng.randrange(0, size - length), rng.randbytes(length)))
    # a data extent that holds whole zero blocks, which the copy must leave out
    pieces.append((40 << 20, rng.randbytes(BLOCK) + bytes(8 * BLOCK) + rng.randbytes(10)))
    pieces.append((size - 3, b"end"))
    return _sparse_file(tmp_path / "scattered.img", size, pieces)


# --- sparse_copy ---------------------------------------------------------------------

def test_sparse_source_keeps_its_holes(tmp_path, scattered):
    """A copy of a sparse image allocates no more than its data and writes only data."""
    dst = tmp_path / "out" / "disk.img"
    dst.parent.mkdir()
    result = _copy(scattered, dst)
    assert filecmp.cmp(scattered, dst, shallow=False)
    assert result.size == dst.stat().st_size == scattered.stat().st_size
    assert dst.stat().st_blocks <= scattered.stat().st_blocks
    # exactly the blocks holding data: the zero blocks inside a data extent are left out
    assert result.bytes_copied == _nonzero_blocks(scattered) * BLOCK < result.size // 4


def test_checksum_equals_hashlib_over_the_whole_file(tmp_path, scattered):
    """The sha256 of a copy is hashlib's over every logical byte, holes included."""
    result = storage.sparse_copy(scattered, tmp_path / "copy.img")
    assert result.sha256 == _sha256(scattered) == storage.file_sha256(result.temp)


def test_dense_source_with_zero_regions_becomes_sparse(tmp_path, scattered):
    """A fully allocated source gives a copy that allocates only its non-zero blocks."""
    dense = _dense_copy(scattered, tmp_path / "dense.img")
    assert dense.stat().st_blocks * 512 >= dense.stat().st_size
    result = _copy(dense, tmp_path / "copy.img")
    copy = tmp_path / "copy.img"
    assert filecmp.cmp(dense, copy, shallow=False)
    assert result.sha256 == _sha256(dense)
    wanted = _nonzero_blocks(dense) * BLOCK
    assert result.bytes_copied == wanted
    # st_blocks may add a few ext4 extent-tree blocks to the data blocks
    assert copy.stat().st_blocks * 512 <= wanted + 16 * BLOCK


def test_fully_written_random_file_is_copied_whole(tmp_path):
    """Incompressible data is written in full, including an unaligned tail."""
    src = tmp_path / "random.img"
    src.write_bytes(random.Random(1).randbytes(3 * (1 << 20) + 123))
    result = _copy(src, tmp_path / "copy.img")
    assert result.bytes_copied == result.size == src.stat().st_size
    assert filecmp.cmp(src, tmp_path / "copy.img", shallow=False)
    assert result.sha256 == _sha256(src)


@pytest.mark.parametrize("size, pieces", [
    (0, []),
    (10 << 20, []),
    (BLOCK + 1, [(BLOCK, b"x")]),
    (5, [(0, b"\0\0\0\0\0")]),
], ids=["empty", "all-hole", "data-in-last-partial-block", "tiny-zeros"])
def test_edge_sizes(tmp_path, size, pieces):
    """Empty, all-hole, tail-only and tiny files copy exactly with the right digest."""
    src = _sparse_file(tmp_path / "src", size, pieces)
    result = _copy(src, tmp_path / "dst")
    assert (tmp_path / "dst").stat().st_size == size
    assert filecmp.cmp(src, tmp_path / "dst", shallow=False)
    assert result.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()


def test_without_checksum_no_digest(tmp_path, scattered):
    """checksum=False copies the same bytes and reports no digest."""
    result = _copy(scattered, tmp_path / "copy.img", checksum=False)
    assert result.sha256 is None
    assert filecmp.cmp(scattered, tmp_path / "copy.img", shallow=False)


def test_copy_is_private_and_unpublished_until_publish(tmp_path, scattered):
    """The copy lives under a 0600 temporary name beside dst; dst appears only on publish."""
    dst = tmp_path / "disk.img"
    result = storage.sparse_copy(scattered, dst)
    assert result.temp.parent == tmp_path and copying.TEMP_MARKER in result.temp.name
    assert stat.S_IMODE(result.temp.stat().st_mode) == 0o600
    assert not dst.exists()
    storage.publish(result.temp, dst)
    assert dst.exists() and not result.temp.exists()


def test_enospc_is_47_and_leaves_nothing(tmp_path):
    """A copy onto a full filesystem raises 47 and removes its partial file."""
    src = tmp_path / "src.img"
    src.write_bytes(random.Random(2).randbytes(2 << 20))
    with _tmpfs(tmp_path / "small", "1m") as small:
        with pytest.raises(errors.NotEnoughDiskSpaceError) as caught:
            storage.sparse_copy(src, small / "disk.img")
        assert os.listdir(small) == []
    assert caught.value.code == 47
    assert "disk.img" in caught.value.detail and os.strerror(errno.ENOSPC) in caught.value.detail


def test_failed_copy_does_not_hash_the_rest(tmp_path):
    """A copy failing after a 64 GiB hole returns at once instead of hashing the hole (~45 s)."""
    src = _sparse_file(tmp_path / "src.img", (64 << 30) + (2 << 20),
                       [(64 << 30, random.Random(5).randbytes(2 << 20))])
    with _tmpfs(tmp_path / "small", "1m") as small:
        started = time.monotonic()
        with pytest.raises(errors.NotEnoughDiskSpaceError):
            storage.sparse_copy(src, small / "disk.img")
        # a generous bound: hashing the hole would take 45 s even with SHA extensions
        assert time.monotonic() - started < 15
        assert os.listdir(small) == []


def test_other_failures_use_the_callers_error(tmp_path):
    """A missing source, a missing target directory or a non-file source give the chosen error."""
    src = _sparse_file(tmp_path / "src", 10, [(0, b"x")])
    cases = [(tmp_path / "absent", tmp_path / "dst"),
             (src, tmp_path / "no-such-dir" / "dst"),
             (tmp_path, tmp_path / "dst")]
    for source, target in cases:
        with pytest.raises(errors.CannotCopyStateFileToRetainError) as caught:
            storage.sparse_copy(source, target, error=errors.CannotCopyStateFileToRetainError)
        assert str(source) in caught.value.detail or str(target.parent) in caught.value.detail
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_bandwidth_limit_is_a_lower_bound_on_time(tmp_path):
    """A copy limited to a rate takes at least its data size divided by the rate."""
    src = tmp_path / "src"
    src.write_bytes(random.Random(3).randbytes(384 << 10))
    rate = 768 << 10
    started = time.monotonic()
    result = _copy(src, tmp_path / "dst", bandwidth_bytes=rate)
    assert time.monotonic() - started >= result.size / rate
    assert filecmp.cmp(src, tmp_path / "dst", shallow=False)


def test_token_bucket_charges_every_byte_from_an_empty_bucket():
    """With a fake clock, the sleeps add up to at least bytes/rate and bursts stay bounded."""
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    bucket = copying.TokenBucket(1000, clock=lambda: now[0], sleep=sleep)
    for _ in range(50):
        bucket.consume(100)
    assert now[0] >= 5.0 - 1e-9
    now[0] += 3600  # idle for an hour: only the burst may be spent at once
    before = now[0]
    bucket.consume(1000)
    assert now[0] - before >= (1000 - bucket.burst) / 1000 - 1e-9


def test_read_size_follows_the_rate():
    """Limited copies read about 1/10 s at a time, between 64 KiB and the chunk size."""
    assert copying.chunk_for_rate(0) == copying.CHUNK
    assert copying.chunk_for_rate(1000) == 64 << 10
    assert copying.chunk_for_rate(1 << 40) == copying.CHUNK


def test_data_runs_skip_only_whole_zero_blocks():
    """Zero blocks are left out, a partly zero block is kept, and neighbours coalesce."""
    buf = bytearray(8 * BLOCK)
    buf[0] = 1                      # block 0 data
    buf[BLOCK + 7] = 1              # block 1 data
    buf[4 * BLOCK + BLOCK - 1] = 1  # block 4 data, at its last byte
    assert copying.data_runs(buf, len(buf), BLOCK) == [(0, 2 * BLOCK), (4 * BLOCK, 5 * BLOCK)]
    assert copying.data_runs(bytearray(BLOCK * 2), 2 * BLOCK, BLOCK) == []
    tail = bytearray(BLOCK + 10)
    tail[-1] = 1
    assert copying.data_runs(tail, len(tail), BLOCK) == [(BLOCK, BLOCK + 10)]


def test_extents_cover_the_file_in_order(tmp_path, scattered):
    """Data and hole pieces tile the whole file and every non-zero byte is inside data."""
    fd = os.open(scattered, os.O_RDONLY)
    try:
        pieces = list(copying.extents(fd, scattered.stat().st_size, BLOCK))
    finally:
        os.close(fd)
    position = 0
    for offset, length, _ in pieces:
        assert offset == position and length > 0
        position += length
    assert position == scattered.stat().st_size
    content = scattered.read_bytes()
    for offset, length, is_data in pieces:
        if not is_data:
            assert content[offset:offset + length].count(0) == length


# --- intermediate path (section 4) ---------------------------------------------------

@pytest.mark.parametrize("disk, expected", [
    ("/var/virtualization/vm-persistent/0f83f084-8080-413e-b558-b678e504836e/"
     "6ed0d4b8-f4cd-4f56-9a5f-1b4c5d6f7a8b.qcow2",
     "vm-persistent/0f83f084-8080-413e-b558-b678e504836e/vm-1/20130805T133604Z"),
    ("/var/virtualization/vm-templates/pool/disk.qcow2",
     "vm-templates/pool/vm-1/20130805T133604Z"),
    ("/var/virtualization/disk.qcow2", "vm-1/20130805T133604Z"),
    ("/srv/images/pool/disk.qcow2", "srv/images/pool/vm-1/20130805T133604Z"),
    ("/var/virtualizationX/a/disk.qcow2", "var/virtualizationX/a/vm-1/20130805T133604Z"),
    ("//var/virtualization/a/disk.qcow2", "a/vm-1/20130805T133604Z"),
    ("/var/virtualization/./a//disk.qcow2", "a/vm-1/20130805T133604Z"),
    ("/disk.qcow2", "vm-1/20130805T133604Z"),
])
def test_intermediate_path(disk, expected):
    """The disk's directory without /var/virtualization/, then <vm>/<date>."""
    assert storage.intermediate_path(PurePosixPath(disk), "vm-1", "20130805T133604Z") \
        == PurePosixPath(expected)


@pytest.mark.parametrize("disk, vm, date", [
    ("vm-persistent/pool/disk.qcow2", "vm-1", "20130805T133604Z"),
    ("/var/virtualization/../../etc/disk.qcow2", "vm-1", "20130805T133604Z"),
    ("/", "vm-1", "20130805T133604Z"),
    ("/var/virtualization/a/disk.qcow2", "a/b", "20130805T133604Z"),
    ("/var/virtualization/a/disk.qcow2", "..", "20130805T133604Z"),
    ("/var/virtualization/a/disk.qcow2", "vm-1", "."),
    ("/var/virtualization/a/disk.qcow2", "vm-1", ""),
    ("/var/virtualization/a/disk.qcow2", "vm\n1", "20130805T133604Z"),
])
def test_intermediate_path_refusals(disk, vm, date):
    """Relative or '..' disk paths and unusable VM names or dates are 39."""
    with pytest.raises(errors.UnsupportedConfigurationParameterError) as caught:
        storage.intermediate_path(PurePosixPath(disk), vm, date)
    assert caught.value.code == 39


# --- space (section 6) ---------------------------------------------------------------

@pytest.mark.parametrize("allocated, memory, needed", [
    (0, 0, 0), (1, 0, 2), (100, 0, 105), (20, 0, 21), (10 << 30, 2 << 30, 13_529_146_983),
])
def test_space_needed(allocated, memory, needed):
    """(allocated + memory) x 1.05, rounded up, in integers."""
    assert storage.space_needed(allocated, memory) == needed


def _statvfs(bavail: int, frsize: int = 4096, blocks: int = 1 << 20):
    """A fake statvfs answering with the given free blocks."""
    values = [4096, frsize, blocks, bavail + 10, bavail, 1000, 500, 500, 0, 255, 0]
    return lambda path: os.statvfs_result(values)


def test_check_space_with_fake_statvfs(tmp_path):
    """Enough returns the free bytes; too little is 47 and an error is 48, both with numbers."""
    assert storage.check_space(tmp_path, 4096 * 100, statvfs=_statvfs(100)) == 409600
    with pytest.raises(errors.NotEnoughDiskSpaceError) as short:
        storage.check_space(tmp_path, 409601, statvfs=_statvfs(100))
    assert "409601" in short.value.detail and "409600" in short.value.detail

    def failing(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    with pytest.raises(errors.NoDiskSpaceInformationError) as unknown:
        storage.check_space(tmp_path, 12345, statvfs=failing)
    assert "12345" in unknown.value.detail and os.strerror(errno.EIO) in unknown.value.detail


def test_check_space_for_real(tmp_path):
    """On the real filesystem a byte fits, an exabyte does not, and a missing dir is measured
    on its nearest existing parent."""
    assert storage.check_space(tmp_path / "not" / "yet", 1) > 0
    with pytest.raises(errors.NotEnoughDiskSpaceError):
        storage.check_space(tmp_path, 1 << 60)
    with _tmpfs(tmp_path / "small", "1m") as small:
        with pytest.raises(errors.NotEnoughDiskSpaceError):
            storage.check_space(small / "a" / "b", 2 << 20)


# --- roots, directories, ownership (section 4) ---------------------------------------

def test_require_root(tmp_path):
    """A missing root or a file in its place is the caller's error (25/26)."""
    storage.require_root(tmp_path, errors.BackupRootDirectoryDoesNotExistError)
    with pytest.raises(errors.RetainRootDirectoryDoesNotExistError):
        storage.require_root(tmp_path / "absent", errors.RetainRootDirectoryDoesNotExistError)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(errors.BackupRootDirectoryDoesNotExistError):
        storage.require_root(tmp_path / "file", errors.BackupRootDirectoryDoesNotExistError)


def test_check_writable(tmp_path):
    """A writable root passes without leaving a probe; a read-only mount is 6."""
    storage.check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []
    with _tmpfs(tmp_path / "ro", readonly=True) as readonly:
        with pytest.raises(errors.CannotWriteToBackupLocationError) as caught:
            storage.check_writable(readonly)
    assert str(tmp_path / "ro") in caught.value.detail


def test_ownership_with_numeric_ids_and_mode(tmp_path):
    """Numeric strings and ints are ids; the mode is applied exactly (files and directories)."""
    f = tmp_path / "f"
    f.write_bytes(b"x")
    storage.apply_ownership(f, "1234", 2345, 0o640, directory=False)
    info = f.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1234, 2345, 0o640)
    d = tmp_path / "d"
    d.mkdir()
    storage.apply_ownership(d, "root", "root", 0o2750, directory=True)
    info = d.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o2750)


def test_ownership_refusals(tmp_path):
    """Unknown names are 19 (file) and 30 (directory); a bad mode 20; a symlink and EPERM 19."""
    f = tmp_path / "f"
    f.write_bytes(b"x")
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(errors.CannotSetDiskImageOwnershipError, match="no-such-user-pb"):
        storage.apply_ownership(f, "no-such-user-pb", "root", 0o660, directory=False)
    with pytest.raises(errors.CannotSetDirectoryOwnershipError, match="no-such-group-pb"):
        storage.apply_ownership(d, "root", "no-such-group-pb", 0o770, directory=True)
    with pytest.raises(errors.CannotSetDiskImagePermissionError):
        storage.apply_ownership(f, 0, 0, 0o17777, directory=False)
    (tmp_path / "link").symlink_to(f)
    with pytest.raises(errors.CannotSetDiskImageOwnershipError):
        storage.apply_ownership(tmp_path / "link", 0, 0, 0o660, directory=False)
    with _immutable(f):
        with pytest.raises(errors.CannotSetDiskImageOwnershipError,
                           match=os.strerror(errno.EPERM)):
            storage.apply_ownership(f, 1, 1, 0o660, directory=False)


def test_make_directories(tmp_path):
    """Missing directories below the root are created with owner, group and mode; existing ones
    are left alone."""
    (tmp_path / "vm-persistent").mkdir(mode=0o755)
    created = storage.make_directories(tmp_path, PurePosixPath("vm-persistent/pool/vm-1/ou"),
                                       "1000", "1001", 0o770)
    assert created == [tmp_path / "vm-persistent/pool", tmp_path / "vm-persistent/pool/vm-1",
                       tmp_path / "vm-persistent/pool/vm-1/ou"]
    for d in created:
        info = d.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1000, 1001, 0o770)
    assert stat.S_IMODE((tmp_path / "vm-persistent").stat().st_mode) == 0o755
    assert storage.make_directories(tmp_path, "vm-persistent/pool", 0, 0, 0o770) == []


def test_make_directories_refusals(tmp_path):
    """'..' is 39; a missing root, a file or a symlink on the way is 27; a bad group is 30."""
    with pytest.raises(errors.UnsupportedConfigurationParameterError):
        storage.make_directories(tmp_path, "a/../../b", 0, 0, 0o770)
    with pytest.raises(errors.CannotCreateDirectoryError):
        storage.make_directories(tmp_path / "absent", "a", 0, 0, 0o770)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(errors.CannotCreateDirectoryError):
        storage.make_directories(tmp_path, "file/a", 0, 0, 0o770)
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(errors.CannotCreateDirectoryError):
        storage.make_directories(root, "link/a", 0, 0, 0o770)
    assert list(outside.iterdir()) == []
    with pytest.raises(errors.CannotSetDirectoryOwnershipError):
        storage.make_directories(root, "new", "root", "no-such-group-pb", 0o770)


# --- publication ---------------------------------------------------------------------

def test_write_file_atomic(tmp_path):
    """Small files appear complete with their owner and mode, replacing an older one, no temp."""
    path = tmp_path / "vm-1.xml.20130805T133604Z"
    path.write_bytes(b"old")
    storage.write_file_atomic(path, b"<domain/>", owner="4321", group="4321", mode=0o660)
    info = path.stat()
    assert path.read_bytes() == b"<domain/>"
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 4321, 0o660)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_write_file_atomic_failures_leave_nothing(tmp_path):
    """Unknown owners are 19 and a full filesystem 47, and no temporary file stays behind."""
    with pytest.raises(errors.CannotSetDiskImageOwnershipError):
        storage.write_file_atomic(tmp_path / "x", b"x", owner="no-such-user-pb", group="0")
    assert list(tmp_path.iterdir()) == []
    with _tmpfs(tmp_path / "small", "1m") as small:
        with pytest.raises(errors.NotEnoughDiskSpaceError):
            storage.write_file_atomic(small / "big", bytes(2 << 20))
        assert os.listdir(small) == []


# --- manifest ------------------------------------------------------------------------

@pytest.fixture
def iteration(tmp_path, scattered):
    """A backup directory with a copied image, an XML file and their manifest."""
    backup = tmp_path / "backup"
    backup.mkdir()
    image = _copy(scattered, backup / "disk.qcow2.20130805T133604Z")
    storage.write_file_atomic(backup / "vm-1.xml.20130805T133604Z", b"<domain/>")
    entries = {"disk.qcow2.20130805T133604Z": image.sha256,
               "vm-1.xml.20130805T133604Z": hashlib.sha256(b"<domain/>").hexdigest()}
    storage.write_manifest(backup, "vm-1.sha256.20130805T133604Z", entries)
    return backup, entries


def test_manifest_round_trip_and_sha256sum(iteration):
    """The manifest is sorted sha256sum format that `sha256sum -c` accepts and we verify."""
    backup, entries = iteration
    name = "vm-1.sha256.20130805T133604Z"
    text = (backup / name).read_text()
    assert text == "".join(f"{entries[k]}  {k}\n" for k in sorted(entries))
    assert storage.read_manifest(backup / name) == entries
    subprocess.run(["sha256sum", "--quiet", "-c", name], cwd=backup, check=True)
    assert storage.verify_manifest(backup, name) == []


def test_manifest_detects_a_flipped_byte(iteration):
    """One changed byte in a hole region of the image is a 38 mismatch for that file only."""
    backup, _ = iteration
    image = backup / "disk.qcow2.20130805T133604Z"
    with open(image, "r+b") as f:
        f.seek(30 << 20)
        byte = f.read(1)
        f.seek(30 << 20)
        f.write(bytes([byte[0] ^ 0x01]))
    problems = storage.verify_manifest(backup, "vm-1.sha256.20130805T133604Z")
    assert [(p.filename, p.kind, p.kind.code) for p in problems] == \
        [(image.name, storage.ProblemKind.MISMATCH, 38)]
    assert problems[0].error().code == 38


def test_manifest_detects_missing_files(iteration):
    """A missing file is 37; a missing or malformed manifest is reported, not raised."""
    backup, _ = iteration
    (backup / "vm-1.xml.20130805T133604Z").unlink()
    problems = storage.verify_manifest(backup, "vm-1.sha256.20130805T133604Z")
    assert [(p.filename, p.kind.code) for p in problems] == [("vm-1.xml.20130805T133604Z", 37)]
    assert isinstance(problems[0].error(), errors.MissingNecessaryFilesError)
    assert storage.verify_manifest(backup, "absent")[0].kind is storage.ProblemKind.MISSING
    (backup / "bad").write_text("not a manifest\n")
    (backup / "binary").write_bytes(b"\xff\xfe\x00")
    for name in ("bad", "binary"):
        assert storage.verify_manifest(backup, name)[0].kind is storage.ProblemKind.MALFORMED


def test_manifest_refuses_unlistable_names(tmp_path):
    """Names with a slash or newline, or a bad digest, never reach the manifest."""
    digest = "0" * 64
    for bad in ("a/b", "a\nb", "..", ""):
        with pytest.raises(errors.UnsupportedConfigurationParameterError):
            storage.write_manifest(tmp_path, "m", {bad: digest})
    with pytest.raises(ValueError):
        storage.write_manifest(tmp_path, "m", {"a": "xyz"})
    assert list(tmp_path.iterdir()) == []


# --- removal -------------------------------------------------------------------------

def test_remove_tree_inside_root(tmp_path):
    """A tree strictly inside the root goes, links in it are removed without being followed."""
    root = tmp_path / "root"
    tree = root / "pool" / "vm-1" / "ou"
    tree.mkdir(parents=True)
    (tree / "disk").write_bytes(b"x")
    outside = tmp_path / "keep"
    outside.mkdir()
    (outside / "precious").write_bytes(b"y")
    (tree / "link").symlink_to(outside)
    storage.remove_tree(tree, root)
    assert not tree.exists() and (root / "pool" / "vm-1").is_dir()
    assert (outside / "precious").read_bytes() == b"y"
    storage.remove_tree(tree, root)  # nothing there: success


def test_remove_tree_refuses_escapes(tmp_path):
    """The root itself, paths outside it, '..' and symlink escapes are refused with 39."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (root / "escape").symlink_to(outside)
    for path in (root, tmp_path, outside, root / ".." / "outside",
                 root / "escape" / "sub", root / "escape"):
        with pytest.raises(errors.UnsupportedConfigurationParameterError):
            storage.remove_tree(path, root)
    assert (outside / "sub").is_dir()


def test_remove_tree_failure_is_13(tmp_path):
    """A file that cannot be removed makes the removal fail with 13, naming it."""
    root = tmp_path / "root"
    (root / "ou").mkdir(parents=True)
    stuck = root / "ou" / "stuck"
    stuck.write_bytes(b"x")
    with _immutable(stuck):
        with pytest.raises(errors.CannotRemoveFileError, match="stuck"):
            storage.remove_tree(root / "ou", root)
