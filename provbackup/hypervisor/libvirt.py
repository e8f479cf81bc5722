"""The Hypervisor protocol on libvirt (and qemu-img for domains that are shut off).

Every libvirtError is translated here, once, into the StepError the contract
wants; nothing above this package sees a libvirt exception or a libvirt error
number. The connection opens lazily and is reopened once when it broke.

Snapshots are external: a running domain gets ONE atomic live snapshot that
writes the memory state while the guest runs and pauses it only to switch the
disks to new overlays (~0.1 s here); the time between libvirt's SUSPENDED and
RESUMED events is the downtime. A shut-off domain gets disk-only overlays,
which libvirt creates with qemu-img and writes into the persistent definition.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt

from provbackup.errors import (BackendXmlInconsistencyError, CannotConnectToBackendError,
                               CannotDefineMachineError, CannotFindMachineError,
                               CannotMergeDiskImagesError, CannotReadStateFileError,
                               CannotRestoreMachineError, CannotSaveMachineStateError,
                               CannotSaveXmlError, CannotStartMachineError, StepError,
                               UndefinedError)
from provbackup.hypervisor import domxml, qemuimg
from provbackup.hypervisor.base import Domain, DomainDisk, PowerState, SnapshotResult

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 3  # a dead daemon is noticed within ~20 s
EVENT_GRACE = 2.0  # how long after the call the RESUMED event may still arrive
POLL = 0.02  # block job polling; a small commit is ready within a few polls
PIVOT_TIMEOUT = 30.0
_RUNNING_STATES = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED,
                   libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED,
                   libvirt.VIR_DOMAIN_SHUTDOWN)  # shutting down: still has memory
_OFF_STATES = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED)
_SUSPENDED, _RESUMED = libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_RESUMED

# A memory snapshot writes the guest's RAM at disk speed: minutes for a large guest.
SETTLE_TIMEOUT = 1800.0
# An element no one else uses: settle() removes it, which changes nothing.
SETTLE_METADATA_URI = "https://provbackup.invalid/settle"

_loop_lock = threading.Lock()
_loop_started = False


def start_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread; idempotent, once per process.

    Lifecycle events and the connection's keepalive need it, and libvirt only
    uses it for connections opened after the registration.
    """
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        # libvirt-python prints every error to stderr, also the ones we catch.
        libvirt.registerErrorHandler(lambda _ctx, err: log.debug("libvirt: %s", err[2]), None)
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _loop_started = True


def _run_event_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError as e:
            log.error("libvirt event loop: %s", _msg(e))
            time.sleep(1.0)


def _msg(e: libvirt.libvirtError) -> str:
    return e.get_error_message() or str(e)


class LibvirtHypervisor:
    """provbackup's hypervisor on one libvirt URI; safe to share between threads."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._callback = -1
        self._events = threading.Condition()
        self._watches: list[tuple[str, list[tuple[float, int]]]] = []

    # --- connection -------------------------------------------------------

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # The callback holds a reference to the connection: deregister it first, or
        # the close leaks it. Either may fail on a connection that broke.
        for call in (lambda: conn.domainEventDeregisterAny(self._callback), conn.close):
            try:
                call()
            except libvirt.libvirtError:
                pass

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None and _alive(self._conn):
                return self._conn
            if self._conn is not None:
                log.warning("connection to %s broke; reconnecting", self.uri)
                self._drop()
            start_event_loop()
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as e:
                raise CannotConnectToBackendError(f"{self.uri}: {_msg(e)}") from e
            try:
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
                self._callback = conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
            except libvirt.libvirtError as e:
                conn.close()
                raise CannotConnectToBackendError(f"{self.uri}: {_msg(e)}") from e
            self._conn = conn
            return conn

    def _lookup(self, name: str) -> libvirt.virDomain:
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return conn.lookupByName(name)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise CannotFindMachineError(name) from e
                if attempt == 1 and not _alive(conn):
                    continue  # broke since the last call: the retry reconnects
                raise CannotConnectToBackendError(f"{self.uri}: {name}: {_msg(e)}") from e
        raise AssertionError("unreachable")

    def _call(self, error: type[StepError], what: str, function, *args):
        """function(*args) with a libvirtError translated by `_error`."""
        try:
            return function(*args)
        except libvirt.libvirtError as e:
            raise self._error(e, error, what) from e

    def _error(self, e: libvirt.libvirtError, error: type[StepError], what: str) -> StepError:
        """Domain gone (23), connection lost (17), or `error`, with libvirt's message."""
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return CannotFindMachineError(f"{what}: {_msg(e)}")
        if self._conn is None or not _alive(self._conn):
            return CannotConnectToBackendError(f"{self.uri}: {what}: {_msg(e)}")
        return error(f"{what}: {_msg(e)}")

    # --- reading ----------------------------------------------------------

    def domain(self, name: str) -> Domain:
        dom = self._lookup(name)
        state, info, xml, uuid = self._call(
            UndefinedError, f"reading domain {name}",
            lambda: (_power_state(dom), dom.info(), dom.XMLDesc(0), dom.UUIDString()))
        return Domain(name, uuid, state, info[2] * 1024,  # current memory, KiB
                      tuple(domxml.domain_disk(el) for el in domxml.file_disks(ET.fromstring(xml))))

    def definition(self, name: str) -> str:
        # No VIR_DOMAIN_XML_SECURE: the backup file is readable by a group, and
        # VNC/SPICE passwords must not end up in it.
        dom = self._lookup(name)
        return self._call(CannotSaveXmlError, f"definition of {name}",
                          dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)

    # --- snapshot ---------------------------------------------------------

    def snapshot(self, name: str, overlays: dict[str, Path],
                 memory_file: Path | None) -> SnapshotResult:
        started = time.monotonic()
        dom = self._lookup(name)
        what = f"snapshot of {name}"
        state, xml, uuid = self._call(CannotSaveMachineStateError, what, lambda: (
            _power_state(dom), dom.XMLDesc(0), dom.UUIDString()))
        running = state is PowerState.RUNNING
        if running != (memory_file is not None):
            raise CannotSaveMachineStateError(
                f"{name} is {'running' if running else 'shut off'}: a memory file is "
                f"{'required' if running else 'impossible'}")
        snapshot_xml = domxml.snapshot_xml(name, ET.fromstring(xml), overlays, memory_file)
        created = [Path(p) for p in overlays.values()] + ([memory_file] if memory_file else [])
        if existing := [str(p) for p in created if p.exists()]:
            raise CannotSaveMachineStateError(f"{what}: already exist: {existing}")
        # ATOMIC: on failure libvirt leaves the domain on its original images.
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE if running
                    else libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY))
        events: list[tuple[float, int]] = []
        with self._events:
            self._watches.append((uuid, events))
        flusher = _Flusher(memory_file) if memory_file else None
        try:
            call = time.monotonic()
            try:
                with flusher or contextlib.nullcontext():
                    self._call(CannotSaveMachineStateError, what,
                               dom.snapshotCreateXML, snapshot_xml, flags)
            except StepError:
                self._remove_leftovers(dom, created)
                raise
            call = time.monotonic() - call
            downtime = self._downtime(name, events, call) if running else 0.0
        finally:
            with self._events:
                self._watches.remove((uuid, events))
        return SnapshotResult(downtime, time.monotonic() - started)

    def _on_lifecycle(self, _conn, dom, event, _detail, _opaque) -> None:
        if event not in (_SUSPENDED, _RESUMED):
            return
        now = time.monotonic()  # the event thread stamps both events alike
        uuid = dom.UUIDString()
        with self._events:
            for watched, events in self._watches:
                if watched == uuid:
                    events.append((now, event))
            self._events.notify_all()

    def _downtime(self, name: str, events: list[tuple[float, int]], call: float) -> float:
        """Seconds between the first SUSPENDED event and the RESUMED after it."""
        deadline = time.monotonic() + EVENT_GRACE

        def pause() -> tuple[float, float] | None:
            stops = [t for t, ev in events if ev == _SUSPENDED]
            resumes = [t for t, ev in events if ev == _RESUMED and stops and t >= stops[0]]
            return (stops[0], resumes[0]) if resumes else None

        with self._events:
            # The RESUMED event may arrive just after snapshotCreateXML returned.
            while (found := pause()) is None and time.monotonic() < deadline:
                self._events.wait(deadline - time.monotonic())
        if found is None:
            log.warning("%s: no SUSPENDED/RESUMED events seen (%s); downtime taken as the "
                        "whole snapshot call, %.3f s", name, events, call)
            return call
        return found[1] - found[0]

    def _remove_leftovers(self, dom: libvirt.virDomain, created: list[Path]) -> None:
        """Delete files a failed snapshot created (they did not exist before the call)."""
        try:
            in_use = {el.get("file") for el in ET.fromstring(dom.XMLDesc(0)).iter("source")}
        except libvirt.libvirtError as e:
            log.warning("cannot tell whether %s are in use, leaving them: %s", created, _msg(e))
            return
        for path in created:
            if path.exists() and str(path) not in in_use:
                log.warning("removing %s left by the failed snapshot", path)
                path.unlink()

    # --- commit -----------------------------------------------------------

    def commit(self, name: str, target: str, bandwidth_mib: int = 0) -> None:
        dom = self._lookup(name)  # the state now, not at the snapshot, decides
        state = self._call(CannotMergeDiskImagesError, f"commit of {name}", _power_state, dom)
        if state is PowerState.RUNNING:
            self._commit_live(dom, name, target, bandwidth_mib)
        else:
            self._commit_offline(dom, name, target, bandwidth_mib)

    def _disk(self, dom: libvirt.virDomain, name: str, target: str,
              flags: int = 0) -> tuple[ET.Element, ET.Element, DomainDisk]:
        root = domxml.parse(self._call(CannotMergeDiskImagesError, f"commit of {name}",
                                 dom.XMLDesc, flags))
        for el in domxml.file_disks(root):
            if domxml.target_of(el) == target:
                return root, el, domxml.domain_disk(el, CannotMergeDiskImagesError)
        raise BackendXmlInconsistencyError(f"{name} has no file disk {target}")

    def _commit_live(self, dom: libvirt.virDomain, name: str, target: str, bw: int) -> None:
        """Active commit of the top image into the one below it, then pivot to that."""
        disk = self._disk(dom, name, target)[2]
        if disk.backing is None:
            log.info("%s %s is on its base %s already", name, target, disk.source)
            return
        what = f"commit of {name} {target} ({disk.source} into {disk.backing})"
        job = self._call(CannotMergeDiskImagesError, what, dom.blockJobInfo, target, 0)
        if job and job["type"] != libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
            raise CannotMergeDiskImagesError(f"{what}: another block job runs: {job}")
        if job:  # left by an earlier attempt, e.g. a daemon that died: carry it on
            log.warning("%s: continuing the commit job already running", what)
            self._call(CannotMergeDiskImagesError, what, dom.blockJobSetSpeed, target, bw, 0)
        else:
            # SHALLOW: into the image right below, never further down a longer chain.
            self._call(CannotMergeDiskImagesError, what, dom.blockCommit, target, None, None,
                       bw, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
                       | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)
        try:
            self._pivot_when_ready(dom, name, target, disk, bw, what)
        except StepError:
            try:  # leave no half-done job: the domain stays on the overlay, retry later
                dom.blockJobAbort(target, 0)
            except libvirt.libvirtError:
                pass
            raise

    def _pivot_when_ready(self, dom, name: str, target: str, disk: DomainDisk, bw: int,
                          what: str) -> None:
        """Poll the job; pivot once it is ready; return when the XML shows the base."""
        rate = bw * 1024 * 1024 if bw > 0 else qemuimg.MIN_RATE
        started = time.monotonic()
        deadline = started + qemuimg.MARGIN
        pivoted = False
        while True:
            job = self._call(CannotMergeDiskImagesError, what, dom.blockJobInfo, target, 0)
            # libvirt reports cur == end only once QEMU says the job is ready (1/1
            # for an empty overlay); the pivot then finishes the job.
            if job and not pivoted and job["end"] > 0 and job["cur"] == job["end"]:
                pivoted = self._pivot(dom, target, what)
                if pivoted:
                    deadline = time.monotonic() + PIVOT_TIMEOUT
            if pivoted or not job:
                # The pivot completes asynchronously: done when the XML shows the base.
                now = self._disk(dom, name, target)[2]
                if now.source == disk.backing:
                    return
                if not pivoted:
                    raise CannotMergeDiskImagesError(f"{what}: the block job ended without "
                                                     f"a pivot; still on {now.source}")
            else:
                # Proportional to the data: the guest may add to it while we copy.
                deadline = max(deadline, started + qemuimg.MARGIN + 2 * job["end"] / rate)
            if time.monotonic() > deadline:
                raise CannotMergeDiskImagesError(f"{what}: timed out (job: {job})")
            time.sleep(POLL)

    def _pivot(self, dom: libvirt.virDomain, target: str, what: str) -> bool:
        """Pivot to the base; False if QEMU says the job is not ready after all."""
        try:
            dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            return True
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_BLOCK_COPY_ACTIVE:
                return False
            raise self._error(e, CannotMergeDiskImagesError, what) from e

    def _commit_offline(self, dom: libvirt.virDomain, name: str, target: str,
                        bw: int) -> None:
        """qemu-img commit of the overlay, then the definition points at the base again."""
        root, el, disk = self._disk(dom, name, target, libvirt.VIR_DOMAIN_XML_INACTIVE)
        if disk.backing is None:
            log.info("%s %s is on its base %s already", name, target, disk.source)
            return
        what = f"commit of {name} {target} ({disk.source} into {disk.backing})"
        facts = qemuimg.info(disk.source, disk.format, error=CannotMergeDiskImagesError)
        base_format = facts.get("backing-filename-format") or qemuimg.info(
            disk.backing, error=CannotMergeDiskImagesError)["format"]
        qemuimg.commit(disk.source, bw)
        el.find("source").set("file", str(disk.backing))
        el.find("driver").set("type", base_format)
        for below in el.findall("backingStore"):
            el.remove(below)  # libvirt reads the base's own chain from its header
        # Started meanwhile? Then the live commit must do it (the data is in the
        # base already, so doing it again is harmless).
        if self._call(CannotMergeDiskImagesError, what, dom.isActive):
            raise CannotMergeDiskImagesError(f"{what}: {name} was started meanwhile")
        self._call(CannotMergeDiskImagesError, what, self._connection().defineXML,
                   ET.tostring(root, encoding="unicode"))

    # --- restore and friends ----------------------------------------------

    def settle(self, name: str, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until libvirt runs no job on the domain (CannotConnectToBackendError if it
        still does after `timeout`).

        A snapshot whose caller was killed goes on in libvirtd, and the disks move onto
        the overlays when it ends. Neither virDomainGetJobInfo nor GetJobStats tells
        reliably that it runs (a snapshot's job has no status before and after its
        memory phase). What is reliable is libvirt's job lock: removing a metadata
        element nobody set needs a MODIFY job, which libvirt grants only once the
        snapshot's job is over (waiting up to its own 30 s, then failing with a timeout,
        after which we ask again). The removal itself changes nothing.
        """
        dom = self._lookup(name)
        deadline = time.monotonic() + timeout
        invalid = 0
        while True:
            try:
                flags = (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive()
                         else libvirt.VIR_DOMAIN_AFFECT_CONFIG)
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None,
                                SETTLE_METADATA_URI, flags)
                return
            except libvirt.libvirtError as e:
                # OPERATION_INVALID: it may have started or stopped between the two
                # calls; a few of those in a row mean something else.
                invalid = invalid + 1 if e.get_error_code() == \
                    libvirt.VIR_ERR_OPERATION_INVALID else 0
                busy = e.get_error_code() == libvirt.VIR_ERR_OPERATION_TIMEOUT \
                    or 0 < invalid < 3
                if not busy:
                    raise self._error(e, CannotConnectToBackendError,
                                      f"wait for the jobs of {name}") from e
                if time.monotonic() > deadline:
                    raise CannotConnectToBackendError(
                        f"{self.uri}: {name} still runs a libvirt job after "
                        f"{timeout:.0f} s: {_msg(e)}") from e
                time.sleep(0.1)

    def exists(self, name: str) -> bool:
        """Whether a domain of this name is defined or running here."""
        try:
            self._lookup(name)
        except CannotFindMachineError:
            return False
        return True

    def destroy(self, name: str) -> None:
        """Stop the domain at once (like pulling the plug); a stopped domain is fine."""
        dom = self._lookup(name)
        if self._call(CannotRestoreMachineError, f"destroy {name}", dom.isActive):
            self._call(CannotRestoreMachineError, f"destroy {name}", dom.destroy)

    def undefine(self, name: str) -> None:
        """Remove the definition, with its snapshot/checkpoint metadata and managed save.

        The NVRAM file stays: a restored UEFI guest keeps its boot entries.
        """
        dom = self._lookup(name)
        self._call(CannotRestoreMachineError, f"undefine {name}", dom.undefineFlags,
                   libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                   | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                   | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)

    def start(self, name: str) -> None:
        """Start a defined domain (CannotStartMachineError, 42); a running one is fine."""
        dom = self._lookup(name)
        if not self._call(CannotStartMachineError, f"start {name}", dom.isActive):
            self._call(CannotStartMachineError, f"start {name}", dom.create)

    def define(self, xml: str) -> str:
        """Define (or redefine) a domain persistently; its name (CannotDefineMachineError)."""
        return self._call(CannotDefineMachineError, "define",
                          lambda: self._connection().defineXML(xml).name())

    def saved_definition(self, state_file: Path) -> str:
        """The domain XML inside a memory state file (CannotReadStateFileError, 44)."""
        return self._call(CannotReadStateFileError, f"read {state_file}",
                          self._connection().saveImageGetXMLDesc, str(state_file), 0)

    def restore(self, state_file: Path, xml: str) -> None:
        """Resume a domain from a memory state file, running, with exactly this XML.

        Always pass the XML: the one inside the file may describe disks that are
        not there any more (an overlay made right after the state was saved).
        """
        if not Path(state_file).is_file():
            raise CannotReadStateFileError(f"{state_file} is not a file")
        self._call(CannotRestoreMachineError, f"restore {state_file}",
                   self._connection().restoreFlags, str(state_file), xml,
                   libvirt.VIR_DOMAIN_SAVE_RUNNING)


# --- helpers on XML and states ----------------------------------------------

class _Flusher:
    """Writes the memory file back to disk while libvirt is still writing it.

    libvirt 9.0 fdatasyncs the whole memory file while the guest is paused; most of
    a live snapshot's downtime was that sync (bench/bench_backup.py: 117 of 140 ms).
    Syncing every few milliseconds during the live phase leaves little for the end.
    """

    INTERVAL = 0.01

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-file-flusher",
                                        daemon=True)

    def __enter__(self) -> _Flusher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        fd = -1
        try:
            while not self._stop.wait(self.INTERVAL):
                if fd < 0:
                    try:
                        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        continue
                os.fdatasync(fd)
        except OSError as e:
            log.debug("flushing %s: %s", self.path, e)  # only an optimisation
        finally:
            if fd >= 0:
                os.close(fd)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return conn.isAlive() == 1
    except libvirt.libvirtError:
        return False


def _power_state(dom: libvirt.virDomain) -> PowerState:
    state = dom.state()[0]
    if state in _RUNNING_STATES:
        return PowerState.RUNNING
    if state in _OFF_STATES:
        return PowerState.SHUT_OFF
    return PowerState.RUNNING if dom.isActive() else PowerState.SHUT_OFF
