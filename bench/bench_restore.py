"""Restore throughput: unretainLargeFiles against `cp --sparse=always` of the same files.

    .venv/bin/python bench/bench_restore.py [--disk-mib 1024] [--state-mib 256] [--repeat 3]

Builds a backup directory as retain leaves it (a qcow2 image with about 30 % of its
clusters written, a memory state file, the domain XML and the manifest), then, in the
same run and with the page cache dropped before each copy, times
- provbackup's unretainLargeFiles step (sparse copy, sha256 checked against the
  manifest while copying, qemu-img check of the image), and
- `cp --sparse=always` of the same two files, until cp exits and until an fsync of
  the copies returns (provbackup fsyncs; this is the equal-durability baseline).
Prints medians and the ratio (throughput provbackup / cp = cp time / provbackup time).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provbackup.directory.entry import Entry  # noqa: E402
from provbackup.directory.machine import Disk, Machine  # noqa: E402
from provbackup.directory.resolve import BackupPolicy  # noqa: E402
from provbackup.workflow import storage  # noqa: E402
from provbackup.workflow.context import StepContext  # noqa: E402
from provbackup.workflow.journal import JournalStore  # noqa: E402
from provbackup.workflow.restore import unretain_large_files  # noqa: E402

DATE = "20261122T030000Z"
VM = "bench-vm"
MIB = 1 << 20


def drop_caches() -> bool:
    """Write back and drop the page cache; False when not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def build_backup(root: Path, disk_mib: int, state_mib: int) -> StepContext:
    """A completed backup of one disk under root/backup, and the context to restore it."""
    live = root / "live" / "disk.qcow2"
    live.parent.mkdir(parents=True)
    policy = BackupPolicy(
        source_dn="bench", level="cloud", root_directory=PurePosixPath(root / "backup"),
        retain_directory=PurePosixPath(root / "retain"), ram_disk=None, iterations=1,
        exclude_from_backup=False, restore_without_state=False, force_start=False,
        bandwidth_merge=0, image_format="qcow2", image_owner="root", image_group="root",
        image_mode=0o640, directory_owner="root", directory_group="root", directory_mode=0o750)
    vm = Entry.from_dict(f"sstVirtualMachine={VM},dc=x", {"sstVirtualMachine": VM})
    machine = Machine(name=VM, dn=vm.dn, node="n", pool=None, dhcp=(), subtree=(vm,),
                      disks=(Disk("vda", "file", str(live), "sstDisk=vda"),))
    ctx = StepContext(machine=machine, date=DATE, policy=policy, hypervisor=None,
                      journals=JournalStore(root / "state"))
    layout = ctx.layout()
    for directory in (layout.backup, layout.retain_root):
        directory.mkdir(parents=True, exist_ok=True)
    image = layout.backup_disk(str(live))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), f"{disk_mib}M"],
                   check=True, timeout=60)
    # Every third 8 MiB stretch written with random data: ~30 % allocated, scattered.
    commands = []
    for offset in range(0, disk_mib, 24):
        commands += ["-c", f"write -P {offset % 251 + 1} {offset}M 8M"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(image)], check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    state = layout.small_file("state", layout.backup)
    with open(state, "wb") as handle:
        for _ in range(state_mib):
            handle.write(os.urandom(MIB))
    xml = (f"<domain type='qemu'><name>{VM}</name><devices><disk type='file' device='disk'>"
           f"<driver name='qemu' type='qcow2'/><source file='{live}'/><target dev='vda'/>"
           f"</disk></devices></domain>")
    layout.small_file("xml", layout.backup).write_text(xml)
    storage.write_manifest(layout.backup, layout.manifest.name, {
        p.name: storage.file_sha256(p) for p in (image, state)})
    return ctx


def time_provbackup(ctx: StepContext) -> float:
    """Seconds for unretainLargeFiles, from a cold cache, working directory emptied first."""
    layout = ctx.layout()
    if layout.working.exists():
        storage.remove_tree(layout.working, layout.retain_root)
    drop_caches()
    start = time.monotonic()
    unretain_large_files(ctx)
    return time.monotonic() - start


def time_cp(ctx: StepContext, target: Path) -> tuple[float, float]:
    """Seconds for cp --sparse=always of the same files: until exit, and until fsynced."""
    layout = ctx.layout()
    files = [layout.backup_disk(ctx.machine.disks[0].source), layout.small_file("state", layout.backup)]
    if target.exists():
        subprocess.run(["rm", "-rf", str(target)], check=True, timeout=60)
    target.mkdir(parents=True)
    drop_caches()
    start = time.monotonic()
    subprocess.run(["cp", "--sparse=always", *map(str, files), str(target)], check=True,
                   timeout=600)
    exited = time.monotonic() - start
    for path in target.iterdir():
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return exited, time.monotonic() - start


def main() -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-mib", type=int, default=1024)
    parser.add_argument("--state-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pb-bench-restore-", dir=args.dir) as scratch:
        root = Path(scratch)
        ctx = build_backup(root, args.disk_mib, args.state_mib)
        cold = drop_caches()
        ours, cp_exit, cp_sync = [], [], []
        for _ in range(args.repeat):
            ours.append(time_provbackup(ctx))
            exited, synced = time_cp(ctx, root / "cp")
            cp_exit.append(exited)
            cp_sync.append(synced)
        ours_m, exit_m, sync_m = (statistics.median(x) for x in (ours, cp_exit, cp_sync))
        data = sum(p.stat().st_blocks * 512 for p in ctx.layout().backup.iterdir())
    print("## Restore throughput (unretainLargeFiles vs cp --sparse=always)\n")
    print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"kernel {platform.release()}; page cache {'dropped' if cold else 'NOT dropped'} "
          f"before every copy; median of {args.repeat}")
    print(f"- files: a {args.disk_mib} MiB qcow2 image (~30 % written) and a "
          f"{args.state_mib} MiB state file, {data / MIB:.0f} MiB of data in all\n")
    print("| what | seconds | ratio (throughput vs provbackup) |")
    print("|---|---:|---:|")
    print(f"| provbackup unretainLargeFiles (copy, sha256 check, qemu-img check, fsync) | "
          f"{ours_m:.2f} | 1.00 |")
    print(f"| cp --sparse=always, then fsync (same durability) | {sync_m:.2f} | "
          f"provbackup = {sync_m / ours_m:.2f} of cp+fsync |")
    print(f"| cp --sparse=always, until it exits (data still in the page cache) | "
          f"{exit_m:.2f} | provbackup = {exit_m / ours_m:.2f} of cp |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
