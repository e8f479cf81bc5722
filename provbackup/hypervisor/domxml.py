"""Domain and snapshot XML: reading disks out of it, writing the snapshot request.

Pure functions on ElementTree, kept apart from the libvirt calls in libvirt.py.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from xml.etree import ElementTree as ET

from provbackup.errors import (BackendXmlInconsistencyError, CannotReadXmlFileError, StepError,
                               UndefinedError, UnknownBackendTypeError)
from provbackup.hypervisor import qemuimg
from provbackup.hypervisor.base import DomainDisk

SKIPPED_DEVICES = ("cdrom", "floppy")  # never part of a backup


def parse(xml: str) -> ET.Element:
    """Parse domain XML so that writing it back keeps its namespace prefixes.

    A redefinition must keep everything else: <metadata> children and
    <qemu:commandline> would otherwise come back as ns0:, ns1:...
    """
    for _, (prefix, uri) in ET.iterparse(io.StringIO(xml), events=("start-ns",)):
        if prefix and not re.fullmatch(r"ns\d+", prefix):
            ET.register_namespace(prefix, uri)
    return ET.fromstring(xml)


def target_of(el: ET.Element) -> str | None:
    """The target device name of a <disk> element (vda)."""
    target = el.find("target")
    return target.get("dev") if target is not None else None


def file_disks(root: ET.Element) -> list[ET.Element]:
    """The <disk type='file' device='disk'> elements that have a source file."""
    return [el for el in root.iterfind("devices/disk")
            if el.get("type") == "file" and el.get("device", "disk") == "disk"
            and el.find("source") is not None and el.find("source").get("file")]


def domain_disk(el: ET.Element, error: type[StepError] = UndefinedError) -> DomainDisk:
    """A <disk> element as a DomainDisk, with its backing file."""
    source = Path(el.find("source").get("file"))
    driver = el.find("driver")
    fmt = driver.get("type", "raw") if driver is not None else "raw"
    below = el.find("backingStore")
    if below is not None:  # the live XML: libvirt has read the chain already
        src = below.find("source")
        backing = src.get("file") or src.get("dev") if src is not None else None
        return DomainDisk(target_of(el), source, fmt, Path(backing) if backing else None)
    # The inactive XML usually omits the chain; raw images have no backing file.
    backing = None if fmt == "raw" else qemuimg.backing_file(source, fmt, error=error)
    return DomainDisk(target_of(el), source, fmt, backing)


def snapshot_xml(name: str, root: ET.Element, overlays: dict[str, Path],
                  memory_file: Path | None) -> str:
    """<domainsnapshot>: every file disk to its overlay, CD-ROMs and floppies left out.

    A disk we cannot snapshot (block device, network) would silently be missing
    from the backup: UnknownBackendTypeError (36). Every file disk must have an
    overlay and every overlay a disk: else BackendXmlInconsistencyError (33).
    """
    snap = ET.Element("domainsnapshot")
    if memory_file is not None:
        ET.SubElement(snap, "memory", snapshot="external", file=str(memory_file))
    else:
        ET.SubElement(snap, "memory", snapshot="no")
    disks = ET.SubElement(snap, "disks")
    files = {target_of(el) for el in file_disks(root)}
    for el in root.iterfind("devices/disk"):
        target = target_of(el)
        if el.get("device", "disk") in SKIPPED_DEVICES:
            ET.SubElement(disks, "disk", name=target, snapshot="no")
        elif target not in files:
            raise UnknownBackendTypeError(
                f"{name} disk {target}: type {el.get('type')} device {el.get('device')} "
                f"cannot be backed up (only file disks)")
    if missing := sorted(files - set(overlays)):
        raise BackendXmlInconsistencyError(f"{name}: no overlay for disk(s) {missing}")
    if unknown := sorted(set(overlays) - files):
        raise BackendXmlInconsistencyError(f"{name} has no file disk(s) {unknown}")
    for target in sorted(files):
        disk = ET.SubElement(disks, "disk", name=target, snapshot="external")
        ET.SubElement(disk, "driver", type="qcow2")
        ET.SubElement(disk, "source", file=str(overlays[target]))
    return ET.tostring(snap, encoding="unicode")


def read_disks(xml: str) -> dict[str, Path]:
    """target -> image file of each file disk in a backed-up domain XML (45 if unreadable)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise CannotReadXmlFileError(f"not domain XML: {e}") from None
    if root.tag != "domain":
        raise CannotReadXmlFileError(f"not domain XML: the root element is <{root.tag}>")
    return {target_of(el): Path(el.find("source").get("file")) for el in file_disks(root)}


def with_disk_sources(xml: str, sources: dict[str, Path]) -> str:
    """The domain XML with each listed disk on a standalone image at the given path.

    A memory state file remembers the disks as they were at the snapshot; a restore
    must name the images that are actually there (TEST-RIG pitfall), so the sources
    are set explicitly and any recorded backing chain is dropped.
    """
    try:
        root = parse(xml)
    except ET.ParseError as e:
        raise CannotReadXmlFileError(f"not domain XML: {e}") from None
    found = set()
    for el in file_disks(root):
        target = target_of(el)
        if target not in sources:
            continue
        el.find("source").set("file", str(sources[target]))
        for below in el.findall("backingStore"):
            el.remove(below)
        found.add(target)
    if missing := sorted(set(sources) - found):
        raise BackendXmlInconsistencyError(f"the domain XML has no file disk(s) {missing}")
    return ET.tostring(root, encoding="unicode")
