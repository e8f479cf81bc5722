"""The virtualization rig on real components: private libvirtd, tiny guest, records."""

from __future__ import annotations

import time
from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt
import pytest

from tests.rig import guest as guestlib
from tests.rig.libvirtd import Libvirtd, run

pytestmark = pytest.mark.integration

SNAPSHOT_FLAGS = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                  | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                  | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)


def _snapshot_xml(overlay: Path) -> str:
    """A disk-only external snapshot of vda into overlay."""
    return (f"<domainsnapshot><disks><disk name='vda' snapshot='external'>"
            f"<driver type='qcow2'/><source file='{overlay}'/></disk></disks>"
            f"</domainsnapshot>")


def _vda_chain(domain: libvirt.virDomain) -> list[str]:
    """The live XML's source files of vda, top image first."""
    disk = ET.fromstring(domain.XMLDesc()).find("devices/disk/target[@dev='vda']/..")
    chain, node = [], disk
    while node is not None and node.find("source") is not None:
        chain.append(node.find("source").get("file"))
        node = node.find("backingStore")
    return chain


def _commit_and_pivot(domain: libvirt.virDomain, timeout: float = 60.0) -> None:
    """Active-commit vda into its base and pivot back to the base."""
    domain.blockCommit("vda", None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
    deadline = time.monotonic() + timeout
    while True:
        info = domain.blockJobInfo("vda", 0)
        # libvirt keeps cur below end until QEMU says the job is ready.
        if info and info["end"] > 0 and info["cur"] == info["end"]:
            try:
                domain.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                return
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_BLOCK_COPY_ACTIVE:
                    raise
        assert time.monotonic() < deadline, f"block commit not ready after {timeout} s: {info}"
        time.sleep(0.02)


def _assert_contiguous_from_one(records: list[guestlib.Record]) -> None:
    """The records are exactly 1..N of one recorder run on disk 0."""
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert len({r.run_id for r in records}) == 1, "the guest rebooted"
    assert {r.disk for r in records} == {0}


def test_snapshot_and_active_commit_keep_every_record(make_guest, tmp_path):
    """A guest keeps writing through a disk-only snapshot and an active commit, and
    its original image ends up holding every record, with none missing."""
    guest = make_guest()
    base = guest.disks[0]
    assert guest.console_records()[0][0] == 1
    guest.wait_for_agent()
    assert guest.agent("guest-ping") == {"return": {}}

    overlay = tmp_path / "overlay.qcow2"
    seq_before_snapshot = guest.last_seq()
    guest.domain.snapshotCreateXML(_snapshot_xml(overlay), SNAPSHOT_FLAGS)
    assert _vda_chain(guest.domain) == [str(overlay), str(base)]
    seq_in_overlay = guest.last_seq() + 10
    guest.wait_for_records(seq_in_overlay)

    # Writes after the snapshot went to the overlay; the base stopped at the snapshot.
    frozen_base = guestlib.read_records(base, force_share=True)
    _assert_contiguous_from_one(frozen_base)
    assert seq_before_snapshot <= frozen_base[-1].seq < seq_in_overlay - 5
    through_overlay = guestlib.read_records(overlay, force_share=True)
    assert through_overlay[-1].seq >= seq_in_overlay

    _commit_and_pivot(guest.domain)
    assert _vda_chain(guest.domain) == [str(base)]
    seq_after_commit = guest.last_seq() + 10
    guest.wait_for_records(seq_after_commit)
    guest.domain.destroy()

    records = guestlib.read_records(base)
    _assert_contiguous_from_one(records)
    assert records[-1].seq >= seq_after_commit
    console = dict(guest.console_records())
    assert all(console[r.seq] == r.guest_ms for r in records if r.seq in console)


def test_guest_writes_each_record_to_every_disk(make_guest):
    """A two-disk guest writes every record to both disks, each marked with its index."""
    guest = make_guest(2, disk_size_mb=16)
    seq = guest.wait_for_records(guest.last_seq() + 10)[-1][0]
    guest.domain.destroy()

    vda, vdb = (guestlib.read_records(disk) for disk in guest.disks)
    assert {r.disk for r in vda} == {0} and {r.disk for r in vdb} == {1}
    assert [(r.seq, r.guest_ms) for r in vda] == [(r.seq, r.guest_ms) for r in vdb]
    assert [r.seq for r in vda][:seq] == list(range(1, seq + 1))


def test_read_records_follows_backing_chain_and_rejects_damage(guest_artifacts, tmp_path):
    """read_records returns what pbrec wrote, through a qcow2 backing chain, and drops
    records whose checksum no longer matches."""
    raw = guestlib.make_disk(tmp_path / "written.raw", 4, "raw")
    printed = run([guest_artifacts.recorder, "-i", "0", "-n", "30", raw]).stdout
    base = tmp_path / "base.qcow2"
    run(["qemu-img", "convert", "-O", "qcow2", raw, base])
    overlay = tmp_path / "overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay])
    # One byte of record 7's padding changes in the overlay only.
    offset = guestlib.RECORD_BASE + 7 * guestlib.RECORD_SIZE + 100
    run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x55 {offset} 1", overlay])

    in_base = guestlib.read_records(base)
    assert [(r.seq, r.guest_ms) for r in in_base] == [
        tuple(int(x) for x in line.split()[1:]) for line in printed.decode().splitlines()
        if line.startswith("PBREC ")]
    assert [r.seq for r in guestlib.read_records(overlay)] == \
        [s for s in range(1, 31) if s != 7]


def test_records_wrap_around_a_full_disk(guest_artifacts, tmp_path):
    """When the record area is full, the newest records overwrite the oldest."""
    raw = tmp_path / "small.raw"
    with open(raw, "wb") as f:
        f.truncate(guestlib.RECORD_BASE + 16 * guestlib.RECORD_SIZE)
    run([guest_artifacts.recorder, "-i", "0", "-n", "40", raw])
    assert [r.seq for r in guestlib.read_records(raw)] == list(range(25, 41))


def test_private_libvirtd_is_isolated_and_stop_kills_its_guests(
        libvirt_conn, guest_artifacts, tmp_path):
    """A second private libvirtd runs beside the session's, sees only its own
    domains, and stop() ends both the daemon and the QEMU it started."""
    disk = guestlib.make_disk(tmp_path / "disk.qcow2")
    xml = guestlib.domain_xml("pb-private", [disk], guest_artifacts,
                              console_log=tmp_path / "console.log")
    other = Libvirtd(tmp_path / "lv")
    other.start()
    try:
        conn = libvirt.open(other.uri)
        try:
            conn.defineXML(xml).create()
        finally:
            conn.close()
        qemu_pid = int((other.workdir / "run" / "qemu" / "pb-private.pid").read_text())
        daemon_pid = other.pid
        assert "qemu-system" in Path(f"/proc/{qemu_pid}/cmdline").read_text()
        with pytest.raises(libvirt.libvirtError) as gone:
            libvirt_conn.lookupByName("pb-private")
        assert gone.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
    finally:
        other.stop()
    assert other.pid is None
    for pid in (qemu_pid, daemon_pid):
        assert not _running(pid), f"pid {pid} survived stop()"


def _running(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status
