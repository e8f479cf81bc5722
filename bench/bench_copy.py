"""Copy throughput of provbackup's sparse_copy against `cp --sparse=always`, in one run.

    .venv/bin/python bench/bench_copy.py [--size-mib N] [--repeat 3] [--dir /var/tmp]
                                         [--variants]

Makes three images of N MiB in a scratch directory: `sparse` (about 30 % random data
in scattered runs, the rest holes), `allocated` (the same content with every block
written, zeros included) and `random` (every byte data). Each repetition copies each
image with cp and with sparse_copy (with and without the SHA-256), the page cache
dropped before every copy when this runs as root. Prints the medians as a Markdown
table on stdout (progress goes to stderr).

cp does not fsync and sparse_copy does, so cp is timed twice from the same run: until
it exits, and until an fsync of its copy returns (the same durability). The ratio is
throughput provbackup / cp, i.e. cp's time divided by provbackup's.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provbackup.workflow import copying, storage  # noqa: E402

MIB = 1 << 20
RUN_SIZES = (64 << 10, 256 << 10, MIB, 4 * MIB)


def log(message: str) -> None:
    """Progress, on stderr so stdout stays a clean Markdown table."""
    print(message, file=sys.stderr, flush=True)


def drop_caches() -> bool:
    """Write back and drop the page cache; False if this is not allowed here."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def make_sparse(path: Path, size: int, fraction: float, seed: int = 2024) -> int:
    """A sparse file with random data in scattered runs; returns the data bytes."""
    rng = random.Random(seed)
    mean_run = sum(RUN_SIZES) / len(RUN_SIZES)
    mean_gap = mean_run * (1 - fraction) / fraction
    data = 0
    with open(path, "wb") as f:
        f.truncate(size)
        position = int(rng.uniform(0, 2 * mean_gap)) // (64 << 10) * (64 << 10)
        while position < size:
            length = min(rng.choice(RUN_SIZES), size - position)
            f.seek(position)
            f.write(os.urandom(length))
            data += length
            gap = int(rng.uniform(0, 2 * mean_gap)) // (64 << 10) * (64 << 10)
            position += length + gap
    return data


def make_random(path: Path, size: int) -> None:
    """A file whose every byte is random data."""
    with open(path, "wb") as f:
        for _ in range(0, size, 16 * MIB):
            f.write(os.urandom(min(16 * MIB, size - f.tell())))


def allocated_mib(path: Path) -> float:
    """The space a file takes on disk."""
    return path.stat().st_blocks * 512 / MIB


def time_cp(src: Path, dst: Path) -> tuple[float, float]:
    """(seconds until cp exits, seconds until its copy is also fsynced)."""
    started = time.perf_counter()
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    exited = time.perf_counter()
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return exited - started, time.perf_counter() - started


def time_sparse_copy(src: Path, dst: Path, checksum: bool) -> tuple[float, storage.CopyResult]:
    """Seconds for sparse_copy plus publish, and its result."""
    started = time.perf_counter()
    result = storage.sparse_copy(src, dst, checksum=checksum)
    storage.publish(result.temp, dst)
    return time.perf_counter() - started, result


def zero_hash_seconds_per_gib(work: Path, size: int) -> float:
    """file_sha256 of an all-hole file: the cost of hashing zeros, per GiB."""
    hole = work / "hole.img"
    with open(hole, "wb") as f:
        f.truncate(size)
    started = time.perf_counter()
    storage.file_sha256(hole)
    elapsed = time.perf_counter() - started
    hole.unlink()
    return elapsed * (1 << 30) / size


def environment() -> str:
    """One line on what was measured where."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cp_version = subprocess.run(["cp", "--version"], capture_output=True,
                                text=True).stdout.splitlines()[0]
    return (f"Linux {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
            f"Python {platform.python_version()}, {cp_version}")


def filesystem(path: Path) -> str:
    """The filesystem type of `path`, from /proc/self/mounts."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1]
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fields[2]
    return kind


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the scratch directory goes (a real disk, not tmpfs)")
    parser.add_argument("--variants", action="store_true",
                        help="also time sparse_copy writing with os.copy_file_range")
    args = parser.parse_args()
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="provbackup-bench-", dir=args.dir))
    try:
        return run(args, size, work)
    finally:
        shutil.rmtree(work)


def run(args: argparse.Namespace, size: int, work: Path) -> int:
    """The measurements proper, in the scratch directory `work`."""
    log(f"making {args.size_mib} MiB images in {work}")
    images = {}
    sparse = work / "sparse.img"
    data = make_sparse(sparse, size, 0.30)
    images["sparse"] = (sparse, data)
    allocated = work / "allocated.img"
    subprocess.run(["cp", "--sparse=never", str(sparse), str(allocated)], check=True)
    images["allocated"] = (allocated, data)
    full = work / "random.img"
    make_random(full, size)
    images["random"] = (full, size)

    tools = ["cp", "cp+fsync", "sparse_copy sha256", "sparse_copy no checksum"]
    if args.variants:
        tools += ["copy_file_range sha256", "copy_file_range no checksum"]
    times: dict[tuple[str, str], list[float]] = {}
    space: dict[tuple[str, str], float] = {}
    dropped = True
    dst = work / "copy.img"
    for repetition in range(args.repeat):
        for name, (src, _) in images.items():
            log(f"repetition {repetition + 1}/{args.repeat}: {name}")
            dropped &= drop_caches()
            cp_exit, cp_synced = time_cp(src, dst)
            times.setdefault((name, "cp"), []).append(cp_exit)
            times.setdefault((name, "cp+fsync"), []).append(cp_synced)
            space[(name, "cp")] = space[(name, "cp+fsync")] = allocated_mib(dst)
            dst.unlink()
            for tool in tools[2:]:
                copying.USE_COPY_FILE_RANGE = tool.startswith("copy_file_range")
                dropped &= drop_caches()
                seconds, result = time_sparse_copy(src, dst, checksum="sha256" in tool)
                times.setdefault((name, tool), []).append(seconds)
                space[(name, tool)] = allocated_mib(dst)
                dst.unlink()
            copying.USE_COPY_FILE_RANGE = False

    log("measuring the cost of hashing zeros")
    zero_cost = zero_hash_seconds_per_gib(work, max(size, 1 << 30))

    print(f"### Copy throughput, {args.size_mib} MiB images, median of {args.repeat}\n")
    print(f"{environment()}; scratch on {filesystem(work)}; page cache "
          + ("dropped before every copy" if dropped
             else "**not** dropped (not root?): reads may come from memory") + ".\n")
    print("| image | data | tool | median s | MiB/s (logical) | vs cp | vs cp+fsync "
          "| allocated MiB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name, (_, data_bytes) in images.items():
        cp_time = statistics.median(times[(name, "cp")])
        synced_time = statistics.median(times[(name, "cp+fsync")])
        for tool in tools:
            median = statistics.median(times[(name, tool)])
            ratio = "" if tool.startswith("cp") else f"{cp_time / median:.2f}"
            ratio_synced = "" if tool == "cp" or tool == "cp+fsync" \
                else f"{synced_time / median:.2f}"
            print(f"| {name} | {100 * data_bytes / size:.0f} % | {tool} | {median:.3f} "
                  f"| {args.size_mib / median:.0f} | {ratio} | {ratio_synced} "
                  f"| {space[(name, tool)]:.0f} |")
    print(f"\nHashing zeros (holes, via file_sha256 of an all-hole file): "
          f"{zero_cost:.3f} s per GiB.")
    print("Ratios are throughput provbackup / baseline (≥ 1 is faster than the baseline); "
          "cp does not fsync, sparse_copy does, so *vs cp+fsync* compares equal durability.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
