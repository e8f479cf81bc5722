"""The daemon: follow the directory, lock and queue requests, run steps, talk to systemd.

Threads: the syncrepl consumer (it locks and queues through the intake, never runs a
step), a ticker taking deferred requests on their day, MAX_CONCURRENT_STEPS workers
(workflow/dispatcher.py) and the main thread, which only watches: READY=1 after the
first refresh, WATCHDOG=1 and a STATUS= line every second, signals.

Start: libvirt and the directory are tried ATTEMPTS + 1 times, SLEEP seconds apart;
if either still cannot be reached, run() raises UnavailableError (exit 69) and
systemd restarts the service after RestartSec. Nothing is in flight at that point,
and a failed unit shows the reason in `systemctl status`; once running, an outage of
either is ridden out (the consumer reconnects; a step fails with 17 and is answered).

Stop (SIGTERM or SIGINT): STOPPING=1, the consumer stops (no new locks), requests
locked but not started are LEFT LOCKED (progress word, state 0) for the start-up
recovery to handle, running steps get up to `stop_timeout` seconds to finish and
answer; a second signal stops waiting. Steps still running then are abandoned like a
crash: their journals record where they stand. docs/daemon.md has the details.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Callable

from provbackup import __version__
from provbackup.config import Config
from provbackup.directory.connection import DirectoryError, DirectoryUnavailable, connect
from provbackup.directory.mirror import Mirror
from provbackup.directory.status import StatusWriter
from provbackup.directory.syncrepl import SyncreplConsumer
from provbackup.errors import CannotConnectToBackendError
from provbackup.hypervisor.base import Hypervisor
from provbackup.notify import notify as sd_notify
from provbackup.workflow.dispatcher import Dispatcher
from provbackup.workflow.intake import Intake, Request
from provbackup.workflow.job import StepRunner
from provbackup.workflow.journal import JournalStore
from provbackup.workflow.recovery import RECOVERY_STEPS, in_flight
from provbackup.workflow.steps import STEPS

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between WATCHDOG=1/STATUS= and between looks at deferred requests
READY_POLL = 0.1  # how often the first refresh is looked for
DEFAULT_STOP_TIMEOUT = 300.0
THREAD_JOIN = 5.0  # the consumer looks up from its stream every 0.2 s; workers are idle
# A lookup of any name opens the libvirt connection; whether it exists does not matter.
PROBE_DOMAIN = "provbackup-start-probe"

Notify = Callable[[str], bool]


class UnavailableError(Exception):
    """The directory or libvirt could not be reached at start."""


class Daemon:
    """One node's provbackup: build, start, follow until a signal, stop."""

    def __init__(self, config: Config, *, hypervisor: Hypervisor | None = None,
                 notify: Notify = sd_notify, clock: Callable[[], float] = time.monotonic,
                 stop_timeout: float = DEFAULT_STOP_TIMEOUT, tick: float = TICK) -> None:
        if hypervisor is None:
            from provbackup.hypervisor.libvirt import LibvirtHypervisor
            hypervisor = LibvirtHypervisor(config.libvirt_uri)
        self.config = config
        self.hypervisor = hypervisor
        self.stop_timeout = stop_timeout
        self.tick = tick
        self._notify = notify
        self._clock = clock
        self._stop = threading.Event()
        self._hurry = threading.Event()  # a second signal: stop waiting for steps
        self._signal: int | None = None
        settings = config.ldap
        self.mirror = Mirror(settings.cookie_file)
        self.writer = StatusWriter(lambda: connect(settings))
        journals = JournalStore(config.state_directory)
        self._runner, self._recovery_runner = (
            StepRunner(steps, self.mirror, hypervisor, journals, self.writer,
                       settings.service_subtree, settings.cloud_wide_dn)
            for steps in (STEPS, RECOVERY_STEPS))
        self._recovering: set[str] = set()  # leaves found in flight at start
        self.dispatcher = Dispatcher(self._run_step, config.max_concurrent_steps)
        self.intake = Intake(config.node, self.mirror, self.writer, self.dispatcher.submit)
        self._recovered = False
        self.consumer = SyncreplConsumer(settings, self.mirror, self,
                                         reconnect_sleep=config.reconnect_sleep,
                                         reconnect_attempts=config.reconnect_attempts)
        self._threads: list[threading.Thread] = []
        self._deferred = 0  # requests waiting for a later day, as the ticker last saw

    # -- the life of the daemon ----------------------------------------------------

    def run(self) -> None:
        """Start, follow until stop(), SIGTERM or SIGINT, then stop; UnavailableError at start."""
        started = self._clock()
        self._install_signal_handlers()
        log.info("provbackup %s starting: node %s, configuration %s", __version__,
                 self.config.node, self.config.path)
        try:
            self._notify("STATUS=starting: connecting to libvirt and the directory")
            self._wait_for(self._probe_libvirt, f"libvirt at {self.config.libvirt_uri}")
            self._wait_for(self._probe_directory, f"the directory at {self.config.ldap.uri}")
            if self._stop.is_set():
                return
            self.dispatcher.start()
            self._spawn("syncrepl", self.consumer.run)
            self._spawn("ticker", self._ticker)
            self._watch(started)
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask run() to stop, as SIGTERM does."""
        self._stop.set()

    def status(self) -> str:
        """The one-line state for STATUS= and the log."""
        load = self.dispatcher.load()
        text = f"{len(load.running)} step{'' if len(load.running) == 1 else 's'} running"
        if load.running:
            text += " (" + ", ".join(_describe(r) for r in load.running) + ")"
        text += f", {len(load.queued)} queued"
        # Counted by the ticker: reading it here could wait for the intake's mutex.
        deferred = self._deferred
        return text + (f", {deferred} deferred to a later day" if deferred else "")

    # -- start ---------------------------------------------------------------------

    def _wait_for(self, probe: Callable[[], None], what: str) -> None:
        """Run `probe` until it works: ATTEMPTS retries SLEEP apart, then UnavailableError."""
        sleep, retries = self.config.reconnect_sleep, self.config.reconnect_attempts
        for attempt in range(1, retries + 2):
            if self._stop.is_set():
                return
            try:
                probe()
                return
            except _Retry as e:
                if attempt > retries:
                    raise UnavailableError(f"cannot reach {what} after {attempt} attempts: "
                                           f"{e}") from None
                log.warning("cannot reach %s (%s); attempt %d of %d, retrying in %d s",
                            what, e, attempt, retries + 1, sleep)
            # The next attempt may take a connect and a bind timeout after the wait:
            # keep systemd's start timeout from firing while we are within our bound.
            extend = (sleep + 2 * self.config.ldap.timeout + 10) * 1_000_000
            self._notify(f"EXTEND_TIMEOUT_USEC={extend}\n"
                         f"STATUS=starting: waiting for {what} (attempt {attempt})")
            self._stop.wait(sleep)

    def _probe_libvirt(self) -> None:
        try:
            self.hypervisor.exists(PROBE_DOMAIN)
        except CannotConnectToBackendError as e:
            raise _Retry(str(e)) from None

    def _probe_directory(self) -> None:
        try:
            conn = connect(self.config.ldap)
        except DirectoryUnavailable as e:
            raise _Retry(str(e)) from None
        except DirectoryError as e:
            # Bad credentials or TLS: trying again in SLEEP seconds cannot help, and
            # failing binds may lock the account. The message names the way out.
            raise UnavailableError(str(e)) from None
        with contextlib.suppress(Exception):  # closing a probe; nothing to report
            conn.unbind()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- running -------------------------------------------------------------------

    def _watch(self, started: float) -> None:
        """The main loop: READY=1 once, then WATCHDOG=1 and STATUS= every tick.

        Nothing here may wait for LDAP or libvirt (the intake holds its mutex while it
        writes a lock): a hung directory must not silence the watchdog.
        """
        ready, beat = False, 0.0
        while not self._stop.is_set():
            if not all(t.is_alive() for t in self._threads):
                # A bug ended a thread that loops for ever: exit 1, systemd restarts us.
                raise RuntimeError("the syncrepl consumer or the ticker thread died")
            if not ready and self.consumer.refreshes:
                ready, beat = True, 0.0
                log.info("ready after %.2f s: following %s as node %s, up to %d steps at once",
                         self._clock() - started, self.config.ldap.service_subtree,
                         self.config.node, self.config.max_concurrent_steps)
                self._notify("READY=1")
            if self._clock() >= beat:
                beat = self._clock() + self.tick
                status = f"following the directory; {self.status()}" if ready else \
                    "starting: first refresh of the directory"
                self._notify(f"WATCHDOG=1\nSTATUS={status}")
            self._stop.wait(self.tick if ready else READY_POLL)
        log.info("%s received; stopping", _signal_name(self._signal))

    # -- the consumer's listener: the intake, after recovery on the first refresh ----

    def changed(self, entry) -> None:
        """A persist-phase change: the intake decides."""
        self.intake.changed(entry)

    def refreshed(self) -> None:
        """A refresh ended. The first time, before the intake may lock anything, the
        leaves still locked by a stopped daemon are found: a lock taken by this process
        must never be mistaken for one left by a crash."""
        if not self._recovered:
            self._recovered = True
            self._recover()
        self.intake.refreshed()

    def _recover(self) -> None:
        """Queue again every leaf a stopped daemon left locked (workflow/recovery.py)."""
        for request in in_flight(self.mirror, self.config.node):
            log.warning("%s: found in flight after a restart; handling it again",
                        _describe(request))
            self._recovering.add(request.leaf.dn)
            self.dispatcher.submit(request)

    def _run_step(self, request: Request) -> object:
        """Run a queued request; one found in flight at start with the recovery steps."""
        recovering = request.leaf.dn in self._recovering
        self._recovering.discard(request.leaf.dn)
        return (self._recovery_runner if recovering else self._runner).run(request)

    def _ticker(self) -> None:
        """Takes deferred requests on their day; a thread of its own, as it writes LDAP."""
        while not self._stop.wait(self.tick):
            try:
                self.intake.tick()
            except DirectoryError as e:
                log.warning("taking deferred requests: %s", e)
            except Exception:  # noqa: BLE001 - a bug here must not end the ticker
                log.exception("taking deferred requests failed")
            self._deferred = len(self.intake.deferred)

    # -- stop ----------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stop.set()
        self._notify("STOPPING=1\nSTATUS=stopping")
        self.consumer.stop()  # first: no new request gets locked
        for request in self.dispatcher.close():
            log.warning("%s: locked but not started; left locked for recovery at the next "
                        "start", _describe(request))
        finished = self._wait_for_steps()
        for thread in self._threads:
            thread.join(THREAD_JOIN)
        if not finished:
            # The abandoned steps still use the connections; the process exit closes them.
            log.error("stop timeout of %.0f s over; abandoning %s", self.stop_timeout,
                      ", ".join(_describe(r) for r in self.dispatcher.load().running))
            return
        self.writer.close()
        self.hypervisor.close()
        if not any(t.is_alive() for t in self._threads):
            # A consumer still stuck in a connect would commit into a closed database;
            # SQLite's journal makes leaving it open as safe as a crash.
            self.mirror.close()
        log.info("stopped")

    def _wait_for_steps(self) -> bool:
        """Let running steps finish, up to stop_timeout or a second signal; True if they did."""
        deadline = self._clock() + self.stop_timeout
        running = self.dispatcher.load().running
        if running:
            log.info("waiting up to %.0f s for %s to finish", self.stop_timeout,
                     ", ".join(_describe(r) for r in running))
        while running:
            left = deadline - self._clock()
            if left <= 0 or self._hurry.is_set():
                return False
            # Our own timeout is the bound: keep systemd's TimeoutStopSec from cutting in.
            self._notify(f"EXTEND_TIMEOUT_USEC={int((min(left, self.tick) + 10) * 1_000_000)}\n"
                         f"STATUS=stopping: waiting up to {left:.0f} s for {len(running)} "
                         f"running step{'' if len(running) == 1 else 's'}")
            self.dispatcher.join(min(left, self.tick))  # returns early when they end
            running = self.dispatcher.load().running
        return self.dispatcher.join(THREAD_JOIN)

    # -- signals -------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread; a caller there uses stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        # Only flags here: the main loop logs and acts.
        if self._stop.is_set():
            self._hurry.set()
        self._signal = self._signal or signum
        self._stop.set()


class _Retry(Exception):
    """A start-up probe failed in a way that waiting may cure."""


def _describe(request: Request) -> str:
    return f"{request.leaf.vm_name} {request.leaf.backup_date} {request.verb.request}"


def _signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "stop request"
