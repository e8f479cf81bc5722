"""How fast `provbackup run` follows the directory, each figure against a plain OpenLDAP
client measured in the same run (issue 7): reaction latency, initial refresh, restart
with a cookie, and noise from other nodes.

    .venv/bin/python bench/bench_directory.py [--quick] [--only FIGURE] [--vms N]
        [--sizes N [N ...]] [--requests N] [--noise N] [--rounds N] [--dir /var/tmp]

Needs root (the private libvirtd below runs in its own mount namespace). Everything runs
in a scratch directory under --dir, removed at the end, also after Ctrl-C, SIGTERM or a
failure. What runs:

- a private slapd (tests/rig/slapd.py: back_mdb, syncprov, plain ldap:// on 127.0.0.1),
  filled by bench/directory_data.py with the sample directory and N generated VMs of 9
  entries each, spread over 20 nodes; the daemon is node-01 and owns every 20th VM;
- the daemon as it is, `python -m provbackup run -c CONFIG`, as a separate process: its
  stderr in a log file per start, READY=1 read from a NOTIFY_SOCKET of our own;
- a private libvirtd without any domain (tests/rig/libvirtd.py) as its LIBVIRT_URI. Not
  `test:///default`: the daemon's start probe sets a keepalive, which libvirt's
  client-side test driver refuses ("virConnectSetKeepAlive not supported"), so the
  daemon exits 69 with it. A request on one of the daemon's VMs is therefore locked and
  answered at once with 23 (CANNOT_FIND_MACHINE): one lock and one answer per request,
  as on a real node, without the step's work;
- an observer: one `ldapsearch -E sync=rp/<cookie>` for the whole run, started from the
  contextCSN so that it skips the initial refresh, its output stamped line by line on
  arrival. It is a syncrepl consumer exactly like the daemon, so the time it takes to
  see a change is the floor for any consumer of this slapd on this machine.

Figures:

1. Reaction latency: on fresh leaves of the daemon's VMs, one request at a time (the
   leaf's mode set to `snapshot`, state `0`, as the control instance does), each sent to
   an idle daemon (the previous one answered, then a 20 ms pause). Per request: the
   floor (the request arriving at the observer), the reaction (the entryCSN of the
   daemon's lock, mode `snapshotting`, as the observer saw it), both minus the moment
   the request was sent; beside them the request's own entryCSN (how long slapd took to
   take the write) and the answer's. p50, p99 (nearest rank) and max.
2. Initial refresh from no cookie of 0 (the sample directory only: the daemon's fixed
   start cost), then each of --sizes VMs, each on a fresh slapd: a plain `ldapsearch` of
   the subtree to /dev/null (time, peak RSS) against the daemon with a fresh
   state directory (start to READY=1, the refresh time from its log, VmHWM at READY=1),
   alternating, median of 3.
3. Restart with a cookie: SIGTERM, start again: start to READY=1 with no change in
   between (3 runs), then with 100 changes made while it was stopped; its log must report
   exactly 0, then exactly 100 entries added or changed. Baseline: `ldapsearch -E
   sync=ro/<the daemon's cookie>` fetching the same 100 changes.
4. Noise: --noise requests for leaves of other nodes' VMs written at once (4 ldapmodify
   processes), immediately followed by one request for the daemon's own VM, measured as
   in figure 1; then, after 1 s of quiet, every noise leaf must still hold the request
   with the entryCSN the observer saw for it (no write by this node). --rounds rounds.

Clocks: the reaction is a server timestamp (an entryCSN: slapd's CLOCK_REALTIME, in
microseconds) minus the moment the bench sent the request, so that moment is taken with
time.time(), the same clock (slapd runs on this host); so are the observer's arrival
stamps, which the floor compares with it. The bench's own durations (start to READY=1,
ldapsearch runs) use time.monotonic().

Progress goes to stderr; per figure a Markdown table and one line per target (met / NOT
met, with the numbers) to stdout. Exit 0 when the measurements were made, whether or not
the targets are met; 1 when a measurement itself failed (the daemon died or never became
ready, a node-01 write on another node's leaf, a wrong number of changes delivered, ...),
the reason on stdout in the figure's section and again on stderr; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ldap3  # noqa: E402

import directory_data as data  # noqa: E402  (bench/, beside this file)
from tests.rig.ldap_fixtures import SERVICE_DN, SUFFIX  # noqa: E402
from tests.rig.daemon_config import write_daemon_config  # noqa: E402
from tests.rig.libvirtd import Libvirtd  # noqa: E402
from tests.rig.slapd import Slapd, _tool  # noqa: E402

FIGURES = ("latency", "refresh", "restart", "noise")
REQUEST = "snapshot"
LOCK = "snapshotting"  # provbackup/workflow/verbs.py: the progress word of snapshot
DONE = "snapshotted"
PAUSE = 0.02  # between an answer and the next request
QUIET = 1.0  # idle time before a round, and before the noise leaves are read back
REPEAT = 3  # runs per size (figure 2) and restarts (figure 3)
RESTART_CHANGES = 100
NOISE_WRITERS = 4
FIRST_LEAF = datetime.datetime(2030, 1, 1)  # the bench's leaves: clear of directory_data's
REFRESH_LINE = re.compile(
    r"refresh done in ([0-9.]+) s: (\d+) entries, (\d+) added or changed, (\d+) deleted")
TOOL_ENV = {**os.environ, "LDAPNOINIT": "1", "LC_ALL": "C"}  # no ldap.conf of the machine
# What systemd would tell the daemon: removed so that it logs to stderr, not the journal.
SYSTEMD_ENV = ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC",
               "WATCHDOG_PID")

# Targets of issue 7.
P50_FACTOR, P50_MS, P99_MS = 2.0, 50.0, 250.0
REFRESH_FACTOR, RSS_MB, RSS_AT = 2.0, 300.0, 10_000
READY_S = 1.0

QUICK = dict(sizes=[200, 1000], vms=1000, requests=30, noise=100, rounds=2)
FULL = dict(sizes=[1000, 10_000], vms=10_000, requests=200, noise=1000, rounds=5)


class BenchFailure(RuntimeError):
    """The measurement itself failed (not a missed target); `detail` goes to stderr."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


# -- small helpers ------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def out(line: str = "") -> None:
    print(line, flush=True)


def csn_time(csn: str) -> float:
    """The time.time() value of an entryCSN (`YYYYmmddHHMMSS.ffffffZ#...`, UTC)."""
    stamp = datetime.datetime.strptime(csn.split("#", 1)[0], "%Y%m%d%H%M%S.%fZ")
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


def pct(values: list[float], q: float) -> float:
    """The q-th percentile by nearest rank: a value that was measured, never interpolated."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def mb(size: float) -> str:
    return f"{size / 1e6:.0f}"


def met(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def vmhwm(pid: int) -> int | None:
    """VmHWM (bytes) of a running process: the peak resident set of its current image;
    None once it is gone (a zombie has no memory left to report)."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None
    return int(found[1]) * 1024 if found else None


def provbackup_commit() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown (not a git checkout)"


def own_vms(n: int) -> list[int]:
    return [i for i in range(n) if data.node_of(i) == data.THIS_NODE]


def other_vms(n: int) -> list[int]:
    return [i for i in range(n) if data.node_of(i) != data.THIS_NODE]


# -- writing as the control instance ------------------------------------------------------

class Leaves:
    """Unique backup dates (leaf RDNs) for the leaves the bench creates in one run."""

    def __init__(self) -> None:
        self._next = 0

    def new(self, vm: int) -> str:
        """The DN of a new leaf of VM number `vm` (not yet in the directory)."""
        date = FIRST_LEAF + datetime.timedelta(seconds=self._next)
        self._next += 1
        return f"ou={date:%Y%m%dT%H%M%SZ},ou=backup,{data.vm_dn(vm)}"


def leaf_ldif(dn: str) -> str:
    """A new leaf as the control instance creates it: `initialized`, nothing pending."""
    ou = dn.split(",", 1)[0].split("=", 1)[1]
    return (f"dn: {dn}\nobjectClass: top\nobjectClass: organizationalUnit\n"
            f"objectClass: sstProvisioning\nou: {ou}\nsstProvisioningMode: initialized\n"
            f"sstProvisioningState: 20261122T020000Z\nsstProvisioningExecutionDate: 0\n")


def request_ldif(dn: str) -> str:
    """The control instance's request: the verb and state 0 in one modify."""
    return (f"dn: {dn}\nchangetype: modify\nreplace: sstProvisioningMode\n"
            f"sstProvisioningMode: {REQUEST}\n-\nreplace: sstProvisioningState\n"
            f"sstProvisioningState: 0\n-\n")


def ldap_tool(server: Slapd, password: Path, name: str, *args: str) -> list[str]:
    """argv of an OpenLDAP client bound as the root DN, the password read from a file."""
    return [_tool(name), "-x", "-H", server.ldap_uri, "-D", server.root_dn,
            "-y", str(password), *args]


def write_parallel(server: Slapd, password: Path, tool: str, blocks: list[str],
                   writers: int, workdir: Path) -> float:
    """Send LDIF blocks through `writers` ldapadd/ldapmodify processes at once (C clients:
    no GIL of ours between the writes); seconds until the last one exited."""
    files = []
    for k in range(writers):
        path = workdir / f"{tool}-{k}.ldif"
        path.write_text("\n".join(blocks[k::writers]))
        files.append(path)
    procs = []
    start = time.monotonic()
    try:
        for path in files:
            procs.append(subprocess.Popen(ldap_tool(server, password, tool, "-f", str(path)),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          env=TOOL_ENV))
        errors = [(p, p.communicate(timeout=600)[1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - start
    for p, err in errors:
        if p.returncode != 0:
            raise BenchFailure(f"{tool} of {len(blocks)} entries failed (exit {p.returncode}): "
                               f"{err.decode(errors='replace').strip()[-500:]}")
    return elapsed


class Writer:
    """The control instance's ldap3 connection (SYNC strategy, root DN), made once."""

    def __init__(self, server: Slapd) -> None:
        self.conn = server.connection()

    def request(self, dn: str) -> float:
        """Write the request; returns time.time() right before it was sent."""
        changes = {"sstProvisioningMode": [(ldap3.MODIFY_REPLACE, [REQUEST])],
                   "sstProvisioningState": [(ldap3.MODIFY_REPLACE, ["0"])]}
        sent = time.time()
        self.conn.modify(dn, changes)
        return sent

    def read(self, dn: str, *names: str) -> dict[str, str | None]:
        """The first value of each attribute, as text (raw: no ldap3 type conversion)."""
        self.conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=list(names))
        raw = {k.lower(): v for k, v in self.conn.response[0]["raw_attributes"].items()}
        return {n: (raw[n.lower()][0].decode() if raw.get(n.lower()) else None)
                for n in names}

    def close(self) -> None:
        self.conn.unbind()


def context_csn(writer: Writer) -> str:
    writer.conn.search(SUFFIX, "(objectClass=*)", ldap3.BASE, attributes=["contextCSN"])
    values = writer.conn.response[0]["raw_attributes"].get("contextCSN")
    if not values:
        raise BenchFailure(f"{SUFFIX} has no contextCSN: is syncprov loaded?")
    return max(v.decode() for v in values)


# -- the observer: a plain syncrepl consumer -------------------------------------------------

@dataclass
class Change:
    """One entry the observer received, stamped when its dn: line arrived."""

    dn: str  # lower case
    arrived: float  # time.time()
    attrs: dict[str, list[str]]  # names in lower case

    def value(self, name: str) -> str | None:
        values = self.attrs.get(name.lower())
        return values[0] if values else None

    @property
    def mode(self) -> str | None:
        return self.value("sstProvisioningMode")

    @property
    def state(self) -> str | None:
        return self.value("sstProvisioningState")

    @property
    def csn(self) -> str:
        csn = self.value("entryCSN")
        if csn is None:
            raise BenchFailure(f"the observer got {self.dn} without its entryCSN")
        return csn


def is_request(c: Change) -> bool:
    return c.mode == REQUEST and c.state == "0"


def is_lock(c: Change) -> bool:
    return c.mode == LOCK and c.state == "0"


def is_answer(c: Change) -> bool:
    return c.mode in (LOCK, DONE) and c.state not in (None, "0")


def _ldif_line(line: str) -> tuple[str, str]:
    """`name: value` or `name:: base64` of one unwrapped LDIF line."""
    name, _, rest = line.partition(":")
    if rest.startswith(":"):
        return name, base64.b64decode(rest[1:].strip()).decode(errors="replace")
    return name, rest[1:] if rest.startswith(" ") else rest


class Observer:
    """`ldapsearch -E sync=rp/<cookie>` of the service subtree, read by a thread.

    Started from the current contextCSN, so slapd skips its refresh (checked: `start`
    writes a sentinel change and counts what came before it). Its stdout is line
    buffered (stdbuf) and each entry gets the time its `dn:` line arrived; an entry ends
    with its entryCSN, which we ask for and slapd sends after the user attributes.
    """

    def __init__(self, server: Slapd, password: Path, cookie: str, workdir: Path) -> None:
        self.cookie = cookie
        self.stderr_path = workdir / "observer.stderr"
        self._cond = threading.Condition()
        self.changes: list[Change] = []
        self._by_dn: dict[str, list[Change]] = defaultdict(list)
        self._ended = False
        argv = ["stdbuf", "-oL", *ldap_tool(
            server, password, "ldapsearch", "-LLL", "-o", "ldif_wrap=no", "-b", SERVICE_DN,
            "-E", f"sync=rp/{cookie}", "(objectClass=*)", "*", "entryCSN")]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err, env=TOOL_ENV)
        self._thread = threading.Thread(target=self._read, name="observer", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending: Change | None = None
        for raw in self.proc.stdout:
            now = time.time()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("dn:"):
                self._add(pending)
                pending = Change(_ldif_line(line)[1].lower(), now, {})
            elif not line:
                self._add(pending)
                pending = None
            elif pending is not None:
                name, value = _ldif_line(line)
                pending.attrs.setdefault(name.lower(), []).append(value)
                if name.lower() == "entrycsn":
                    self._add(pending)
                    pending = None
        self._add(pending)
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _add(self, change: Change | None) -> None:
        if change is None:
            return
        with self._cond:
            self.changes.append(change)
            self._by_dn[change.dn].append(change)
            self._cond.notify_all()

    def wait(self, dn: str, test: Callable[[Change], bool], what: str, timeout: float,
             daemon: "Daemon | None" = None) -> Change:
        """The first change of `dn` that passes `test`, waiting for it if need be."""
        dn = dn.lower()
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for change in self._by_dn.get(dn, ()):
                    if test(change):
                        return change
                if self._ended:
                    raise BenchFailure(f"the observer (ldapsearch -E sync=rp) ended while "
                                       f"waiting for {what}", tail(self.stderr_path))
                if daemon is not None and not daemon.alive():
                    raise BenchFailure(f"the daemon exited ({daemon.proc.returncode}) while "
                                       f"waiting for {what}", tail(daemon.log_path))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchFailure(f"waited {timeout:.0f} s in vain for {what}")
                self._cond.wait(min(left, 0.5))

    def changes_of(self, dn: str) -> list[Change]:
        with self._cond:
            return list(self._by_dn.get(dn.lower(), ()))

    def check_live(self, writer: Writer) -> int:
        """Write a sentinel and wait for it; how many entries arrived before it (0 when
        the search started from the cookie, i.e. without a refresh)."""
        value = f"provbackup bench sentinel {time.time():.6f}"
        writer.conn.modify(SERVICE_DN, {"description": [(ldap3.MODIFY_REPLACE, [value])]})
        sentinel = self.wait(SERVICE_DN, lambda c: c.value("description") == value,
                             "the observer's sentinel", 120)
        with self._cond:
            return next(k for k, c in enumerate(self.changes) if c is sentinel)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(5)


# -- the daemon ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refresh:
    """The daemon's own account of a refresh phase (its log line)."""

    seconds: float
    entries: int
    changed: int
    deleted: int


def write_config(path: Path, server: Slapd, password: Path, libvirt_uri: str,
                 state: Path) -> Path:
    """The daemon's configuration: node-01, plain LDAP on loopback, password in a file."""
    return write_daemon_config(path, port=server.port, root_dn=server.root_dn,
                               password=password, libvirt_uri=libvirt_uri, state=state)


def ready_timeout(n: int) -> float:
    """Generous: a start that takes this long is broken, not slow."""
    return 60 + 0.02 * n


class Daemon:
    """One `python -m provbackup run` process, its stderr in `log_path`."""

    def __init__(self, config: Path, workdir: Path, tag: str) -> None:
        self.log_path = workdir / f"daemon-{tag}.log"
        self.argv = [sys.executable, "-m", "provbackup", "run", "-c", str(config),
                     "--lock-file", str(workdir / "provbackup.lock")]
        self.notify_path = workdir / "notify.sock"
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.started = self.ready_at = 0.0

    def start(self) -> "Daemon":
        self.notify_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.sock.settimeout(0.2)
        self._ready = threading.Event()
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        env["NOTIFY_SOCKET"] = str(self.notify_path)
        with open(self.log_path, "ab") as err:
            self.started = time.monotonic()
            # Own session: a Ctrl-C at the terminal reaches only the bench, which stops it.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, env=env,
                                         cwd=REPO, start_new_session=True)
        # Read the notify socket for as long as the daemon runs, as systemd does: its
        # WATCHDOG=1 every second would otherwise fill the socket's queue.
        self._reader = threading.Thread(target=self._read_notify, args=(self.sock,),
                                        name="notify", daemon=True)
        self._reader.start()
        return self

    def _read_notify(self, sock: socket.socket) -> None:
        while True:
            try:
                datagram = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:  # closed by close()
                return
            if "READY=1" in datagram.decode(errors="replace").splitlines():
                self.ready_at = time.monotonic()
                self._ready.set()

    def wait_ready(self, timeout: float) -> float:
        """Seconds from the start of the process to READY=1."""
        deadline = self.started + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None:
                raise BenchFailure(f"the daemon exited with {self.proc.returncode} before "
                                   f"READY=1 (log {self.log_path.name})", tail(self.log_path))
            if time.monotonic() > deadline:
                raise BenchFailure(f"no READY=1 from the daemon within {timeout:.0f} s",
                                   tail(self.log_path))
        return self.ready_at - self.started

    def peak_rss(self) -> int:
        """VmHWM (bytes): the largest resident set of the process so far."""
        peak = vmhwm(self.proc.pid)
        if peak is None:
            raise BenchFailure("the daemon exited right after READY=1", tail(self.log_path))
        return peak

    def refresh(self, timeout: float = 10.0) -> Refresh:
        """The first refresh this process logged (the one READY=1 waited for).

        Waits a little for it: the consumer counts the refresh, which lets the main
        thread send READY=1, a moment before it logs the line.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = REFRESH_LINE.search(self.log_path.read_text(errors="replace"))
            if found is not None:
                return Refresh(float(found[1]), int(found[2]), int(found[3]), int(found[4]))
            if not self.alive() or time.monotonic() > deadline:
                raise BenchFailure(
                    f"no line matching /{REFRESH_LINE.pattern}/ in the daemon's log "
                    f"({self.log_path.name}) within {timeout:.0f} s of READY=1: the "
                    f"consumer does not log its refresh in this form", tail(self.log_path))
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM; it must exit 0."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchFailure(f"the daemon did not exit within {timeout:.0f} s of SIGTERM",
                               tail(self.log_path)) from None
        finally:
            self.close()
        if code != 0:
            raise BenchFailure(f"the daemon exited with {code} after SIGTERM",
                               tail(self.log_path))

    def close(self) -> None:
        """Kill it if it still runs; close the notify socket. Safe to call twice."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.notify_path.unlink(missing_ok=True)


# -- the main directory: slapd, writer, observer, the daemon ------------------------------------

class Rig:
    """The --vms directory that figures 1, 3 and 4 share, with its daemon's state."""

    def __init__(self, workdir: Path, n: int, libvirt_uri: str,
                 stack: contextlib.ExitStack) -> None:
        self.workdir, self.n = workdir, n
        workdir.mkdir()
        log(f"filling a slapd with {n:,} VMs")
        self.slapd = data.filled_slapd(workdir / "slapd", n)
        stack.callback(data.remove, self.slapd)
        self.password = self.slapd.write_password_file(workdir / "ldap.password")
        self.state = workdir / "state"
        self.state.mkdir()
        self.config = write_config(workdir / "provbackup.conf", self.slapd, self.password,
                                   libvirt_uri, self.state)
        self.writer = Writer(self.slapd)
        stack.callback(self.writer.close)
        cookie = f"rid=000,csn={context_csn(self.writer)}"
        self.observer = Observer(self.slapd, self.password, cookie, workdir)
        stack.callback(self.observer.close)
        before = self.observer.check_live(self.writer)
        log(f"observer following from {cookie}: {before} entries before its sentinel"
            + ("" if before == 0 else " (so it did a refresh, now over)"))
        self.leaves = Leaves()
        self.daemon: Daemon | None = None
        self.starts = 0
        stack.callback(self.kill_daemon)

    def start_daemon(self, tag: str) -> float:
        """Start the daemon on the rig's state; seconds to READY=1."""
        assert self.daemon is None, "the daemon already runs"
        self.starts += 1
        self.daemon = Daemon(self.config, self.workdir, f"{self.starts:02d}-{tag}").start()
        return self.daemon.wait_ready(ready_timeout(self.n))

    def ensure_daemon(self) -> Daemon:
        if self.daemon is None:
            log("starting the daemon")
            log(f"READY=1 after {self.start_daemon('run'):.2f} s")
        return self.daemon

    def stop_daemon(self) -> None:
        daemon, self.daemon = self.daemon, None
        if daemon is not None:
            daemon.stop()

    def kill_daemon(self) -> None:
        daemon, self.daemon = self.daemon, None
        if daemon is not None:
            daemon.close()

    def add_leaves(self, dns: list[str], writers: int = 1) -> None:
        """Create the leaves and wait until the observer (so, likely, the daemon) saw them,
        then stay quiet for a moment: the next request meets an idle daemon."""
        write_parallel(self.slapd, self.password, "ldapadd", [leaf_ldif(dn) for dn in dns],
                       writers, self.workdir)
        for dn in dns:
            self.observer.wait(dn, lambda c: c.mode == "initialized", f"the new leaf {dn}", 60,
                               self.daemon)
        time.sleep(QUIET)


@dataclass(frozen=True)
class Reaction:
    """One request, each figure in seconds after the bench sent it."""

    committed: float  # the request's own entryCSN
    floor: float  # arrival at the observer
    reaction: float  # the daemon's lock's entryCSN
    answered: float  # the daemon's answer's entryCSN


def measure_request(rig: Rig, dn: str) -> Reaction:
    """Send one request for a leaf of the daemon's own VM and follow it to the answer."""
    obs, daemon = rig.observer, rig.daemon
    sent = rig.writer.request(dn)
    request = obs.wait(dn, is_request, f"the request on {dn} at the observer", 60, daemon)
    lock = obs.wait(dn, is_lock, f"node-01's lock ({LOCK}) on {dn}", 60, daemon)
    answer = obs.wait(dn, is_answer, f"node-01's answer on {dn}", 120, daemon)
    return Reaction(csn_time(request.csn) - sent, request.arrived - sent,
                    csn_time(lock.csn) - sent, csn_time(answer.csn) - sent)


# -- figure 1 ----------------------------------------------------------------------------------

def figure_latency(rig: Rig, requests: int) -> None:
    out(f"### 1. Reaction latency: {requests} requests, {rig.n:,} VMs\n")
    own = own_vms(rig.n)
    dns = [rig.leaves.new(own[k % len(own)]) for k in range(requests)]
    rig.ensure_daemon()
    log(f"latency: creating {requests} leaves on the daemon's VMs")
    rig.add_leaves(dns)
    samples = []
    for k, dn in enumerate(dns, 1):
        time.sleep(PAUSE)
        samples.append(measure_request(rig, dn))
        if k % 50 == 0 or k == requests:
            log(f"latency: {k}/{requests} requests, last reaction {ms(samples[-1].reaction)} ms")
    out("Each request on a fresh leaf of one of the daemon's VMs, sent when the previous "
        f"one was answered and {PAUSE * 1000:.0f} ms had passed. Milliseconds after the "
        "bench sent the request (slapd's entryCSN or the observer's arrival stamp; same "
        f"host, same clock); p99 by nearest rank. The observer is `ldapsearch -E sync=rp`, "
        "a syncrepl consumer like the daemon.\n")
    out("| ms after the request was sent | p50 | p99 | max |")
    out("|---|---:|---:|---:|")
    rows = [("slapd took the request (its entryCSN)", [s.committed for s in samples]),
            ("**floor**: a plain syncrepl client (the observer) has it",
             [s.floor for s in samples]),
            ("**reaction**: the daemon's lock (`snapshotting`, its entryCSN)",
             [s.reaction for s in samples]),
            ("the daemon's answer (return value 23, its entryCSN)",
             [s.answered for s in samples])]
    for name, values in rows:
        out(f"| {name} | {ms(pct(values, 50))} | {ms(pct(values, 99))} | {ms(max(values))} |")
    react = [s.reaction for s in samples]
    floor = [s.floor for s in samples]
    out(f"| ratio reaction / floor | {pct(react, 50) / pct(floor, 50):.2f} "
        f"| {pct(react, 99) / pct(floor, 99):.2f} | {max(react) / max(floor):.2f} |\n")
    latency_targets(react, floor, "")


def latency_targets(react: list[float], floor: list[float], what: str) -> None:
    """The two target lines of figure 1 (p50 and p99; `what` names other statistics)."""
    p50, f50, p99 = pct(react, 50), pct(floor, 50), pct(react, 99)
    out(f"- target{what} reaction p50 <= {P50_FACTOR:g} x floor p50 and < {P50_MS:g} ms: "
        f"{met(p50 <= P50_FACTOR * f50 and p50 * 1000 < P50_MS)} "
        f"({ms(p50)} ms = {p50 / f50:.2f} x {ms(f50)} ms)")
    out(f"- target{what} reaction p99 < {P99_MS:g} ms: {met(p99 * 1000 < P99_MS)} "
        f"({ms(p99)} ms)\n")


# -- figure 2 ----------------------------------------------------------------------------------

def time_ldapsearch(server: Slapd, password: Path, workdir: Path) -> tuple[float, int]:
    """A plain ldapsearch of the subtree to /dev/null: seconds and peak RSS (bytes).

    The peak is VmHWM sampled every 5 ms by a thread, not wait4's ru_maxrss: Linux
    carries the largest RSS of the image a process replaced over exec, so a child of
    this (Python, ~90 MB) process reports at least our own size.
    """
    argv = ldap_tool(server, password, "ldapsearch", "-LLL", "-b", SERVICE_DN,
                     "(objectClass=*)", "*")
    err = workdir / "ldapsearch.stderr"
    peak, exited = [0], threading.Event()

    def sample() -> None:
        while not exited.wait(0.005):
            peak[0] = max(peak[0], vmhwm(proc.pid) or 0)

    with open(err, "wb") as handle:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=handle, env=TOOL_ENV)
        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        _, status = os.waitpid(proc.pid, 0)
        elapsed = time.monotonic() - start
    exited.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchFailure(f"ldapsearch exited with {proc.returncode}: {tail(err, 5)}")
    return elapsed, peak[0]


def count_entries(server: Slapd, password: Path) -> int:
    done = subprocess.run(ldap_tool(server, password, "ldapsearch", "-LLL", "-b", SERVICE_DN,
                                    "(objectClass=*)", "1.1"),
                          capture_output=True, text=True, env=TOOL_ENV, timeout=600)
    if done.returncode != 0:
        raise BenchFailure(f"counting the entries failed: {done.stderr.strip()}")
    return sum(line.startswith("dn:") for line in done.stdout.splitlines())


@dataclass(frozen=True)
class RefreshRow:
    n: int
    entries: int
    ldapsearch: float
    ldapsearch_rss: float
    refresh: float
    ready: float
    rss: float
    parts: dict[str, float] | None  # bench/refresh_parts.py: seconds per variant


def refresh_size(workdir: Path, n: int, libvirt_uri: str) -> RefreshRow:
    """Figure 2 for one size, on a fresh slapd: ldapsearch and the daemon alternating."""
    workdir.mkdir()
    log(f"refresh: filling a slapd with {n:,} VMs")
    server = data.filled_slapd(workdir / "slapd", n)
    try:
        password = server.write_password_file(workdir / "ldap.password")
        entries = count_entries(server, password)
        runs: dict[str, list[float]] = defaultdict(list)
        for k in range(REPEAT):
            seconds, rss = time_ldapsearch(server, password, workdir)
            runs["ldapsearch"].append(seconds)
            runs["ldapsearch_rss"].append(rss)
            state = workdir / f"state-{k}"
            state.mkdir()
            config = write_config(workdir / f"provbackup-{k}.conf", server, password,
                                  libvirt_uri, state)
            daemon = Daemon(config, workdir, f"{k}").start()
            try:
                runs["ready"].append(daemon.wait_ready(ready_timeout(n)))
                runs["rss"].append(daemon.peak_rss())
                refresh = daemon.refresh()
                daemon.stop()
            finally:
                daemon.close()
            if (refresh.entries, refresh.changed, refresh.deleted) != (entries, entries, 0):
                raise BenchFailure(
                    f"{n:,} VMs: the daemon's first refresh reported {refresh.entries} "
                    f"entries, {refresh.changed} added or changed, {refresh.deleted} deleted; "
                    f"the directory holds {entries} (expected {entries}, {entries}, 0)")
            runs["refresh"].append(refresh.seconds)
            log(f"refresh: {n:,} VMs run {k + 1}/{REPEAT}: ldapsearch {seconds:.2f} s, daemon "
                f"refresh {refresh.seconds:.2f} s, READY=1 after {runs['ready'][-1]:.2f} s")
        med = {name: statistics.median(values) for name, values in runs.items()}
        parts = refresh_parts(config, workdir / "parts") if n else None
        return RefreshRow(n, entries, med["ldapsearch"], med["ldapsearch_rss"], med["refresh"],
                          med["ready"], med["rss"], parts)
    finally:
        data.remove(server)


def refresh_parts(config: Path, state_root: Path) -> dict[str, float]:
    """bench/refresh_parts.py on this directory: the consumer's refresh, in a process of
    its own, in full, without SQLite, and decoding only."""
    log(f"refresh: where the time goes (bench/refresh_parts.py, {REPEAT} runs each)")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "refresh_parts.py"),
                           str(config), str(state_root), "--runs", str(REPEAT)],
                          capture_output=True, text=True, cwd=REPO, timeout=1800)
    if done.returncode != 0:
        raise BenchFailure(f"bench/refresh_parts.py exited with {done.returncode}",
                           done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def figure_refresh(workdir: Path, sizes: list[int], libvirt_uri: str) -> None:
    out(f"### 2. Initial refresh from no cookie: {', '.join(f'{n:,}' for n in sizes)} VMs\n")
    rows = [refresh_size(workdir / f"refresh-{n}", n, libvirt_uri) for n in [0, *sizes]]
    out(f"Each size on a fresh slapd; median of {REPEAT} runs, ldapsearch and the daemon "
        "alternating, the daemon each time with an empty state directory (no cookie, no "
        "mirror). ldapsearch: `ldapsearch -LLL -b <subtree> '(objectClass=*)' '*'` to "
        "/dev/null, peak RSS = its VmHWM sampled every 5 ms. Daemon: refresh = its own log "
        "line, READY = from process start to READY=1, peak RSS = VmHWM at READY=1. 0 VMs = "
        "the sample directory alone: what the daemon's start costs besides the refresh.\n")
    out("| VMs | entries | ldapsearch s | ldapsearch peak RSS MB | daemon refresh s "
        "| daemon start to READY=1 s | of which outside the refresh s | daemon peak RSS MB "
        "| refresh / ldapsearch | READY / ldapsearch |")
    out("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        out(f"| {r.n:,} | {r.entries:,} | {r.ldapsearch:.3f} | {mb(r.ldapsearch_rss)} "
            f"| {r.refresh:.3f} | {r.ready:.3f} | {r.ready - r.refresh:.3f} | {mb(r.rss)} "
            f"| {r.refresh / r.ldapsearch:.2f} | {r.ready / r.ldapsearch:.2f} |")
    out()
    out("Where the refresh time goes: the daemon's consumer alone in a process (bench/"
        f"refresh_parts.py, median of {REPEAT}, variants interleaved) in full, then building "
        "each mirror row but not storing it, then only reading and decoding the messages. "
        "Each difference is what one stage costs.\n")
    out("| VMs | full s | without SQLite s | decode only s | SQLite (inserts, commit) s "
        "| mirror rows (DN path, pending flag) s | ldapsearch s | decode only / ldapsearch |")
    out("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows[1:]:
        p = r.parts
        out(f"| {r.n:,} | {p['full']:.3f} | {p['rows']:.3f} | {p['decode']:.3f} "
            f"| {p['full'] - p['rows']:.3f} | {p['rows'] - p['decode']:.3f} "
            f"| {r.ldapsearch:.3f} | {p['decode'] / r.ldapsearch:.2f} |")
    out()
    for r in rows[1:]:
        out(f"- target {r.n:,} VMs, refresh <= {REFRESH_FACTOR:g} x ldapsearch: "
            f"{met(r.refresh <= REFRESH_FACTOR * r.ldapsearch)} ({r.refresh:.3f} s = "
            f"{r.refresh / r.ldapsearch:.2f} x {r.ldapsearch:.3f} s; start to READY=1: "
            f"{r.ready / r.ldapsearch:.2f} x)")
    at = [r for r in rows if r.n == RSS_AT]
    if at:
        out(f"- target {RSS_AT:,} VMs, daemon peak RSS < {RSS_MB:g} MB: "
            f"{met(at[0].rss / 1e6 < RSS_MB)} ({mb(at[0].rss)} MB)")
    else:
        out(f"- target {RSS_AT:,} VMs, daemon peak RSS < {RSS_MB:g} MB: not measured "
            f"(--sizes {' '.join(map(str, sizes))})")
    out()


# -- figure 3 ----------------------------------------------------------------------------------

def change_ldif(vm: int, k: int) -> str:
    """One of the changes made while the daemon is stopped: a finished leaf's description."""
    return (f"dn: {data.leaf_dn(vm, data.LEAF_DATES[0])}\nchangetype: modify\n"
            f"replace: description\ndescription: provbackup bench change {k}\n-\n")


def sync_ro(rig: Rig, cookie: str) -> tuple[float, int]:
    """The baseline catch-up: `ldapsearch -E sync=ro/<cookie>`; seconds and entries."""
    argv = ldap_tool(rig.slapd, rig.password, "ldapsearch", "-LLL", "-o", "ldif_wrap=no",
                     "-b", SERVICE_DN, "-E", f"sync=ro/{cookie}", "(objectClass=*)", "*")
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=TOOL_ENV, timeout=600)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise BenchFailure(f"ldapsearch -E sync=ro failed ({done.returncode}): "
                           f"{done.stderr.strip()}")
    return elapsed, sum(line.startswith("dn:") for line in done.stdout.splitlines())


def restart(rig: Rig, tag: str) -> tuple[float, Refresh]:
    """Start the daemon on its state; seconds to READY=1 and its refresh line."""
    ready = rig.start_daemon(tag)
    refresh = rig.daemon.refresh()
    log(f"restart ({tag}): READY=1 after {ready:.3f} s; refresh {refresh}")
    return ready, refresh


def figure_restart(rig: Rig) -> None:
    out(f"### 3. Restart with a cookie: {rig.n:,} VMs\n")
    if rig.daemon is None:  # make sure it has a cookie and a mirror
        restart(rig, "first")
    rig.stop_daemon()
    quiet = []
    for k in range(REPEAT):
        quiet.append(restart(rig, f"quiet-{k}"))
        rig.stop_daemon()
    cookie_file = rig.state / "syncrepl.cookie"
    if not cookie_file.exists():
        raise BenchFailure(f"the daemon left no cookie file ({cookie_file})")
    cookie = cookie_file.read_text().strip()
    vms = list(range(RESTART_CHANGES))
    log(f"restart: {len(vms)} changes while the daemon is stopped")
    write_parallel(rig.slapd, rig.password, "ldapmodify",
                   [change_ldif(i, k) for k, i in enumerate(vms)], 1, rig.workdir)
    changed_ready, changed = restart(rig, "changed")
    base_s, base_entries = sync_ro(rig, cookie)
    own = sum(data.node_of(i) == data.THIS_NODE for i in vms)

    readies = [r for r, _ in quiet]
    out("SIGTERM (exit 0), then start again on the same state directory: from process "
        "start to READY=1, and what the daemon's refresh log line reports. The changes: "
        f"`description` of one finished leaf of each of {len(vms)} VMs ({own} of them the "
        "daemon's), written while it was stopped.\n")
    out("| restart | start to READY=1 s | daemon refresh s | entries added or changed "
        "| deleted |")
    out("|---|---:|---:|---:|---:|")
    out(f"| no change, median of {REPEAT} (max) | {statistics.median(readies):.3f} "
        f"({max(readies):.3f}) | {statistics.median(r.seconds for _, r in quiet):.3f} "
        f"| {', '.join(str(r.changed) for _, r in quiet)} "
        f"| {', '.join(str(r.deleted) for _, r in quiet)} |")
    out(f"| {len(vms)} changes while stopped | {changed_ready:.3f} | {changed.seconds:.3f} "
        f"| {changed.changed} | {changed.deleted} |")
    out(f"| baseline: `ldapsearch -E sync=ro/<the daemon's cookie>`, same {len(vms)} "
        f"changes | {base_s:.3f} (whole process) | | {base_entries} | |\n")
    out(f"- target no change, READY=1 within {READY_S:g} s: {met(max(readies) <= READY_S)} "
        f"(max {max(readies):.3f} s, median {statistics.median(readies):.3f} s)")
    out(f"- target {len(vms)} changes while stopped, exactly those delivered: "
        f"{met(changed.changed == len(vms) and changed.deleted == 0)} "
        f"({changed.changed} added or changed, {changed.deleted} deleted)\n")
    wrong = [f"a restart without change reported {r.changed} added or changed, "
             f"{r.deleted} deleted" for _, r in quiet if (r.changed, r.deleted) != (0, 0)]
    if (changed.changed, changed.deleted) != (len(vms), 0):
        wrong.append(f"the restart after {len(vms)} changes reported {changed.changed} added "
                     f"or changed, {changed.deleted} deleted (expected {len(vms)}, 0)")
    if wrong:
        raise BenchFailure("; ".join(wrong))


# -- figure 4 ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NoiseRound:
    written: float  # seconds for all the noise writes
    delivered: float  # seconds from the start of the noise to its last arrival at the observer
    own: Reaction
    untouched: int


def untouched(rig: Rig, requests: dict[str, Change]) -> tuple[int, list[str]]:
    """How many noise leaves still hold the request as written, and what is wrong with
    the others (a later change seen by the observer, or another value in slapd)."""
    bad = []
    for dn, request in requests.items():
        seen = rig.observer.changes_of(dn)
        later = seen[next(k for k, c in enumerate(seen) if c is request) + 1:]
        now = rig.writer.read(dn, "sstProvisioningMode", "sstProvisioningState", "entryCSN")
        expected = {"sstProvisioningMode": REQUEST, "sstProvisioningState": "0",
                    "entryCSN": request.csn}
        if later or now != expected:
            bad.append(f"{dn}: now {now}, {len(later)} later change(s) "
                       f"{[(c.mode, c.state) for c in later]}")
    return len(requests) - len(bad), bad


def noise_round(rig: Rig, r: int, noise: int) -> NoiseRound:
    others, own = other_vms(rig.n), own_vms(rig.n)
    dns = [rig.leaves.new(others[(r * noise + k) % len(others)]) for k in range(noise)]
    mine = rig.leaves.new(own[r % len(own)])
    rig.add_leaves(dns + [mine], NOISE_WRITERS)
    log(f"noise round {r + 1}: {noise} requests for other nodes, then one of ours")
    began = time.time()
    written = write_parallel(rig.slapd, rig.password, "ldapmodify",
                             [request_ldif(dn) for dn in dns], NOISE_WRITERS, rig.workdir)
    own_request = measure_request(rig, mine)
    requests = {dn: rig.observer.wait(dn, is_request, f"the noise request on {dn}", 60)
                for dn in dns}
    delivered = max(c.arrived for c in requests.values()) - began
    time.sleep(QUIET)
    kept, bad = untouched(rig, requests)
    log(f"noise round {r + 1}: written in {written:.2f} s; own reaction "
        f"{ms(own_request.reaction)} ms (floor {ms(own_request.floor)} ms); "
        f"{kept}/{noise} noise leaves untouched")
    if bad:
        raise BenchFailure(f"noise round {r + 1}: node-01 wrote to {len(bad)} of the {noise} "
                           f"leaves of other nodes, e.g. {bad[0]}", "\n".join(bad[:20]))
    return NoiseRound(written, delivered, own_request, kept)


def figure_noise(rig: Rig, noise: int, rounds: int) -> None:
    out(f"### 4. Noise from other nodes: {noise:,} requests at once, {rounds} rounds, "
        f"{rig.n:,} VMs\n")
    rig.ensure_daemon()
    results = [noise_round(rig, r, noise) for r in range(rounds)]
    out(f"Each round: {noise:,} requests (`snapshot`, state 0) on fresh leaves of VMs of "
        f"other nodes, written by {NOISE_WRITERS} ldapmodify processes at once, immediately "
        "followed by one request on a fresh leaf of one of the daemon's VMs, measured as in "
        "figure 1 (ms after it was sent). Then, after 1 s of quiet, each noise leaf is read "
        "back: still `snapshot`, state 0 and the entryCSN the observer saw for the request, "
        "and the observer saw no later change of it.\n")
    out("| round | noise written s (writes/s) | noise at the observer after s | own request: "
        "floor ms | reaction ms | reaction / floor | answer ms | noise leaves untouched |")
    out("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, r in enumerate(results, 1):
        out(f"| {k} | {r.written:.2f} ({noise / r.written:,.0f}) | {r.delivered:.2f} "
            f"| {ms(r.own.floor)} | {ms(r.own.reaction)} | {r.own.reaction / r.own.floor:.2f} "
            f"| {ms(r.own.answered)} | {r.untouched:,} / {noise:,} |")
    out()
    react = [r.own.reaction for r in results]
    floor = [r.own.floor for r in results]
    out(f"- target no write by this node on the {rounds * noise:,} leaves of other nodes: "
        f"{met(all(r.untouched == noise for r in results))}")
    latency_targets(react, floor, f" (figure 1's, over the {rounds} rounds)")


# -- the run ---------------------------------------------------------------------------------

class Bench:
    """What the figures share: the scratch directory, the libvirtd, the --vms rig."""

    def __init__(self, args: argparse.Namespace, work: Path,
                 stack: contextlib.ExitStack) -> None:
        self.args, self.work, self.stack = args, work, stack
        self.failures: list[str] = []
        log("starting a private libvirtd (no domains)")
        self.libvirtd = Libvirtd(work / "libvirtd")
        stack.callback(self.libvirtd.stop)
        self.libvirtd.start()
        self._rig: Rig | None = None

    @property
    def rig(self) -> Rig:
        if self._rig is None:
            self._rig = Rig(self.work / "main", self.args.vms, self.libvirtd.uri, self.stack)
        return self._rig

    def header(self) -> None:
        a = self.args
        load = os.getloadavg()[0]
        out(f"Directory benchmark (`bench/bench_directory.py{' --quick' if a.quick else ''}`), "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: provbackup "
            f"{provbackup_commit()}; {os.cpu_count()} cores, 1-min load average {load:.2f} at "
            f"the start. The daemon runs as it is (`python -m provbackup run`, a separate "
            f"process, node-01) against a private slapd on this host holding the sample "
            f"directory and {a.vms:,} generated VMs (figures 1, 3, 4; 9 entries each, 20 "
            f"nodes, 1 VM in 20 is node-01's); its LIBVIRT_URI is a private libvirtd without "
            f"domains, so each request on one of its VMs is locked and answered with 23 "
            f"(CANNOT_FIND_MACHINE) at once.\n")

    def run(self, figure: str) -> None:
        a = self.args
        started = time.monotonic()
        try:
            if figure == "latency":
                figure_latency(self.rig, a.requests)
            elif figure == "refresh":
                if self._rig is not None:
                    self._rig.stop_daemon()  # the --vms directory stays, idle
                figure_refresh(self.work, a.sizes, self.libvirtd.uri)
            elif figure == "restart":
                figure_restart(self.rig)
            elif figure == "noise":
                figure_noise(self.rig, a.noise, a.rounds)
        except BenchFailure as e:
            out(f"\n**Measurement failed:** {e}\n")
            log(f"{figure}: FAILED: {e}" + (f"\n{e.detail}" if e.detail else ""))
            self.failures.append(f"{figure}: {e}")
            if self._rig is not None:
                self._rig.kill_daemon()  # the next figure starts a fresh one
        log(f"{figure}: {time.monotonic() - started:.1f} s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="sizes 200 and 1000, 1000 VMs, 30 requests, noise 100, 2 rounds: "
                             "checks that it works in about a minute")
    parser.add_argument("--only", choices=FIGURES, action="append",
                        help="run only this figure (may be repeated)")
    parser.add_argument("--vms", type=int, help="VMs in the directory of figures 1, 3, 4 "
                        f"(default {FULL['vms']})")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="N",
                        help=f"VMs for figure 2 (default {FULL['sizes']})")
    parser.add_argument("--requests", type=int, help=f"figure 1 (default {FULL['requests']})")
    parser.add_argument("--noise", type=int, help=f"requests per round of figure 4 (default "
                        f"{FULL['noise']})")
    parser.add_argument("--rounds", type=int, help=f"figure 4 (default {FULL['rounds']})")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the scratch directory goes")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.only = [f for f in FIGURES if f in (args.only or FIGURES)]
    if args.vms < RESTART_CHANGES:
        parser.error(f"--vms must be at least {RESTART_CHANGES} (figure 3 changes a leaf of "
                     f"{RESTART_CHANGES} VMs)")
    if min(args.requests, args.noise, args.rounds) < 1 or min(args.sizes) < 1:
        parser.error("--requests, --noise, --rounds and --sizes must be positive")
    if os.geteuid() != 0:
        parser.error("needs root: the daemon's libvirtd is a private one in its own mount "
                     "namespace")
    return args


def main() -> int:
    args = parse_args()
    # The observer's thread must get the GIL within about a millisecond to stamp arrivals.
    sys.setswitchinterval(0.0005)

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, terminate)
    work = Path(tempfile.mkdtemp(prefix="pbbench-dir-", dir=args.dir))
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            bench = Bench(args, work, stack)
            bench.header()
            for figure in args.only:
                bench.run(figure)
            log("cleaning up")
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'})")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    if bench.failures:
        for failure in bench.failures:
            log(f"measurement failed: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
