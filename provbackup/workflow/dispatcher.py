"""Which locked request runs when: VMs in parallel up to a limit, one VM's steps in order.

The intake hands every request it locked to `submit()`, which never blocks: locking
and queueing for one VM must not wait for a long merge of another (issue 6). A fixed
pool of MAX_CONCURRENT_STEPS workers takes requests VM by VM. Each VM has its own
FIFO, and a VM whose step runs is not offered to another worker, so a VM's merge and
retain can never overlap even when the broker writes the second request early. VMs
take turns in the order they became ready, so one VM with many requests does not
starve the others.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Callable, Protocol

log = logging.getLogger(__name__)


class _Leaf(Protocol):
    vm_name: str
    backup_date: str


class Queued(Protocol):
    """What the dispatcher needs of a request (intake.Request has it)."""

    leaf: _Leaf


@dataclasses.dataclass(frozen=True)
class Load:
    """How busy the dispatcher is, for STATUS= and the log."""

    running: tuple  # the requests whose step runs now
    queued: tuple  # locked requests waiting for their VM or for a worker


class Dispatcher:
    """Runs submitted requests with `run(request)` on a pool of worker threads."""

    def __init__(self, run: Callable[[Queued], object], limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self._run = run
        self.limit = limit
        self._cond = threading.Condition()
        self._waiting: dict[str, collections.deque] = {}  # VM -> requests not started
        self._ready: collections.deque[str] = collections.deque()  # VMs a worker may take
        self._running: dict[str, Queued] = {}  # VM -> its request being run
        self._accepting = True
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        """Start the workers."""
        for n in range(1, self.limit + 1):
            # Daemon threads: a step still running when the stop timeout is over must
            # not keep the process alive (its journal tells the next start about it).
            worker = threading.Thread(target=self._work, name=f"step-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def submit(self, request: Queued) -> bool:
        """Queue a locked request; False (and it stays locked) once closed."""
        vm = request.leaf.vm_name
        with self._cond:
            if not self._accepting:
                log.warning("%s %s: stopping, so not started; it stays locked for recovery",
                            vm, request.leaf.backup_date)
                return False
            queue = self._waiting.setdefault(vm, collections.deque())
            queue.append(request)
            # A VM is in _ready only while it has waiting requests and no running
            # step; a busy VM is put back there when its step ends.
            if vm not in self._running and len(queue) == 1:
                self._ready.append(vm)
                self._cond.notify()
            elif vm in self._running:
                log.info("%s %s: queued behind the running step of this VM",
                         vm, request.leaf.backup_date)
        return True

    def load(self) -> Load:
        """The running and the queued requests, now."""
        with self._cond:
            return Load(tuple(self._running.values()),
                        tuple(r for queue in self._waiting.values() for r in queue))

    def close(self) -> tuple:
        """Accept and start nothing more; returns the requests that were never started."""
        with self._cond:
            self._accepting = False
            left = tuple(r for queue in self._waiting.values() for r in queue)
            self._waiting.clear()
            self._ready.clear()
            self._cond.notify_all()
        return left

    def join(self, timeout: float | None = None) -> bool:
        """Wait (after close) until running steps ended; False if some still run."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            worker.join(remaining)
        return not any(w.is_alive() for w in self._workers)

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._accepting and not self._ready:
                    self._cond.wait()
                if not self._accepting:
                    return
                vm = self._ready.popleft()
                request = self._waiting[vm].popleft()
                if not self._waiting[vm]:
                    del self._waiting[vm]
                self._running[vm] = request
            try:
                self._run(request)
            except Exception:  # noqa: BLE001 - e.g. the answer's LDAP write failed
                log.exception("%s %s: failed outside the step; its answer may be missing",
                              vm, request.leaf.backup_date)
            finally:
                with self._cond:
                    del self._running[vm]
                    if vm in self._waiting:
                        self._ready.append(vm)
                    self._cond.notify_all()
