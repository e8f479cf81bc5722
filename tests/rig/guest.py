"""provbackup's tiny test guest: build it once, define it, read what it wrote.

The guest is Debian's kernel booted directly with a busybox initramfs whose
init (guest_src/init) starts the QEMU guest agent and pbrec
(guest_src/recorder.c), which writes numbered, timestamped 512-byte records
to every virtio disk and prints each one on the serial console.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from tests.rig.libvirtd import RigError, cache_root, run

SRC = Path(__file__).with_name("guest_src")
RECORD_SIZE = 512
RECORD_BASE = 1024 * 1024  # must match recorder.c
MAGIC = b"PBRECv1\0"
_RECORD = struct.Struct("<8sQQQI")  # magic, seq, guest ms, run id, disk index
DEFAULT_INTERVAL_MS = 50
AGENT_CHANNEL = "org.qemu.guest_agent.0"
# Bump when the build steps change, so cached guests are rebuilt.
RECIPE = 2
KERNEL_PATTERN = r"^linux-image-6\.1\.0-[0-9]+-amd64$"
AGENT_PACKAGE = "qemu-guest-agent"
HOST_PACKAGES = ("busybox-static", "libc6-dev", "gcc")
# What init loads; their dependencies come from each module's .modinfo.
MODULES = ("virtio_pci", "virtio_blk", "virtio_console")
BUILD_LOCK_TIMEOUT = 900.0
_CONSOLE_RECORD = re.compile(rb"PBREC (\d+) (\d+)")


@dataclass(frozen=True)
class GuestArtifacts:
    """A built guest: kernel, initramfs, and pbrec for running on the host."""

    kernel: Path
    initrd: Path
    recorder: Path


@dataclass(frozen=True, order=True)
class Record:
    """One record found on a disk; ordered by seq."""

    seq: int
    guest_ms: int
    run_id: int = field(compare=False)
    disk: int = field(compare=False)


# --- building -------------------------------------------------------------

def build_guest(cache: Path | None = None) -> GuestArtifacts:
    """Return the cached guest for the current inputs, building it first if needed."""
    root = Path(cache) if cache else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    inputs = _build_inputs()
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    final = root / f"guest-{key}"
    if not final.is_dir():
        with _locked(root / "guest.lock", BUILD_LOCK_TIMEOUT):
            # Another session may have built it while we waited.
            if not final.is_dir():
                # Holding the lock, any build directory left over is from a
                # killed build: its kernel tree alone is 400 MB.
                for stale in root.glob(".guest-build-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = Path(tempfile.mkdtemp(prefix=".guest-build-", dir=root))
                try:
                    os.rename(_build(tmp, inputs), final)  # atomic: complete or absent
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    return GuestArtifacts(final / "vmlinux", final / "initrd.img", final / "pbrec")


class _locked:
    """An exclusive fcntl lock on a file, waited for at most `timeout` seconds."""

    def __init__(self, path: Path, timeout: float):
        self.path, self.timeout = path, timeout

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise RigError(f"{self.path} still locked after {self.timeout} s")
                time.sleep(0.2)

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock


def _build_inputs() -> dict:
    """Everything the guest is made from: package versions and source hashes."""
    policy = run(["apt-cache", "policy", AGENT_PACKAGE, KERNEL_PATTERN]).stdout.decode()
    candidates = dict(re.findall(r"^(\S+):\n(?:  .*\n)*?  Candidate: (\S+)", policy, re.M))
    kernels = [n for n, v in candidates.items()
               if re.match(KERNEL_PATTERN, n) and v != "(none)"]
    if not kernels or candidates.get(AGENT_PACKAGE, "(none)") == "(none)":
        raise RigError("apt knows no linux-image-6.1.0-*-amd64 or qemu-guest-agent; "
                       "run apt-get update")
    kernel = max(kernels, key=lambda n: int(n.split("-")[3]))
    query = run(["dpkg-query", "-W", "-f=${Package} ${Version}\n", *HOST_PACKAGES],
                check=False)
    host = dict(line.split(" ", 1) for line in query.stdout.decode().splitlines())
    missing = [p for p in HOST_PACKAGES if not host.get(p)]
    if missing:
        raise RigError(f"install {' '.join(missing)} to build the test guest")
    sources = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(SRC.iterdir()) if p.is_file()}
    return {"recipe": RECIPE, "kernel": [kernel, candidates[kernel]],
            "agent": [AGENT_PACKAGE, candidates[AGENT_PACKAGE]], "host": host,
            "sources": sources, "modules": list(MODULES)}


def _build(tmp: Path, inputs: dict) -> Path:
    """Build the guest under tmp; return the directory holding the artifacts."""
    debs, stage, out = tmp / "debs", tmp / "root", tmp / "out"
    for d in (debs, out):
        d.mkdir()
    run(["apt-get", "download", *(f"{n}={v}" for n, v in (inputs["kernel"], inputs["agent"]))],
        cwd=debs, timeout=600)
    trees = {}
    for name, _ in (inputs["kernel"], inputs["agent"]):
        (deb,) = debs.glob(f"{name}_*.deb")
        trees[name] = tmp / name
        run(["dpkg-deb", "-x", deb, trees[name]], timeout=300)
    kernel_tree, agent_tree = trees[inputs["kernel"][0]], trees[AGENT_PACKAGE]

    for d in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc", "lib/modules"):
        (stage / d).mkdir(parents=True)
    # The kernel opens /dev/console before init runs, so it must be in the cpio.
    os.mknod(stage / "dev" / "console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
    shutil.copy2("/bin/busybox", stage / "bin" / "busybox")  # static: busybox-static
    shutil.copy2(SRC / "init", stage / "init")
    (stage / "init").chmod(0o755)
    _stage_modules(kernel_tree, stage)
    _stage_agent(agent_tree / "usr" / "sbin" / "qemu-ga", stage)
    run(["gcc", "-static", "-O2", "-Wall", "-o", stage / "sbin" / "pbrec",
         SRC / "recorder.c"], timeout=120)

    _stage_kernel(kernel_tree, out / "vmlinux")
    shutil.copy2(stage / "sbin" / "pbrec", out / "pbrec")
    _pack_cpio(stage, out / "initrd.img")
    (out / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
    return out


def _stage_kernel(kernel_tree: Path, target: Path) -> None:
    """Write the kernel as an uncompressed ELF that QEMU boots through PVH.

    Under TCG, SeaBIOS plus the bzImage's own xz decompressor take about 3.5 of
    the 6 s to the first record; QEMU loads a PVH-capable vmlinux directly.
    """
    (bzimage,) = (kernel_tree / "boot").glob("vmlinuz-*")
    (config,) = (kernel_tree / "boot").glob("config-*")
    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")  # Debian's kernels are xz (CONFIG_KERNEL_XZ)
    if "CONFIG_PVH=y" not in config.read_text().split() or start < 0:
        raise RigError(f"{bzimage}: expected an xz payload and CONFIG_PVH=y")
    vmlinux = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data[start:])
    if not vmlinux.startswith(b"\x7fELF"):
        raise RigError(f"{bzimage}: the xz payload is not an ELF vmlinux")
    target.write_bytes(vmlinux)


def _stage_modules(kernel_tree: Path, stage: Path) -> None:
    """Copy MODULES and their dependencies; list them in load order in /etc/modules."""
    def module_name(path: Path) -> str:
        return path.name.split(".ko")[0].replace("-", "_")

    found = {module_name(p): p for p in (kernel_tree / "lib" / "modules").rglob("*.ko*")}
    builtin = {module_name(Path(line)) for f in kernel_tree.glob("lib/modules/*/modules.builtin")
               for line in f.read_text().split()}
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order or name in builtin:
            return
        if name not in found:
            raise RigError(f"kernel module {name} is neither in {kernel_tree} nor built in")
        data = _module_bytes(found[name])
        for dep in filter(None, _modinfo(data).get("depends", "").split(",")):
            visit(dep.replace("-", "_"))
        (stage / "lib" / "modules" / f"{name}.ko").write_bytes(data)
        order.append(name)

    for name in MODULES:
        visit(name)
    (stage / "etc" / "modules").write_text("\n".join(order) + "\n")


def _module_bytes(path: Path) -> bytes:
    """A module's ELF bytes; busybox insmod cannot read compressed ones."""
    if path.name.endswith(".ko"):
        return path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    raise RigError(f"unsupported module compression: {path}")


def _modinfo(elf: bytes) -> dict[str, str]:
    """The key=value pairs of an ELF64 module's .modinfo section (no kmod here)."""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        if elf[str_off + name:elf.index(b"\0", str_off + name)] == b".modinfo":
            info = {}
            for item in elf[offset:offset + size].split(b"\0"):
                key, sep, value = item.partition(b"=")
                if sep:
                    info[key.decode()] = value.decode(errors="replace")
            return info
    return {}


def _stage_agent(binary: Path, stage: Path) -> None:
    """Copy qemu-ga with the host's copies of its shared libraries and loader."""
    shutil.copy2(binary, stage / "sbin" / "qemu-ga")
    libdir = stage / "lib" / "x86_64-linux-gnu"
    libdir.mkdir(parents=True, exist_ok=True)
    for line in run(["ldd", binary]).stdout.decode().splitlines():
        line = line.strip()
        if "not found" in line:
            raise RigError(f"qemu-ga needs a library the host lacks: {line}")
        match = re.match(r"(\S+) => (/\S+) \(", line)
        if match:  # a library, found where the loader would find it
            shutil.copy2(os.path.realpath(match[2]), libdir / match[1])
        elif line.startswith("/"):  # the dynamic loader, at its absolute path
            loader = line.split()[0]
            target = stage / loader.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(loader), target)


def _pack_cpio(stage: Path, initrd: Path) -> None:
    """Pack stage as an uncompressed newc cpio (no cpio binary; busybox has one)."""
    names = []
    for top, dirs, files in os.walk(stage):
        dirs.sort()
        rel = os.path.relpath(top, stage)
        names += [os.path.normpath(os.path.join(rel, n)) for n in sorted(dirs + files)]
    with open(initrd, "wb") as out:
        run(["busybox", "cpio", "-o", "-H", "newc"], cwd=stage, stdout=out,
            input="\n".join(names).encode() + b"\n", timeout=120)


# --- disks and domains ----------------------------------------------------

def make_disk(path: Path, size_mb: int = 64, fmt: str = "qcow2") -> Path:
    """Create an empty disk image with qemu-img."""
    run(["qemu-img", "create", "-q", "-f", fmt, path, f"{size_mb}M"])
    return Path(path)


def image_format(path: Path) -> str:
    """The format qemu-img detects for an image (-U: it may be in use)."""
    info = run(["qemu-img", "info", "-U", "--output=json", path]).stdout
    return json.loads(info)["format"]


def domain_xml(name: str, disks: list[Path], artifacts: GuestArtifacts, *,
               memory_mib: int = 256, console_log: Path, uuid: str | None = None,
               record_interval_ms: int = DEFAULT_INTERVAL_MS) -> str:
    """Domain XML: TCG, direct kernel boot, virtio disks vda.., console file, agent."""
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    if uuid:
        ET.SubElement(dom, "uuid").text = uuid
    ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = "1"
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_, "kernel").text = str(artifacts.kernel)
    ET.SubElement(os_, "initrd").text = str(artifacts.initrd)
    # panic=-1 with on_reboot=destroy: a broken guest stops instead of hanging.
    # pci=noacpi: routing each PCI interrupt through the ACPI interpreter
    # costs about 0.25 s per virtio device under TCG.
    ET.SubElement(os_, "cmdline").text = (
        f"console=ttyS0 quiet panic=-1 pci=noacpi pbrec_interval_ms={record_interval_ms}")
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    ET.SubElement(dom, "clock", offset="utc")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(dom, event).text = "destroy"
    devices = ET.SubElement(dom, "devices")
    for index, disk in enumerate(disks):
        el = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(el, "driver", name="qemu", type=image_format(disk))
        ET.SubElement(el, "source", file=str(disk))
        ET.SubElement(el, "target", dev=f"vd{chr(ord('a') + index)}", bus="virtio")
    serial = ET.SubElement(devices, "serial", type="file")
    # append='on': a restore must not truncate the log the test is reading.
    ET.SubElement(serial, "source", path=str(console_log), append="on")
    ET.SubElement(serial, "target", port="0")
    channel = ET.SubElement(devices, "channel", type="unix")
    # No path: libvirt picks one under its private /var/lib/libvirt, which
    # keeps it short of the 108-byte socket path limit.
    ET.SubElement(channel, "source", mode="bind")
    ET.SubElement(channel, "target", type="virtio", name=AGENT_CHANNEL)
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


# --- reading what the guest wrote -----------------------------------------

def read_records(image: Path, *, force_share: bool = False) -> list[Record]:
    """The valid records in an image (any format, backing chain followed), by seq.

    force_share reads an image a running QEMU holds open (qemu-img -U).
    """
    with tempfile.TemporaryDirectory(prefix="pbrec-") as tmp:
        raw = Path(tmp) / "disk.raw"
        share = ["-U"] if force_share else []
        run(["qemu-img", "convert", *share, "-O", "raw", image, raw], timeout=300)
        return records_in_raw(raw)


def records_in_raw(raw: Path) -> list[Record]:
    """The valid records (magic and CRC-32 check) in a raw image, by seq."""
    found = {}
    with open(raw, "rb") as f:
        f.seek(RECORD_BASE)
        while chunk := f.read(1 << 20):
            pos = chunk.find(MAGIC)
            while pos >= 0:
                block = chunk[pos:pos + RECORD_SIZE]
                # The chunk size is a multiple of RECORD_SIZE, so slots align.
                if pos % RECORD_SIZE == 0 and len(block) == RECORD_SIZE and \
                        zlib.crc32(block[:-4]) == struct.unpack("<I", block[-4:])[0]:
                    _, seq, ms, run_id, disk = _RECORD.unpack_from(block)
                    found[seq] = Record(seq, ms, run_id, disk)
                pos = chunk.find(MAGIC, pos + 1)
    return sorted(found.values())


def read_console(log: Path) -> list[tuple[int, int]]:
    """(seq, guest ms) of every PBREC line in a console log, in file order."""
    try:
        data = Path(log).read_bytes()
    except FileNotFoundError:
        return []
    return [(int(s), int(ms)) for s, ms in _CONSOLE_RECORD.findall(data)]


def console_tail(log: Path, lines: int = 25) -> str:
    """The last lines of a console log, for error messages."""
    try:
        text = Path(log).read_text(errors="replace")
    except FileNotFoundError:
        return "(no console output)"
    return "\n".join(text.splitlines()[-lines:])


def wait_for_records(console_log: Path, n: int, timeout: float = 60.0,
                     poll: float = 0.05) -> list[tuple[int, int]]:
    """Wait until the console shows a record with seq >= n; return all its records."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_console(console_log)
        if records and max(seq for seq, _ in records) >= n:
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"no record with seq >= {n} on {console_log} within "
                               f"{timeout} s; console tail:\n{console_tail(console_log)}")
        time.sleep(poll)
