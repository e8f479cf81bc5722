"""LibvirtHypervisor on the rig's real libvirtd and guests; qemu-img on real images."""

from __future__ import annotations

import shutil
import struct
import threading
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt
import pytest

from provbackup.errors import (BackendXmlInconsistencyError, CannotConnectToBackendError,
                               CannotCreateEmptyDiskImageError, CannotDefineMachineError,
                               CannotFindMachineError, CannotMergeDiskImagesError,
                               CannotSaveMachineStateError, CannotStartMachineError,
                               CorruptDiskImageFoundError, MissingNecessaryFilesError,
                               StepError, UndefinedError)
from provbackup.hypervisor import qemuimg
from provbackup.hypervisor.base import PowerState
from provbackup.hypervisor.libvirt import LibvirtHypervisor
from tests.rig import guest as guestlib
from tests.rig.libvirtd import run

pytestmark = pytest.mark.integration

METADATA_NS = "https://example.org/provbackup-test"


def _sources(xml: str) -> dict[str, str]:
    """target -> source file of every disk in a domain XML."""
    return {d.find("target").get("dev"): d.find("source").get("file")
            for d in ET.fromstring(xml).iterfind("devices/disk")}


def _one_run_from_one(records: list[guestlib.Record], disk: int = 0) -> list[int]:
    """The seqs of the run that wrote seq 1, asserting they are 1..N without a gap."""
    run_id = records[0].run_id
    seqs = [r.seq for r in records if r.run_id == run_id]
    assert records[0].seq == 1 and seqs == list(range(1, len(seqs) + 1))
    assert {r.disk for r in records} == {disk}
    return seqs


def _unused(image: Path) -> bool:
    """True if no process holds the image open (qemu-img info without -U takes its lock)."""
    return run(["qemu-img", "info", image], check=False).returncode == 0


def _snapshot_running(hypervisor, guest, tmp_path, targets=("vda",)):
    """Live snapshot with memory of every target; (result, overlays, memory file, seqs)."""
    overlays = {t: tmp_path / f"{guest.name}-{t}.overlay.qcow2" for t in targets}
    memory = tmp_path / f"{guest.name}.state"
    before = guest.last_seq()
    result = hypervisor.snapshot(guest.name, overlays, memory)
    return result, overlays, memory, (before, guest.last_seq())


def test_live_snapshot_with_memory_then_commit(hypervisor, make_guest, tmp_path):
    """A live snapshot freezes the base at one moment while the guest writes on, and the
    commit brings the guest back onto its base, which then holds every record."""
    guest = make_guest()
    base = guest.disks[0]
    result, overlays, memory, (before, after) = _snapshot_running(hypervisor, guest, tmp_path)

    assert 0 < result.downtime < result.duration
    assert memory.stat().st_size > 0
    domain = hypervisor.domain(guest.name)
    assert domain.state is PowerState.RUNNING and domain.memory_bytes == 256 << 20
    assert [(d.target, d.source, d.format, d.backing) for d in domain.disks] == \
        [("vda", overlays["vda"], "qcow2", base)]
    guest.wait_for_records(after + 10)
    frozen = _one_run_from_one(guestlib.read_records(base, force_share=True))
    # pbrec writes a record before printing it: the base may hold one more than seen.
    assert before <= frozen[-1] <= after + 1
    assert guestlib.read_records(overlays["vda"], force_share=True)[-1].seq >= after + 10

    hypervisor.commit(guest.name, "vda")
    domain = hypervisor.domain(guest.name)
    assert [(d.source, d.backing) for d in domain.disks] == [(base, None)]
    assert _sources(hypervisor.definition(guest.name)) == {"vda": str(base)}
    assert _unused(overlays["vda"]) and not _unused(base)
    overlays["vda"].unlink()
    last = guest.wait_for_records(guest.last_seq() + 10)[-1][0]
    guest.domain.destroy()
    assert _one_run_from_one(guestlib.read_records(base))[-1] >= last


def test_two_disks_are_snapshotted_together_and_committed(hypervisor, make_guest, tmp_path):
    """Both disks of a guest freeze at the same record and both come back to their bases."""
    guest = make_guest(2, disk_size_mb=16)
    result, overlays, memory, (before, after) = _snapshot_running(
        hypervisor, guest, tmp_path, ("vda", "vdb"))
    assert 0 < result.downtime < result.duration
    frozen = [guestlib.read_records(d, force_share=True) for d in guest.disks]
    vda, vdb = _one_run_from_one(frozen[0], 0), _one_run_from_one(frozen[1], 1)
    # pbrec writes vda then vdb: the pause may fall between the two writes.
    assert vda[-1] - 1 <= vdb[-1] <= vda[-1] and before <= vdb[-1] <= after + 1

    for target in ("vda", "vdb"):
        hypervisor.commit(guest.name, target)
    assert [(d.source, d.backing) for d in hypervisor.domain(guest.name).disks] == \
        [(guest.disks[0], None), (guest.disks[1], None)]
    assert all(_unused(p) for p in overlays.values())
    last = guest.wait_for_records(guest.last_seq() + 5)[-1][0]
    guest.domain.destroy()
    for index, disk in enumerate(guest.disks):
        assert _one_run_from_one(guestlib.read_records(disk), index)[-1] >= last


def test_shut_off_snapshot_and_commit_then_start(hypervisor, make_guest, tmp_path):
    """A shut-off domain gets a disk-only overlay and is committed back offline; the
    definition keeps its metadata and the domain starts on its base afterwards."""
    guest = make_guest()
    guest.domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<mark>kept</mark>",
                             "pbt", METADATA_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    guest.domain.destroy()
    base, overlay = guest.disks[0], tmp_path / "vda.overlay.qcow2"
    written = guestlib.read_records(base)
    assert hypervisor.domain(guest.name).state is PowerState.SHUT_OFF
    with pytest.raises(CannotSaveMachineStateError):
        hypervisor.snapshot(guest.name, {"vda": overlay}, tmp_path / "state")

    result = hypervisor.snapshot(guest.name, {"vda": overlay}, None)
    assert result.downtime == 0 and result.duration > 0
    assert _sources(hypervisor.definition(guest.name)) == {"vda": str(overlay)}
    assert [(d.source, d.backing) for d in hypervisor.domain(guest.name).disks] == [(overlay, base)]

    hypervisor.commit(guest.name, "vda")
    definition = hypervisor.definition(guest.name)
    assert _sources(definition) == {"vda": str(base)} and "<backingStore" not in definition
    assert hypervisor.domain(guest.name).disks[0].backing is None
    assert guest.domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS,
                                 libvirt.VIR_DOMAIN_AFFECT_CONFIG) == "<mark>kept</mark>"
    assert guestlib.read_records(base) == written
    overlay.unlink()
    hypervisor.start(guest.name)
    guest.wait_for_records(guest.last_seq() + 3)
    assert hypervisor.domain(guest.name).state is PowerState.RUNNING


def test_started_between_snapshot_and_commit(hypervisor, make_guest, tmp_path):
    """Shut off at the snapshot and running at the commit: the live commit is used."""
    guest = make_guest()
    guest.domain.destroy()
    base, overlay = guest.disks[0], tmp_path / "vda.overlay.qcow2"
    hypervisor.snapshot(guest.name, {"vda": overlay}, None)
    lines = len(guest.console_records())
    hypervisor.start(guest.name)
    _wait_for_lines(guest, lines + 10)  # the console is appended to: count lines

    hypervisor.commit(guest.name, "vda")
    assert [(d.source, d.backing) for d in hypervisor.domain(guest.name).disks] == [(base, None)]
    assert _unused(overlay)
    last = guest.console_records()[-1][0]
    guest.domain.destroy()
    assert _one_run_from_one(guestlib.read_records(base))[-1] >= last


def _wait_for_lines(guest, n: int, timeout: float = 90.0) -> None:
    """Wait until the console holds n records in all (over several boots)."""
    deadline = time.monotonic() + timeout
    while len(guest.console_records()) < n:
        assert time.monotonic() < deadline, guestlib.console_tail(guest.console_log)
        time.sleep(0.05)


def test_stopped_between_snapshot_and_commit(hypervisor, make_guest, tmp_path):
    """Running at the snapshot and shut off at the commit: the offline commit is used."""
    guest = make_guest()
    base = guest.disks[0]
    _, overlays, _, _ = _snapshot_running(hypervisor, guest, tmp_path)
    last = guest.wait_for_records(guest.last_seq() + 5)[-1][0]
    guest.domain.destroy()

    hypervisor.commit(guest.name, "vda")
    assert _sources(hypervisor.definition(guest.name)) == {"vda": str(base)}
    assert _one_run_from_one(guestlib.read_records(base))[-1] >= last
    hypervisor.start(guest.name)
    assert hypervisor.domain(guest.name).disks[0].source == base


def test_failures_map_to_return_values(hypervisor, make_guest, tmp_path):
    """Missing domain is 23, overlays that do not match the disks 33, and commit of a disk
    without an overlay does nothing."""
    for call in (lambda: hypervisor.domain("pb-no-such-domain"),
                 lambda: hypervisor.snapshot("pb-no-such-domain", {}, None),
                 lambda: hypervisor.commit("pb-no-such-domain", "vda"),
                 lambda: hypervisor.definition("pb-no-such-domain")):
        with pytest.raises(CannotFindMachineError) as missing:
            call()
        assert missing.value.code == 23
    guest = make_guest(2, disk_size_mb=16)
    for overlays in ({"vda": tmp_path / "a.qcow2"},
                     {"vda": tmp_path / "a.qcow2", "vdb": tmp_path / "b.qcow2",
                      "vdz": tmp_path / "z.qcow2"}):
        with pytest.raises(BackendXmlInconsistencyError) as inconsistent:
            hypervisor.snapshot(guest.name, overlays, tmp_path / "state")
        assert inconsistent.value.code == 33
    assert not [p for p in ("a.qcow2", "b.qcow2", "state") if (tmp_path / p).exists()]

    before = hypervisor.domain(guest.name)
    hypervisor.commit(guest.name, "vda")
    assert hypervisor.domain(guest.name) == before


def test_failed_snapshot_leaves_the_guest_running_on_its_image(hypervisor, make_guest, tmp_path):
    """A snapshot that cannot create an overlay is 5 with libvirt's reason; the guest runs
    on its original image, writing, and no memory file is left behind."""
    guest = make_guest()
    memory = tmp_path / "state"
    with pytest.raises(CannotSaveMachineStateError) as failed:
        hypervisor.snapshot(guest.name, {"vda": tmp_path / "no-such-dir" / "vda.qcow2"}, memory)
    assert failed.value.code == 5 and "no-such-dir" in failed.value.detail
    assert not memory.exists()
    domain = hypervisor.domain(guest.name)
    assert domain.state is PowerState.RUNNING
    assert [(d.source, d.backing) for d in domain.disks] == [(guest.disks[0], None)]
    last = guest.wait_for_records(guest.last_seq() + 5)[-1][0]
    assert guestlib.read_records(guest.disks[0], force_share=True)[-1].seq >= last

    memory.write_bytes(b"someone's file")
    with pytest.raises(CannotSaveMachineStateError):
        hypervisor.snapshot(guest.name, {"vda": tmp_path / "vda.qcow2"}, memory)
    assert memory.read_bytes() == b"someone's file" and not (tmp_path / "vda.qcow2").exists()


def test_commit_passes_the_bandwidth_to_libvirt(hypervisor, make_guest, tmp_path):
    """A commit limited to 1 MiB/s runs as a block job with that bandwidth and still
    merges every byte of the overlay into the base."""
    base = guestlib.make_disk(tmp_path / "base.qcow2", 64)
    top = tmp_path / "top.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 40M 3M", top])
    guest = make_guest([top])
    assert hypervisor.domain(guest.name).disks[0].backing == base

    errors: list[StepError] = []
    worker = threading.Thread(target=lambda: _collect(errors, hypervisor.commit, guest.name, "vda", 1))
    worker.start()
    seen = []
    while worker.is_alive():
        info = guest.domain.blockJobInfo("vda", 0)
        if info:
            seen.append(info)
        time.sleep(0.05)
    worker.join()
    assert not errors
    assert seen and {i["bandwidth"] for i in seen} == {1}
    assert seen[0]["type"] == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT
    guest.domain.destroy()
    assert hypervisor.domain(guest.name).disks[0].source == base
    run(["qemu-io", "-f", "qcow2", "-c", "read -P 0xab 40M 3M", base])


def _collect(errors: list, call, *args) -> None:
    try:
        call(*args)
    except StepError as e:
        errors.append(e)


def test_restore_from_the_snapshot_memory_resumes_the_guest(hypervisor, make_guest, tmp_path):
    """The memory file with a copy of the frozen base restores the guest at the snapshot
    moment: it carries on with the next record of the same run."""
    guest = make_guest()
    _, _, memory, _ = _snapshot_running(hypervisor, guest, tmp_path)
    copy = tmp_path / "restored.qcow2"
    shutil.copyfile(guest.disks[0], copy)  # frozen since the snapshot
    frozen = guestlib.read_records(copy)
    guest.domain.destroy()

    root = ET.fromstring(hypervisor.saved_definition(memory))
    disk = root.find("devices/disk")
    disk.find("source").set("file", str(copy))
    for below in disk.findall("backingStore"):
        disk.remove(below)
    hypervisor.restore(memory, ET.tostring(root, encoding="unicode"))
    assert hypervisor.domain(guest.name).disks[0].source == copy
    last = guest.wait_for_records(guest.last_seq() + 5)[-1][0]
    guest.domain.destroy()
    records = guestlib.read_records(copy)
    assert _one_run_from_one(records)[-1] >= last
    assert records[0].run_id == frozen[0].run_id


def test_define_start_destroy_undefine(hypervisor, make_guest, tmp_path):
    """The lifecycle calls round-trip and are idempotent; a broken XML is 41 and a domain
    whose disk is gone fails to start with 42."""
    guest = make_guest(start=False)
    xml = hypervisor.definition(guest.name)
    hypervisor.undefine(guest.name)
    with pytest.raises(CannotFindMachineError):
        hypervisor.definition(guest.name)
    with pytest.raises(CannotDefineMachineError) as broken:
        hypervisor.define("<domain type='qemu'><name>pb-broken</name>")
    assert broken.value.code == 41
    assert hypervisor.define(xml) == guest.name

    moved = guest.disks[0].rename(tmp_path / "moved.qcow2")
    with pytest.raises(CannotStartMachineError) as not_started:
        hypervisor.start(guest.name)
    assert not_started.value.code == 42 and "qcow2" in not_started.value.detail
    moved.rename(guest.disks[0])
    for _ in range(2):
        hypervisor.start(guest.name)
    assert hypervisor.domain(guest.name).state is PowerState.RUNNING
    for _ in range(2):
        hypervisor.destroy(guest.name)
    assert hypervisor.domain(guest.name).state is PowerState.SHUT_OFF


def test_connection_errors(hypervisor, make_guest, libvirtd):
    """An unreachable URI is 17; a connection that broke is reopened on the next call."""
    with pytest.raises(CannotConnectToBackendError) as unreachable:
        LibvirtHypervisor(f"qemu+unix:///system?socket={libvirtd.workdir}/none").domain("x")
    assert unreachable.value.code == 17
    guest = make_guest(wait_boot=False)
    assert hypervisor.domain(guest.name).name == guest.name
    hypervisor._connection().close()  # as if the daemon had dropped us
    assert hypervisor.domain(guest.name).state is PowerState.RUNNING


# --- qemu-img -----------------------------------------------------------------

def test_qemuimg_overlay_info_and_offline_commit(tmp_path):
    """create_overlay chains a qcow2 onto a base, info reports it, commit writes the
    overlay's data into the base; existing or missing paths are refused."""
    base = guestlib.make_disk(tmp_path / "base.qcow2", 16)
    overlay = tmp_path / "overlay.qcow2"
    qemuimg.create_overlay(overlay, base, "qcow2")
    facts = qemuimg.info(overlay)
    assert facts["format"] == "qcow2" and facts["virtual-size"] == 16 << 20
    assert qemuimg.backing_file(overlay) == base and qemuimg.backing_file(base) is None
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 1M", overlay])
    qemuimg.commit(overlay, bandwidth_mib=50)
    run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1M 1M", base])

    with pytest.raises(CannotCreateEmptyDiskImageError):
        qemuimg.create_overlay(overlay, base, "qcow2")
    with pytest.raises(MissingNecessaryFilesError) as missing:
        qemuimg.info(tmp_path / "absent.qcow2")
    assert missing.value.code == 37
    with pytest.raises(CannotMergeDiskImagesError) as no_backing:
        qemuimg.commit(base)
    assert no_backing.value.code == 11


def test_qemuimg_check_tells_damage_from_leaks(tmp_path, caplog):
    """check passes sound images, raw ones and mere leaks (logged), and raises 38 with
    qemu-img's message for corruption or an image it cannot read."""
    image = guestlib.make_disk(tmp_path / "disk.qcow2", 16)
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", image])
    qemuimg.check(image, "qcow2")
    qemuimg.check(guestlib.make_disk(tmp_path / "disk.raw", 1, "raw"), "raw")

    leaky, corrupt = tmp_path / "leaky.qcow2", tmp_path / "corrupt.qcow2"
    for copy in (leaky, corrupt):
        shutil.copyfile(image, copy)
    l2_entry, refcount_entry = _qcow2_first_cluster(image)
    _overwrite(leaky, l2_entry, bytes(8))  # unreferenced, still counted: a leak
    _overwrite(corrupt, refcount_entry, bytes(2))  # referenced, counted 0: corrupt
    qemuimg.check(leaky, "qcow2")
    assert "leaked clusters" in caplog.text
    with pytest.raises(CorruptDiskImageFoundError) as damaged:
        qemuimg.check(corrupt, "qcow2")
    assert damaged.value.code == 38 and "refcount=0" in damaged.value.detail
    with pytest.raises(CorruptDiskImageFoundError) as unreadable:
        qemuimg.check(tmp_path / "disk.raw", "qcow2")
    assert "Image is not in qcow2 format" in unreadable.value.detail
    with pytest.raises(MissingNecessaryFilesError):
        qemuimg.check(tmp_path / "absent.qcow2")


def _qcow2_first_cluster(image: Path) -> tuple[int, int]:
    """File offsets of the L2 entry and the refcount entry of guest cluster 0's data."""
    with open(image, "rb") as f:
        header = f.read(104)
        cluster_bits, = struct.unpack_from(">I", header, 20)
        l1_offset, refcount_table = struct.unpack_from(">QQ", header, 40)
        assert struct.unpack_from(">I", header, 96)[0] == 4  # 16-bit refcounts

        def entry(offset: int) -> int:
            f.seek(offset)
            return struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00

        l2_table = entry(l1_offset)
        data = entry(l2_table)
        refcount_block = entry(refcount_table)
    return l2_table, refcount_block + 2 * (data >> cluster_bits)


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_qemuimg_run_timeout_kills_the_process_group(tmp_path):
    """A command that outlives its timeout is killed with its children, and the error
    carries the command; a failing command's error carries its stderr."""
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(CannotMergeDiskImagesError) as slow:
        qemuimg.run(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], timeout=0.5,
                    error=CannotMergeDiskImagesError)
    assert time.monotonic() - started < 10 and "timed out" in slow.value.detail
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and \
            "\nState:\tZ" not in Path(f"/proc/{child}/status").read_text():
        assert time.monotonic() < deadline, f"pid {child} survived the timeout"
        time.sleep(0.05)
    with pytest.raises(UndefinedError) as failed:
        qemuimg.run(["qemu-img", "info", "-f", "qcow2", pid_file], timeout=30)
    assert "qemu-img info" in failed.value.detail and "qcow2" in failed.value.detail
    assert qemuimg.run(["true"], timeout=5).returncode == 0


def test_settle_waits_for_a_snapshot_another_client_runs(hypervisor, make_guest, tmp_path):
    """settle() returns only once a snapshot begun on another connection is over: a
    daemon restarted after a kill must not look at the disks while libvirtd still
    finishes the killed daemon's snapshot."""
    guest = make_guest()
    other = LibvirtHypervisor(hypervisor.uri)
    overlays = {"vda": tmp_path / f"{guest.name}-vda.overlay.qcow2"}
    memory = tmp_path / f"{guest.name}.state"
    snapshotting = threading.Thread(target=other.snapshot, args=(guest.name, overlays, memory))
    snapshotting.start()
    try:
        # The memory file appears once libvirt's snapshot job has begun; the disks move
        # onto the overlays when it ends.
        deadline = time.monotonic() + 60
        while not memory.exists():
            assert time.monotonic() < deadline and snapshotting.is_alive(), \
                "the snapshot never began"
            time.sleep(0.001)
        hypervisor.settle(guest.name)
        assert [d.source for d in hypervisor.domain(guest.name).disks] == [overlays["vda"]]
    finally:
        snapshotting.join(120)
        other.close()
    hypervisor.commit(guest.name, "vda")
