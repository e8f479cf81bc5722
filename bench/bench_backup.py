"""Guest downtime, merge cost and node I/O of one backup: provbackup against the original's
method (implemented here with libvirt-python), measured in one run on real guests.

    .venv/bin/python bench/bench_backup.py [--quick] [--dir /var/tmp] [--only FIGURE]

Needs root (a private libvirtd, drop_caches). Starts its own libvirtd (tests/rig) in a
scratch directory and boots the rig's test guest (tests/rig/guest.py), one at a time:

1. Guest downtime, 1 GiB guest: a host thread tails the guest's console log every ~1 ms
   and stamps each PBREC line (the guest prints one every `record_interval_ms`) on
   arrival; the downtime is the largest gap between arrivals around the operation minus
   the normal gap (median of the gaps before it). (A record is printed only once it is
   durable on the guest's disk, so the gap also holds any wait of the guest's own
   synchronous writes.) provbackup: its snapshot step (live external snapshot with memory
   file), whose own measured downtime is shown beside it. Original: virDomainSave, move
   the image, new qcow2 overlay at the original path, virDomainRestore with a corrected
   XML. Beside each run: when the guest was stopped according to the lifecycle events on
   the benchmark's own connection, and where the console gap began and ended against
   that. Median of N per method; the methods alternate on the same guest, which is put
   back on a standalone image between runs (provbackup: merge + retain; original:
   blockpull).
2. Merge cost: a 2 GiB disk whose base holds ~1.94 GiB of data (qemu-io, from 64 MiB on,
   clear of the guest's records); snapshot; the guest writes 20 MiB into the overlay (dd
   through the guest agent); page cache dropped; then provbackup's
   LibvirtHypervisor.commit (active commit + pivot) or the original's full blockPull,
   alternating on the same guest (every run gets a fresh overlay on an equal base).
3. Node I/O of one full backup (provbackup snapshot -> merge -> retain; original save ->
   move -> overlay -> restore -> blockpull -> cp of image, state and XML -> cleanup) of a
   guest with memory in use and a full disk. Bytes are the kernel's per-process storage
   I/O counters (/proc/<pid>/io read_bytes, write_bytes - cancelled_write_bytes) summed
   over every process of the private libvirtd's mount namespace (supervisor, libvirtd,
   QEMU, libvirt_iohelper; a dead process's counts are added to its reaper's) and this
   process (with its reaped children: qemu-img, cp), read before and after (after a
   sync). Three page-cache regimes: dropped once before the backup ("warm": the cache
   keeps what the backup itself touched), before each phase ("phase": snapshot, merge
   and retain are separate requests), before every step ("step": every byte a step
   touches goes to or comes from storage). The block device's own counters
   (/proc/diskstats) are shown as a cross-check.

provbackup runs as it is, nothing patched: its own steps (snapshot, merge, retain) with
its own LibvirtHypervisor, whose snapshot fdatasyncs the memory file every 10 ms while
libvirt writes it (always on). Two configurations of each method (figures 1 and 3):
- default: no RAM disk; provbackup's memory file and the original's state file go to the
  working (retain) directory on the scratch disk;
- RAM disk: provbackup with `sstBackupRamDiskLocation` (BackupPolicy.ram_disk) set to a
  directory on /dev/shm (a tmpfs; the private libvirtd runs in its own mount namespace
  and sees only mounts that existed when it started, /dev/shm is one): snapshot writes the
  memory state there, retain copies it into the backup directory and frees it. The
  original had that setting too, so it gets the same RAM disk in its own row (like with
  like): save writes the state file there, restore reads it from there, and the cp of the
  retain phase copies it from there (the leanest use of a RAM disk by that method).

The output names the provbackup commit measured (and whether the files it runs differ
from it).

Progress goes to stderr; the results (per-run lines, then a Markdown summary with the
machine) to stdout. Everything is removed at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree as ET

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libvirt  # noqa: E402
import libvirt_qemu  # noqa: E402

from provbackup.directory.entry import Entry  # noqa: E402
from provbackup.directory.machine import Disk, Machine  # noqa: E402
from provbackup.directory.resolve import BackupPolicy  # noqa: E402
from provbackup.hypervisor.libvirt import LibvirtHypervisor, start_event_loop  # noqa: E402
from provbackup.workflow.context import StepContext  # noqa: E402
from provbackup.workflow.journal import JournalStore  # noqa: E402
from provbackup.workflow.merge import merge  # noqa: E402
from provbackup.workflow.retain import retain  # noqa: E402
from provbackup.workflow.snapshot import snapshot  # noqa: E402
from tests.rig import guest as guestlib  # noqa: E402
from tests.rig.libvirtd import Libvirtd, RigError, run  # noqa: E402

MIB = 1 << 20
DATA_START_MIB = 64  # filled data starts here, far above the records (1 MiB + seq * 512)
POLL = 0.02  # block job polling, as provbackup's
TAIL_POLL = 0.001
BOOT_TIMEOUT = 120.0
_PBREC = re.compile(rb"PBREC (\d+) (\d+)")
PB = "provbackup"
ORIG = "original"
PB_RAM = "provbackup, RAM disk (sstBackupRamDiskLocation on tmpfs)"
ORIG_RAM = "original, RAM disk (state file on tmpfs)"
_UNDEFINE = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
             | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
             | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)


@dataclass(frozen=True)
class Sizes:
    """What one run measures; --quick shrinks it."""

    repeat: int
    downtime_memory_mib: int
    record_interval_ms: int
    merge_disk_mib: int
    merge_new_mib: int
    io_memory_mib: int
    io_memory_used_mib: int
    io_disk_mib: int


FULL = Sizes(repeat=3, downtime_memory_mib=1024, record_interval_ms=10, merge_disk_mib=2048,
             merge_new_mib=20, io_memory_mib=512, io_memory_used_mib=256, io_disk_mib=1024)
QUICK = Sizes(repeat=1, downtime_memory_mib=256, record_interval_ms=10, merge_disk_mib=512,
              merge_new_mib=20, io_memory_mib=256, io_memory_used_mib=32, io_disk_mib=256)


def log(message: str) -> None:
    """Progress, on stderr; stdout carries the results."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def out(line: str = "") -> None:
    """One line of results on stdout."""
    print(line, flush=True)


def drop_caches() -> None:
    """Write back and drop the page cache (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def fmt_mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


# --- the console tailer ------------------------------------------------------------------

class ConsoleTail(threading.Thread):
    """Stamps each PBREC line of a console log with the host's monotonic clock on arrival."""

    def __init__(self, path: Path, poll: float = TAIL_POLL) -> None:
        super().__init__(name=f"tail-{path.name}", daemon=True)
        self.path, self.poll = path, poll
        self.records: list[tuple[float, int]] = []  # (arrival, seq)
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def run(self) -> None:
        fd, pos, partial = None, 0, b""
        try:
            while not self._stopping.is_set():
                if fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        self._stopping.wait(self.poll)
                        continue
                data = os.pread(fd, 1 << 16, pos)
                if data:
                    now = time.monotonic()
                    pos += len(data)
                    lines = (partial + data).split(b"\n")
                    partial = lines.pop()
                    found = [(now, int(m[1])) for line in lines if (m := _PBREC.search(line))]
                    if found:
                        with self._lock:
                            self.records.extend(found)
                    if len(data) == 1 << 16:
                        continue  # more waiting: read on at once
                self._stopping.wait(self.poll)
        finally:
            if fd is not None:
                os.close(fd)

    def stop(self) -> None:
        self._stopping.set()

    def snapshot(self) -> list[tuple[float, int]]:
        with self._lock:
            return list(self.records)

    def wait_after(self, moment: float, count: int, timeout: float = 60.0) -> None:
        """Wait until `count` records arrived after `moment`."""
        deadline = time.monotonic() + timeout
        while sum(1 for t, _ in self.snapshot() if t > moment) < count:
            if time.monotonic() > deadline:
                raise RigError(f"the guest printed fewer than {count} records within "
                               f"{timeout} s after the operation; console: "
                               f"{guestlib.console_tail(self.path, 5)}")
            time.sleep(0.01)

    def gap(self, start: float, end: float) -> tuple[tuple[float, float], float, list[int]]:
        """((arrivals before and after the largest gap touching [start, end]), normal gap,
        lost seqs)."""
        records = self.snapshot()
        times = [t for t, _ in records]
        gaps = [(a, b) for a, b in zip(times, times[1:]) if b >= start and a <= end]
        before = [b - a for a, b in zip(times, times[1:]) if start - 2.0 <= a and b < start]
        seqs = [s for t, s in records if start - 2.0 <= t <= end + 2.0]
        lost = [s for a, b in zip(seqs, seqs[1:]) if b != a + 1 for s in (a, b)]
        if not gaps or len(before) < 10:
            raise RigError(f"too few records around the operation ({len(gaps)} gaps in it, "
                           f"{len(before)} before it)")
        return max(gaps, key=lambda g: g[1] - g[0]), statistics.median(before), lost


# --- guests ----------------------------------------------------------------------------------

@dataclass
class TestGuest:
    """One rig guest: its domain, its disk, its console and a tailer on it."""

    name: str
    dom: libvirt.virDomain
    disk: Path
    console: Path
    tail: ConsoleTail

    def agent(self, command: str, arguments: dict | None = None, timeout: int = 10) -> dict:
        request = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        return json.loads(libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(request),
                                                         timeout, 0))

    def wait_for_agent(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.agent("guest-ping", timeout=2)
                return
            except libvirt.libvirtError as e:
                if time.monotonic() > deadline:
                    raise RigError(f"guest agent of {self.name} silent: {e}") from e
                time.sleep(0.1)

    def exec(self, argv: list[str], timeout: float = 300.0) -> str:
        """Run argv in the guest through the agent; its stderr+stdout; raise on failure."""
        pid = self.agent("guest-exec", {"path": argv[0], "arg": argv[1:],
                                        "capture-output": True})["return"]["pid"]
        deadline = time.monotonic() + timeout
        while True:
            status = self.agent("guest-exec-status", {"pid": pid})["return"]
            if status["exited"]:
                break
            if time.monotonic() > deadline:
                raise RigError(f"{argv} in the guest did not finish within {timeout} s")
            time.sleep(0.05)
        text = (base64.b64decode(status.get("err-data", "")) +
                base64.b64decode(status.get("out-data", ""))).decode(errors="replace")
        if status.get("exitcode") != 0:
            raise RigError(f"{argv} in the guest exited {status.get('exitcode')}: {text}")
        return text


def fill_image(path: Path, size_mib: int, start_mib: int = DATA_START_MIB) -> int:
    """A qcow2 image of size_mib whose every cluster from start_mib on holds data."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", path, f"{size_mib}M"])
    commands = []
    for offset in range(start_mib, size_mib, 512):
        length = min(512, size_mib - offset)
        commands += ["-c", f"write -q -P 0x5a {offset}M {length}M"]
    if commands:
        run(["qemu-io", "-f", "qcow2", *commands, path], timeout=600)
    return (size_mib - start_mib) * MIB


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


# --- provbackup's steps, as the daemon would call them ---------------------------------------

def step_context(hv: LibvirtHypervisor, guest: TestGuest, work: Path, date: str,
                 ram_disk: Path | None = None) -> StepContext:
    """A StepContext for `guest` (one file disk vda), roots under `work`; with ram_disk,
    the policy's sstBackupRamDiskLocation is that directory."""
    for root in ("pb-backup", "pb-retain"):
        (work / root).mkdir(exist_ok=True)
    policy = BackupPolicy(source_dn="bench", level="cloud",
                          root_directory=PurePosixPath(work / "pb-backup"),
                          retain_directory=PurePosixPath(work / "pb-retain"),
                          ram_disk=PurePosixPath(ram_disk) if ram_disk else None,
                          iterations=1, exclude_from_backup=False, restore_without_state=False,
                          force_start=False, bandwidth_merge=0, image_format="qcow2",
                          image_owner="root", image_group="root", image_mode=0o640,
                          directory_owner="root", directory_group="root", directory_mode=0o750)
    vm = Entry.from_dict(f"sstVirtualMachine={guest.name},ou=virtual machines,dc=bench",
                         {"sstVirtualMachine": guest.name, "sstNode": "node-01"})
    machine = Machine(name=guest.name, dn=vm.dn, node="node-01", pool=None,
                      disks=(Disk("vda", "file", str(guest.disk), "sstDisk=vda"),),
                      dhcp=(), subtree=(vm,))
    return StepContext(machine=machine, date=date, policy=policy, hypervisor=hv,
                       journals=JournalStore(work / "pb-state"),
                       ldif=f"dn: {vm.dn}\nsstVirtualMachine: {guest.name}\n")


def check_memory_file_freed(ctx: StepContext) -> None:
    """After retain: the memory state is in the backup and gone from where snapshot wrote
    it (with a RAM disk, retain frees the RAM)."""
    layout = ctx.layout()
    if layout.memory_file.exists():
        raise RigError(f"retain left the memory file {layout.memory_file}")
    if not layout.small_file("state", layout.backup).exists():
        raise RigError(f"no state file in the backup {layout.backup}")


# --- the original's method, with libvirt-python -----------------------------------------------

@dataclass
class Original:
    """The Perl daemon's backup of one VM: save, move, overlay, restore; pull; cp."""

    conn: libvirt.virConnect
    guest: TestGuest
    retain_dir: Path  # the retain (working) directory of this iteration
    backup_dir: Path
    state_dir: Path | None = None  # where the state file goes; default retain_dir
    moved: Path = field(init=False)
    state: Path = field(init=False)
    xml: Path = field(init=False)

    def __post_init__(self) -> None:
        self.retain_dir.mkdir(parents=True, exist_ok=True)
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        self.moved = self.retain_dir / self.guest.disk.name
        self.state = (self.state_dir or self.retain_dir) / \
            f"{self.guest.name}.{self.retain_dir.name}.state"
        self.xml = self.retain_dir / f"{self.guest.name}.xml"

    def save(self) -> None:
        self.xml.write_text(self.guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        self.guest.dom.save(str(self.state))

    def move(self) -> None:
        os.rename(self.guest.disk, self.moved)

    def overlay(self) -> None:
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", self.moved,
             self.guest.disk])

    def restore(self) -> None:
        # TEST-RIG pitfall: the saved XML says the disk has no backing image. Drop that
        # claim so libvirt reads the chain from the overlay's header.
        root = ET.fromstring(self.conn.saveImageGetXMLDesc(str(self.state), 0))
        for disk in root.iterfind("devices/disk"):
            if disk.find("target").get("dev") == "vda":
                disk.find("driver").set("type", "qcow2")
                for below in disk.findall("backingStore"):
                    disk.remove(below)
        self.conn.restoreFlags(str(self.state), ET.tostring(root, encoding="unicode"),
                               libvirt.VIR_DOMAIN_SAVE_RUNNING)
        if backing_of(self.guest.dom) != str(self.moved):
            raise RigError(f"restored {self.guest.name} is not on {self.moved}")

    def snapshot(self) -> dict[str, float]:
        """The original's snapshot phase (the guest is stopped from save to restore); the
        seconds of each part."""
        times = {}
        for name, part in (("save", self.save), ("move", self.move),
                           ("overlay", self.overlay), ("restore", self.restore)):
            t0 = time.monotonic()
            part()
            times[name] = time.monotonic() - t0
        return times

    def pull(self) -> None:
        block_pull(self.guest.dom)

    def cp(self) -> None:
        for src in (self.moved, self.state, self.xml):
            run(["cp", src, self.backup_dir / src.name], timeout=900)

    def cleanup(self) -> None:
        for path in (self.moved, self.state, self.xml):
            path.unlink(missing_ok=True)


def backing_of(dom: libvirt.virDomain, target: str = "vda") -> str | None:
    """The file right below the disk's top image, from the live XML."""
    root = ET.fromstring(dom.XMLDesc(0))
    for disk in root.iterfind("devices/disk"):
        if disk.find("target").get("dev") == target:
            src = disk.find("backingStore/source")
            return src.get("file") if src is not None else None
    raise RigError(f"no disk {target}")


def block_pull(dom: libvirt.virDomain, target: str = "vda") -> None:
    """A full blockPull, polled every POLL s until the disk has no backing image."""
    dom.blockPull(target, 0, 0)
    deadline = time.monotonic() + 1800
    while dom.blockJobInfo(target, 0) or backing_of(dom, target) is not None:
        if time.monotonic() > deadline:
            raise RigError("blockPull did not finish")
        time.sleep(POLL)


# --- I/O accounting -------------------------------------------------------------------------

CACHE_MODES = ("warm", "phase", "step")
IO_FIELDS = ("read_bytes", "write_bytes", "cancelled_write_bytes")


class IoMeter:
    """Storage I/O of the libvirtd namespace's processes and of this process, and of the device."""

    def __init__(self, libvirtd_pid: int, directory: Path) -> None:
        self.namespace = os.readlink(f"/proc/{libvirtd_pid}/ns/mnt")
        st = os.stat(directory)
        self.device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        self.device_name = Path(os.path.realpath(f"/sys/dev/block/{self.device}")).name

    def _pids(self) -> list[int]:
        pids = [os.getpid()]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/mnt") == self.namespace:
                        pids.append(int(entry))
                except OSError:
                    pass
        return pids

    def read(self) -> dict[str, int]:
        total = dict.fromkeys(IO_FIELDS, 0)
        for pid in self._pids():
            try:
                with open(f"/proc/{pid}/io") as f:
                    for line in f:
                        key, value = line.split(":")
                        if key in total:
                            total[key] += int(value)
            except OSError:
                pass  # exited: its reaper has its counts now
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if f"{fields[0]}:{fields[1]}" == self.device:
                    total["dev_read"] = int(fields[5]) * 512
                    total["dev_write"] = int(fields[9]) * 512
        return total


def io_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    d = {k: after[k] - before[k] for k in after}
    return {"read": d["read_bytes"], "write": d["write_bytes"] - d["cancelled_write_bytes"],
            "dev_read": d["dev_read"], "dev_write": d["dev_write"]}


def filesystem(path: Path) -> str:
    """'<type> on <device>' of the filesystem holding path, from /proc/self/mounts."""
    real, best, found = os.path.realpath(path), "", "?"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        dev, mount, kind = line.split()[:3]
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, found = mount, f"{kind} on {dev}"
    return found


def provbackup_version() -> str:
    """The commit measured, and which of the provbackup modules loaded differ from it."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else ""

    commit = git("log", "-1", "--format=%h %cI %s").strip() or "? (not a git checkout)"
    loaded = sorted({str(Path(m.__file__).resolve().relative_to(repo))
                     for m in list(sys.modules.values())
                     if getattr(m, "__file__", None)
                     and Path(m.__file__).resolve().is_relative_to(repo / "provbackup")})
    changed = [line[3:] for line in git("status", "--porcelain", "--", *loaded).splitlines()]
    differ = f"these differ from it: {', '.join(changed)}" if changed else "none differs from it"
    return f"commit {commit}; of the {len(loaded)} provbackup modules loaded, {differ}"


# --- the benchmark ---------------------------------------------------------------------------

class Bench:
    """The private libvirtd, its guests and the scratch directory; all removed by close()."""

    def __init__(self, sizes: Sizes, work: Path) -> None:
        self.sizes, self.work = sizes, work
        self.libvirtd = Libvirtd(work / "libvirtd")
        self.conn: libvirt.virConnect | None = None
        self.hv: LibvirtHypervisor | None = None
        self.guests: list[TestGuest] = []
        self.artifacts = None
        self._dates = 0
        self.summary: dict[str, tuple] = {}
        self.shm: Path | None = None  # the RAM disk (a directory on /dev/shm)
        self.foreign: list[tuple[int, float]] = []  # (other QEMUs, load average) samples
        self.version = "?"  # provbackup's commit at the start
        self.lifecycle: list[tuple[float, str, int]] = []  # (arrival, domain, event)
        self._lifecycle_lock = threading.Lock()

    def start(self) -> None:
        self.version = provbackup_version()  # its modules are loaded by now
        log(f"building/finding the test guest; starting a private libvirtd in {self.work}")
        self.artifacts = guestlib.build_guest()
        self.libvirtd.start()
        start_event_loop()  # also silences libvirt's printing of errors we handle
        self.conn = libvirt.open(self.libvirtd.uri)
        # Our own watch on stops and starts, beside the one provbackup keeps for its figure
        self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         self._on_lifecycle, None)
        self.hv = LibvirtHypervisor(self.libvirtd.uri)
        (self.work / "images").mkdir()
        if filesystem(Path("/dev/shm")).startswith("tmpfs"):
            self.shm = Path(tempfile.mkdtemp(prefix="pbbench-", dir="/dev/shm"))

    def close(self) -> None:
        for g in self.guests:
            g.tail.stop()
        if self.conn is not None:
            for g in self.guests:
                self._remove(g)
        for closer in (self.hv.close if self.hv else None,
                       self.conn.close if self.conn else None):
            try:
                if closer:
                    closer()
            except libvirt.libvirtError:
                pass
        try:
            self.libvirtd.stop()
        finally:
            if self.shm is not None:
                shutil.rmtree(self.shm, ignore_errors=True)

    def _remove(self, g: TestGuest) -> None:
        for action in (g.dom.destroy, lambda: g.dom.undefineFlags(_UNDEFINE)):
            try:
                action()
            except libvirt.libvirtError:
                pass

    def _on_lifecycle(self, _conn, dom, event, _detail, _opaque) -> None:
        now = time.monotonic()
        with self._lifecycle_lock:
            self.lifecycle.append((now, dom.name(), event))

    def gap_vs_stop(self, name: str, since: float, last: float, first: float) -> str:
        """When the guest was stopped (first SUSPENDED/STOPPED event after `since` to the
        last RESUMED/STARTED event after it, waited for up to 1 s) against the console gap
        (`last` record before it, `first` after it): how much of the gap is the stop."""
        deadline = time.monotonic() + 1.0
        while True:
            with self._lifecycle_lock:
                seen = [(t, e) for t, n, e in self.lifecycle if n == name and t >= since]
            stops = [t for t, e in seen if e in (libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                                                 libvirt.VIR_DOMAIN_EVENT_STOPPED)]
            goes = [t for t, e in seen if stops and t > stops[0] and e in (
                libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_STARTED)]
            if goes or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not goes:
            return f"no stop/start events seen ({len(seen)} events)"
        stop, go = stops[0], goes[-1]
        return (f"stopped {(go - stop) * 1000:.0f}; gap began {(stop - last) * 1000:.0f} "
                f"before the stop, ended {(first - go) * 1000:.0f} after the start")

    def note_load(self) -> None:
        """Sample how busy the machine is apart from us: QEMUs of others, load average."""
        ours = os.readlink(f"/proc/{self.libvirtd.pid}/ns/mnt") if self.libvirtd.pid else None
        others = 0
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().startswith(
                        "qemu-system") and os.readlink(f"/proc/{entry}/ns/mnt") != ours:
                    others += 1
            except OSError:
                pass
        self.foreign.append((others, os.getloadavg()[0]))

    def date(self) -> str:
        self._dates += 1
        moment = datetime.datetime(2026, 1, 1) + datetime.timedelta(minutes=self._dates)
        return moment.strftime("%Y%m%dT%H%M%SZ")

    def boot(self, name: str, disk: Path, memory_mib: int, interval_ms: int) -> TestGuest:
        console = self.work / f"{name}.console.log"
        xml = guestlib.domain_xml(name, [disk], self.artifacts, memory_mib=memory_mib,
                                  console_log=console, record_interval_ms=interval_ms)
        dom = self.conn.defineXML(xml)
        tail = ConsoleTail(console)
        guest = TestGuest(name, dom, disk, console, tail)
        self.guests.append(guest)
        tail.start()
        log(f"booting {name} ({memory_mib} MiB, {disk.name})")
        dom.create()
        guestlib.wait_for_records(console, 1, BOOT_TIMEOUT)
        guest.wait_for_agent()
        return guest

    def retire(self, guest: TestGuest) -> None:
        guest.tail.stop()
        self._remove(guest)
        self.guests.remove(guest)

    # --- figure 1 ---------------------------------------------------------------------

    def downtime(self) -> None:
        s = self.sizes
        self.note_load()
        out(f"## 1. Guest downtime ({s.downtime_memory_mib} MiB guest, records every "
            f"{s.record_interval_ms} ms, {s.repeat} run(s) per method)\n")
        disk = guestlib.make_disk(self.work / "images" / "pbd-vda.qcow2", 64)
        g = self.boot("pbd", disk, s.downtime_memory_mib, s.record_interval_ms)
        g.tail.wait_after(time.monotonic(), 100)
        methods = [PB, ORIG] + ([PB_RAM, ORIG_RAM] if self.shm is not None else [])
        results: dict[str, list[float]] = {m: [] for m in methods}
        own: dict[str, list[float]] = {m: [] for m in methods}
        out("| run | method | real downtime (console gap - normal gap) ms | largest gap ms "
            "| normal gap ms | method's own figure ms | operation ms | records lost "
            "| guest stopped (lifecycle events) and the console gap around it, ms "
            "| parts ms |")
        out("|---|---|---:|---:|---:|---:|---:|---|---|---|")
        for rep in range(s.repeat):
            for method in methods:
                os.sync()
                time.sleep(0.5)
                g.tail.wait_after(time.monotonic(), 100)  # a clean stretch before
                log(f"downtime run {rep + 1}: {method}")
                t0, t1, own_ms, parts, put_back = self._stop_and_go(g, method, rep)
                g.tail.wait_after(t1 + 0.5, 20)
                (last, first), normal, lost = g.tail.gap(t0, t1)
                largest = first - last
                real = (largest - normal) * 1000
                results[method].append(real)
                own[method].append(own_ms)
                out(f"| {rep + 1} | {method} | {real:.0f} | {largest * 1000:.0f} "
                    f"| {normal * 1000:.1f} | {own_ms:.0f} | {(t1 - t0) * 1000:.0f} "
                    f"| {lost or 'none'} | {self.gap_vs_stop(g.name, t0, last, first)} "
                    f"| {parts} |")
                put_back()  # on a standalone image at the original path again
                if backing_of(g.dom) is not None:
                    raise RigError(f"{g.name} is not back on a standalone image")
        med = {m: statistics.median(v) for m, v in results.items()}
        own_med = {m: statistics.median(v) for m, v in own.items()}
        out(f"\nMedian real downtime, default (no RAM disk): provbackup {med[PB]:.0f} ms "
            f"(its own figure {own_med[PB]:.0f} ms), original {med[ORIG]:.0f} ms "
            f"(save..restore {own_med[ORIG]:.0f} ms); ratio {ratio(med[PB], med[ORIG])} "
            f"(target <= 0.1)")
        if self.shm is not None:
            out(f"RAM disk ({self.shm}) for both: provbackup {med[PB_RAM]:.0f} ms (its own "
                f"figure {own_med[PB_RAM]:.0f} ms), original {med[ORIG_RAM]:.0f} ms "
                f"(save..restore {own_med[ORIG_RAM]:.0f} ms); ratio "
                f"{ratio(med[PB_RAM], med[ORIG_RAM])}; provbackup with the RAM disk vs the "
                f"original without: {ratio(med[PB_RAM], med[ORIG])}")
        out("")
        self.summary["downtime"] = (med, own_med)
        self.retire(g)
        disk.unlink()

    def _stop_and_go(self, g: TestGuest, method: str, rep: int):
        """Run one method's snapshot; (t0, t1, own figure ms, parts, put-back callable)."""
        if method in (PB, PB_RAM):
            ctx = step_context(self.hv, g, self.work, self.date(),
                               ram_disk=self.shm if method == PB_RAM else None)
            t0 = time.monotonic()
            times = snapshot(ctx)
            t1 = time.monotonic()

            def put_back() -> None:
                merge(ctx)
                retain(ctx)
                check_memory_file_freed(ctx)
                shutil.rmtree(ctx.layout().backup)
            return (t0, t1, times["downtime"] * 1000,
                    f"snapshot step {times['snapshot'] * 1000:.0f}", put_back)
        run_dir = f"d{'ram' if method == ORIG_RAM else 'disk'}{rep}"
        orig = Original(self.conn, g, self.work / "orig-retain" / run_dir,
                        self.work / "orig-backup" / run_dir,
                        state_dir=self.shm if method == ORIG_RAM else None)
        t0 = time.monotonic()
        times = orig.snapshot()
        t1 = time.monotonic()

        def put_back() -> None:
            orig.pull()
            orig.cleanup()
        return (t0, t1, (t1 - t0) * 1000,  # save start to restore return
                ", ".join(f"{k} {v * 1000:.0f}" for k, v in times.items()), put_back)

    # --- figure 2 ---------------------------------------------------------------------

    def merge_cost(self) -> None:
        s = self.sizes
        self.note_load()
        merge_dir = self.work / "merge"
        merge_dir.mkdir()
        base = self.work / "images" / "pbm-vda.qcow2"
        log(f"filling a {s.merge_disk_mib} MiB image from {DATA_START_MIB} MiB on")
        data = fill_image(base, s.merge_disk_mib)
        out(f"## 2. Merge cost ({s.merge_disk_mib} MiB disk, {fmt_mib(data)} MiB of data in the "
            f"base, {s.merge_new_mib} MiB written into the overlay, {s.repeat} run(s) per "
            f"method, page cache dropped before each)\n")
        g = self.boot("pbm", base, 256, 50)
        seek = min(1024, s.merge_disk_mib // 2)
        results: dict[str, list[float]] = {"commit": [], "pull": []}
        out("| run | method | seconds | overlay allocated MiB | top image after |")
        out("|---|---|---:|---:|---|")
        top = base  # the image the domain runs on between runs
        for rep in range(s.repeat):
            for method in ("commit", "pull"):
                overlay = merge_dir / f"overlay-{rep}-{method}.qcow2"
                memory = merge_dir / f"state-{rep}-{method}"
                self.hv.snapshot(g.name, {"vda": overlay}, memory)  # the same chain for both
                memory.unlink()
                g.exec(["/bin/dd", "if=/dev/urandom", "of=/dev/vda", "bs=1M",
                        f"count={s.merge_new_mib}", f"seek={seek}", "oflag=direct"])
                size = allocated(overlay)
                drop_caches()
                log(f"merge run {rep + 1}: {method}")
                t0 = time.perf_counter()
                if method == "commit":
                    self.hv.commit(g.name, "vda")
                    elapsed = time.perf_counter() - t0
                    overlay.unlink()  # provbackup's merge removes it too
                else:
                    block_pull(g.dom)
                    elapsed = time.perf_counter() - t0
                    top.unlink()  # the old base is out of the chain now
                    top = overlay
                results[method].append(elapsed)
                out(f"| {rep + 1} | {method} | {elapsed:.3f} | {fmt_mib(size)} | {top.name} |")
        commit, pull = statistics.median(results["commit"]), statistics.median(results["pull"])
        out(f"\nMedian: commit + pivot {commit:.3f} s, full blockPull {pull:.3f} s; ratio "
            f"{ratio(commit, pull)} (target <= 0.1)\n")
        self.summary["merge"] = (commit, pull)
        self.retire(g)
        top.unlink()

    # --- figure 3 ---------------------------------------------------------------------

    def node_io(self) -> None:
        s = self.sizes
        self.note_load()
        disk = self.work / "images" / "pbi-vda.qcow2"
        log(f"filling a {s.io_disk_mib} MiB image from {DATA_START_MIB} MiB on")
        data = fill_image(disk, s.io_disk_mib)
        g = self.boot("pbi", disk, s.io_memory_mib, 50)
        log(f"putting {s.io_memory_used_mib} MiB of random data into the guest's memory")
        # /run is a tmpfs limited to half the memory: a bigger one of its own
        g.exec(["/bin/mount", "-t", "tmpfs", "-o", "size=90%", "fill", "/tmp"])
        g.exec(["/bin/dd", "if=/dev/urandom", "of=/tmp/fill", "bs=1M",
                f"count={s.io_memory_used_mib}"], timeout=600)
        meter = IoMeter(self.libvirtd.pid, self.work)
        out(f"## 3. Node I/O of one full backup ({s.io_memory_mib} MiB guest with "
            f"{s.io_memory_used_mib} MiB of data in a tmpfs, {s.io_disk_mib} MiB disk with "
            f"{fmt_mib(data)} MiB of data)\n")
        out("Counted: /proc/<pid>/io (read_bytes; write_bytes - cancelled_write_bytes) of "
            "every process in the private libvirtd's mount namespace (supervisor, libvirtd, "
            "QEMU, iohelper; the dead ones through their reaper) + this process with its "
            f"reaped children (qemu-img, cp); device {meter.device_name} ({meter.device}) from "
            "/proc/diskstats as a cross-check (it also sees the ext4 journal and anything "
            "else running on the machine).\n")
        out("Page cache: *warm* = dropped once before the backup; *phase* = dropped before "
            "each phase (snapshot, merge, retain: separate requests, possibly far apart); "
            "*step* = dropped before every step (every byte a step touches comes from or "
            "goes to storage).\n")
        drop_caches()
        before = meter.read()
        time.sleep(5.0)
        idle = io_delta(before, meter.read())
        out(f"Background (guest idle but for its records), 5 s: read {fmt_mib(idle['read'])} "
            f"MiB, write {fmt_mib(idle['write'])} MiB ({idle['write'] / 5 / 1024:.0f} KiB/s).\n")
        out("| cache | method | phase: step | seconds | read MiB | write MiB | device read MiB "
            "| device write MiB |")
        out("|---|---|---|---:|---:|---:|---:|---:|")
        totals: dict[tuple[str, str], dict] = {}
        methods = [PB, ORIG] + ([PB_RAM, ORIG_RAM] if self.shm is not None else [])
        for cache in CACHE_MODES:
            for method in methods:
                log(f"node I/O, cache {cache}: {method}")
                totals[(cache, method)] = self._one_backup(g, meter, method, cache)
        self.summary["io"] = totals
        out("")
        for cache in CACHE_MODES:
            pb, orig = totals[(cache, PB)], totals[(cache, ORIG)]
            out(f"- cache {cache}, default: provbackup read {fmt_mib(pb['read'])} + write "
                f"{fmt_mib(pb['write'])} = {fmt_mib(pb['read'] + pb['write'])} MiB; original "
                f"read {fmt_mib(orig['read'])} + write {fmt_mib(orig['write'])} = "
                f"{fmt_mib(orig['read'] + orig['write'])} MiB; ratio read "
                f"{ratio(pb['read'], orig['read'])}, write {ratio(pb['write'], orig['write'])}, "
                f"total {ratio(pb['read'] + pb['write'], orig['read'] + orig['write'])} "
                f"(target <= 0.55)")
            if (cache, PB_RAM) in totals:
                w, o = totals[(cache, PB_RAM)], totals[(cache, ORIG_RAM)]
                out(f"  - RAM disk for both: provbackup read {fmt_mib(w['read'])} + write "
                    f"{fmt_mib(w['write'])} = {fmt_mib(w['read'] + w['write'])} MiB; original "
                    f"read {fmt_mib(o['read'])} + write {fmt_mib(o['write'])} = "
                    f"{fmt_mib(o['read'] + o['write'])} MiB; ratio "
                    f"{ratio(w['read'] + w['write'], o['read'] + o['write'])}; provbackup with "
                    f"the RAM disk vs the original without: "
                    f"{ratio(w['read'] + w['write'], orig['read'] + orig['write'])}")
        pb, orig = totals[(CACHE_MODES[0], PB)], totals[(CACHE_MODES[0], ORIG)]
        out(f"\nState file: provbackup {fmt_mib(pb['state'])} MiB, original "
            f"{fmt_mib(orig['state'])} MiB; disk copy {fmt_mib(pb['image'])} MiB.\n")
        self.retire(g)
        disk.unlink()

    def _one_backup(self, g: TestGuest, meter: IoMeter, method: str, cache: str) -> dict:
        """One full backup, step by step, with the I/O of each; the totals."""
        drop_caches()
        steps: list[tuple[str, float, dict]] = []
        start = meter.read()
        last = start
        began = time.monotonic()
        phase_seen = set()

        def step(phase: str, name: str, action) -> None:
            nonlocal last
            if steps and (cache == "step" or (cache == "phase" and phase not in phase_seen)):
                drop_caches()
            phase_seen.add(phase)
            t0 = time.monotonic()
            action()
            elapsed = time.monotonic() - t0
            now = meter.read()
            steps.append((f"{phase}: {name}", elapsed, io_delta(last, now)))
            last = now

        if method in (PB, PB_RAM):
            ctx = step_context(self.hv, g, self.work, self.date(),
                               ram_disk=self.shm if method == PB_RAM else None)
            layout = ctx.layout()
            step("snapshot", "snapshot step", lambda: snapshot(ctx))
            state = allocated(layout.memory_file)
            step("merge", "merge step (export + commit)", lambda: merge(ctx))
            step("retain", "retain step", lambda: retain(ctx))
            check_memory_file_freed(ctx)
            image = allocated(layout.backup_disk(str(g.disk)))
            outputs = [layout.backup]
        else:
            date = self.date()
            orig = Original(self.conn, g, self.work / "orig-retain" / date,
                            self.work / "orig-backup" / date,
                            state_dir=self.shm if method == ORIG_RAM else None)
            step("snapshot", "save", orig.save)
            state = allocated(orig.state)
            step("snapshot", "move", orig.move)
            step("snapshot", "overlay", orig.overlay)
            step("snapshot", "restore", orig.restore)
            step("merge", "blockpull", orig.pull)
            step("retain", "cp image+state+xml", orig.cp)
            image = allocated(orig.backup_dir / orig.moved.name)
            step("retain", "remove retain files", orig.cleanup)
            outputs = [orig.backup_dir, orig.retain_dir]
        os.sync()
        end = meter.read()
        total = io_delta(start, end)
        wall = time.monotonic() - began
        for name, elapsed, d in steps:
            out(f"| {cache} | {method} | {name} | {elapsed:.2f} | {fmt_mib(d['read'])} "
                f"| {fmt_mib(d['write'])} | {fmt_mib(d['dev_read'])} | {fmt_mib(d['dev_write'])} |")
        out(f"| {cache} | **{method}** | **total** (with the final sync) | {wall:.2f} "
            f"| **{fmt_mib(total['read'])}** | **{fmt_mib(total['write'])}** "
            f"| {fmt_mib(total['dev_read'])} | {fmt_mib(total['dev_write'])} |")
        if backing_of(g.dom) is not None:
            raise RigError(f"{g.name} is not back on a standalone image after {method}")
        for path in outputs:
            shutil.rmtree(path, ignore_errors=True)
        total["state"], total["image"] = state, image
        return total

    # --- the summary ------------------------------------------------------------------

    def machine(self) -> list[str]:
        cpu = "?"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

        def version(n: int) -> str:
            return f"{n // 1000000}.{n // 1000 % 1000}.{n % 1000}"

        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                              text=True).stdout.splitlines()[0]
        mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) // 1024
        fs = filesystem(self.work)
        ram = f"{filesystem(self.shm)} ({self.shm})" if self.shm else "none (no tmpfs on /dev/shm)"
        now = provbackup_version()
        measured = self.version if now == self.version else \
            f"{self.version} (loaded at the start; by the end of the run: {now})"
        return [f"- provbackup: {measured}",
                f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
                f"- CPU: {cpu}, {os.cpu_count()} cores; {mem:,} MiB RAM",
                f"- kernel: Linux {platform.release()}; Python {platform.python_version()}",
                f"- libvirt {version(self.conn.getLibVersion())} (daemon), "
                f"libvirt-python {version(libvirt.getVersion())}; {qemu}; guests under TCG",
                f"- scratch directory: {fs}; RAM disk: {ram}",
                f"- others on the machine (sampled at each figure's start and at the end): "
                f"QEMU processes not ours {[n for n, _ in self.foreign]}, 1-min load "
                f"average {[round(x, 2) for _, x in self.foreign]}"]

    def print_summary(self) -> None:
        s = self.sizes
        self.note_load()
        out("## Summary\n")
        out("Default = no RAM disk. RAM disk = sstBackupRamDiskLocation on tmpfs for "
            "provbackup, the state file on the same tmpfs for the original (like with like); "
            "the ratio column also gives provbackup with the RAM disk against the original "
            "without one.\n")
        out("| figure | provbackup | original (baseline) | ratio | target | met |")
        out("|---|---:|---:|---:|---:|---|")

        def met(r: float, target: float) -> str:
            return "yes" if r <= target else "NO"

        if "downtime" in self.summary:
            med, own = self.summary["downtime"]
            pb, orig = med[PB], med[ORIG]
            r = pb / orig
            out(f"| guest downtime, {s.downtime_memory_mib} MiB guest (median of {s.repeat}), "
                f"default | {pb:.0f} ms (own figure {own[PB]:.0f} ms) | {orig:.0f} ms "
                f"(save..restore {own[ORIG]:.0f} ms) | {r:.3f} | <= 0.1 | {met(r, 0.1)} |")
            if PB_RAM in med:
                r = med[PB_RAM] / med[ORIG_RAM]
                out(f"| guest downtime, RAM disk | {med[PB_RAM]:.0f} ms (own figure "
                    f"{own[PB_RAM]:.0f} ms) | {med[ORIG_RAM]:.0f} ms (save..restore "
                    f"{own[ORIG_RAM]:.0f} ms) | {r:.3f} (vs original without: "
                    f"{med[PB_RAM] / orig:.3f}) | <= 0.1 | {met(r, 0.1)} |")
        if "merge" in self.summary:
            commit, pull = self.summary["merge"]
            r = commit / pull
            out(f"| merge: commit+pivot vs blockPull, {s.merge_disk_mib} MiB disk, "
                f"{s.merge_new_mib} MiB new (median of {s.repeat}) | {commit:.3f} s "
                f"| {pull:.3f} s | {r:.3f} | <= 0.1 | {met(r, 0.1)} |")
        if "io" in self.summary:
            io = self.summary["io"]

            def total(m: dict) -> float:
                return m["read"] + m["write"]

            for cache in CACHE_MODES:
                pb, orig = io[(cache, PB)], io[(cache, ORIG)]
                r = total(pb) / total(orig)
                out(f"| node I/O per backup, page cache {cache}, default (read + write MiB) "
                    f"| {fmt_mib(pb['read'])} + {fmt_mib(pb['write'])} = {fmt_mib(total(pb))} "
                    f"| {fmt_mib(orig['read'])} + {fmt_mib(orig['write'])} = "
                    f"{fmt_mib(total(orig))} | {r:.3f} (read {ratio(pb['read'], orig['read'])}, "
                    f"write {ratio(pb['write'], orig['write'])}) | <= 0.55 | {met(r, 0.55)} |")
                if (cache, PB_RAM) in io:
                    w, o = io[(cache, PB_RAM)], io[(cache, ORIG_RAM)]
                    r = total(w) / total(o)
                    out(f"| node I/O per backup, page cache {cache}, RAM disk "
                        f"| {fmt_mib(w['read'])} + {fmt_mib(w['write'])} = {fmt_mib(total(w))} "
                        f"| {fmt_mib(o['read'])} + {fmt_mib(o['write'])} = {fmt_mib(total(o))} "
                        f"| {r:.3f} (vs original without: {total(w) / total(orig):.3f}) "
                        f"| <= 0.55 | {met(r, 0.55)} |")
        out("")
        out("Machine:\n")
        for line in self.machine():
            out(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one run per method: checks that it works")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the scratch directory goes (a real disk, not tmpfs)")
    parser.add_argument("--only", choices=("downtime", "merge", "io"), action="append",
                        help="run only this figure (may be repeated)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: a private libvirtd and drop_caches")
    sizes = QUICK if args.quick else FULL
    figures = args.only or ["downtime", "merge", "io"]
    # The tailer must get the GIL within about a millisecond to stamp arrivals.
    sys.setswitchinterval(0.0005)

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell that starts us in the background leaves it ignored
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, terminate)
    work = Path(tempfile.mkdtemp(prefix="pbbench-", dir=args.dir))
    bench = Bench(sizes, work)
    try:
        bench.start()
        out(f"# provbackup backup benchmark{' (--quick)' if args.quick else ''}\n")
        if "downtime" in figures:
            bench.downtime()
        if "merge" in figures:
            bench.merge_cost()
        if "io" in figures:
            bench.node_io()
        bench.print_summary()
        return 0
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'})")
        return 130
    finally:
        log("cleaning up")
        try:
            bench.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
