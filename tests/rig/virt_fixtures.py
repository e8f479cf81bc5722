"""pytest fixtures for the virtualization half of the rig: libvirtd and guests.

tests/conftest.py imports these with ``from tests.rig.virt_fixtures import *``.
"""

from __future__ import annotations

import json
import re
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import libvirt
import libvirt_qemu
import pytest

from tests.rig import guest as guestlib
from tests.rig.libvirtd import Libvirtd, RigError

__all__ = ["libvirtd", "guest_artifacts", "libvirt_conn", "make_guest", "hypervisor"]

BOOT_TIMEOUT = 90.0  # boot is ~6 s under TCG; leave room for a loaded CI host
_GONE = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)
_UNDEFINE_FLAGS = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                   | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)


@dataclass
class Guest:
    """A running test guest: its domain, disk images and console log."""

    name: str
    domain: libvirt.virDomain
    disks: list[Path]
    console_log: Path

    def console_records(self) -> list[tuple[int, int]]:
        """(seq, guest ms) of every record the guest printed so far."""
        return guestlib.read_console(self.console_log)

    def last_seq(self) -> int:
        """The highest seq printed on the console, 0 before the first record."""
        return max((seq for seq, _ in self.console_records()), default=0)

    def wait_for_records(self, n: int, timeout: float = 60.0) -> list[tuple[int, int]]:
        """Wait until the console shows a record with seq >= n."""
        return guestlib.wait_for_records(self.console_log, n, timeout)

    def agent(self, command: str, timeout: int = 10) -> dict:
        """Run one guest agent command (no arguments); return the decoded reply."""
        request = json.dumps({"execute": command})
        return json.loads(libvirt_qemu.qemuAgentCommand(self.domain, request, timeout, 0))

    def wait_for_agent(self, timeout: float = 30.0) -> None:
        """Wait until the guest agent answers guest-ping (it starts after pbrec)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.agent("guest-ping", timeout=2)
                return
            except libvirt.libvirtError as e:
                if time.monotonic() > deadline:
                    raise RigError(f"guest agent of {self.name} silent for {timeout} s: {e}; "
                                   f"console:\n{guestlib.console_tail(self.console_log)}") from e
                time.sleep(0.1)


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory):
    """One private libvirtd for the whole session, stopped even after failures."""
    daemon = Libvirtd(tmp_path_factory.mktemp("libvirtd"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def guest_artifacts():
    """The cached test guest (kernel, initramfs, host copy of pbrec)."""
    return guestlib.build_guest()


@pytest.fixture(scope="session")
def libvirt_conn(libvirtd):
    """A libvirt connection to the session's libvirtd."""
    conn = libvirt.open(libvirtd.uri)
    try:
        yield conn
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass  # the daemon may already be gone


@pytest.fixture
def make_guest(request, tmp_path, libvirtd, libvirt_conn, guest_artifacts):
    """Factory: define and start persistent guests; destroy and undefine them after."""
    names: list[str] = []
    stem = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40].strip("-")

    def make(disks: int | Sequence[Path] = 1, *, memory_mib: int = 256,
             disk_size_mb: int = 64, fmt: str = "qcow2", start: bool = True,
             wait_boot: bool = True,
             record_interval_ms: int = guestlib.DEFAULT_INTERVAL_MS) -> Guest:
        name = f"pb-{stem}-{uuidlib.uuid4().hex[:6]}"
        if isinstance(disks, int):
            paths = [guestlib.make_disk(tmp_path / f"{name}-vd{chr(97 + i)}.{fmt}",
                                        disk_size_mb, fmt) for i in range(disks)]
        else:
            paths = [Path(p) for p in disks]
        console = tmp_path / f"{name}.console.log"
        xml = guestlib.domain_xml(name, paths, guest_artifacts, memory_mib=memory_mib,
                                  console_log=console,
                                  record_interval_ms=record_interval_ms)
        domain = libvirt_conn.defineXML(xml)
        names.append(name)
        guest = Guest(name, domain, paths, console)
        if start:
            domain.create()
            if wait_boot:
                try:
                    guest.wait_for_records(1, BOOT_TIMEOUT)
                except TimeoutError as e:
                    qemu_log = libvirtd.domain_log(name)
                    tail = qemu_log.read_text(errors="replace")[-2000:] \
                        if qemu_log.exists() else "(none)"
                    raise RigError(f"{e}\nactive={bool(domain.isActive())}, "
                                   f"QEMU log {qemu_log}:\n{tail}") from e
        return guest

    yield make
    errors = []
    for name in names:
        try:
            _remove_domain(libvirt_conn, name)
        except libvirt.libvirtError as e:
            errors.append(f"{name}: {e}")
    if errors:
        raise RigError("could not remove test domains: " + "; ".join(errors))


def _remove_domain(conn: libvirt.virConnect, name: str) -> None:
    """Destroy and undefine a domain by name; a domain already gone is fine."""
    for action in ("destroy", "undefine"):
        try:
            domain = conn.lookupByName(name)
            if action == "destroy":
                domain.destroy()
            else:
                domain.undefineFlags(_UNDEFINE_FLAGS)
        except libvirt.libvirtError as e:
            if e.get_error_code() not in _GONE:
                raise


@pytest.fixture
def hypervisor(libvirtd):
    """provbackup's LibvirtHypervisor on the session's libvirtd, closed after the test."""
    from provbackup.hypervisor.libvirt import LibvirtHypervisor
    hv = LibvirtHypervisor(libvirtd.uri)
    yield hv
    hv.close()
