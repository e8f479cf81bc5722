"""The dispatcher: VMs in parallel up to the limit, one VM's steps in order (issue 6)."""

import threading
import time
from types import SimpleNamespace

import pytest

from provbackup.workflow.dispatcher import Dispatcher

WAIT = 5.0  # generous: only reached when the behaviour is wrong


def request(vm, name=None):
    """A stand-in for intake.Request: the dispatcher only reads leaf.vm_name."""
    return SimpleNamespace(leaf=SimpleNamespace(vm_name=vm, backup_date="20261122T030000Z"),
                           name=name or vm)


class Steps:
    """A fake runner: each step blocks until released; records what overlapped."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started: dict[str, threading.Event] = {}
        self.release: dict[str, threading.Event] = {}
        self.running: list[str] = []
        self.order: list[str] = []
        self.max_running = 0
        self.overlap_same_vm = False
        self.fail = set()

    def gate(self, name):
        with self.lock:
            self.started.setdefault(name, threading.Event())
            return self.release.setdefault(name, threading.Event())

    def run(self, req):
        release = self.gate(req.name)
        with self.lock:
            if any(r.leaf.vm_name == req.leaf.vm_name for r in self.running):
                self.overlap_same_vm = True
            self.running.append(req)
            self.order.append(req.name)
            self.max_running = max(self.max_running, len(self.running))
            self.started[req.name].set()
        try:
            assert release.wait(WAIT), f"{req.name} was never released"
            if req.name in self.fail:
                raise RuntimeError(f"{req.name} failed")
        finally:
            with self.lock:
                self.running.remove(req)

    def wait_started(self, name, timeout=WAIT):
        self.gate(name)
        return self.started[name].wait(timeout)

    def finish(self, *names):
        for name in names:
            self.gate(name).set()


@pytest.fixture
def steps():
    return Steps()


@pytest.fixture
def dispatcher(steps):
    made = []

    def make(limit):
        d = Dispatcher(steps.run, limit)
        d.start()
        made.append(d)
        return d
    yield make
    for d in made:
        steps.finish(*list(steps.release))
        d.close()
        assert d.join(WAIT)


def test_steps_of_one_vm_never_overlap_and_keep_their_order(dispatcher, steps):
    """Three requests of one VM run one after the other, in the order submitted."""
    d = dispatcher(3)
    for name in ("snapshot", "merge", "retain"):
        d.submit(request("vm-a", name))
    for name in ("snapshot", "merge", "retain"):
        assert steps.wait_started(name)
        time.sleep(0.05)  # a wrong dispatcher would start the next one meanwhile
        assert [r.name for r in steps.running] == [name]
        steps.finish(name)
    assert steps.order == ["snapshot", "merge", "retain"]
    assert not steps.overlap_same_vm


def test_no_more_steps_run_than_the_limit(dispatcher, steps):
    """Five VMs with a limit of two: two run, three wait; all run in the end."""
    d = dispatcher(2)
    vms = [f"vm-{n}" for n in range(5)]
    for vm in vms:
        d.submit(request(vm))
    assert steps.wait_started("vm-0") and steps.wait_started("vm-1")
    time.sleep(0.1)
    load = d.load()
    assert len(load.running) == 2 and len(load.queued) == 3
    steps.finish(*vms)
    for vm in vms:
        assert steps.wait_started(vm)
    assert steps.max_running == 2
    assert sorted(steps.order) == vms


def test_a_slow_vm_does_not_delay_another_vm(dispatcher, steps):
    """While VM a's long step runs and its next request waits, VM b starts at once."""
    d = dispatcher(2)
    d.submit(request("vm-a", "a-merge"))
    assert steps.wait_started("a-merge")
    d.submit(request("vm-a", "a-retain"))  # earlier, but must wait for vm-a
    started = time.monotonic()
    d.submit(request("vm-b", "b-snapshot"))
    assert steps.wait_started("b-snapshot", timeout=1.0)
    assert time.monotonic() - started < 0.5
    assert not steps.wait_started("a-retain", timeout=0)
    steps.finish("a-merge")
    assert steps.wait_started("a-retain")
    assert not steps.overlap_same_vm


def test_submit_returns_at_once_when_every_worker_is_busy(dispatcher, steps):
    """Locking and queueing never wait for a worker: submit does not block."""
    d = dispatcher(1)
    d.submit(request("vm-a"))
    assert steps.wait_started("vm-a")
    started = time.monotonic()
    for n in range(50):
        assert d.submit(request(f"vm-{n}-other"))
    assert time.monotonic() - started < 0.2
    assert len(d.load().queued) == 50


def test_vms_take_turns(dispatcher, steps):
    """A VM with many requests does not starve one that queued after them: it goes next."""
    d = dispatcher(1)
    for name in ("a1", "a2", "a3"):
        d.submit(request("vm-a", name))
    assert steps.wait_started("a1")
    d.submit(request("vm-b", "b1"))
    steps.finish("a1", "a2", "a3", "b1")
    assert steps.wait_started("a3") and steps.wait_started("b1")
    assert steps.order == ["a1", "b1", "a2", "a3"]


def test_a_failing_request_does_not_stop_the_worker(dispatcher, steps, caplog):
    """An exception escaping run() is logged; the same worker runs the next request."""
    d = dispatcher(1)
    steps.fail.add("broken")
    d.submit(request("vm-a", "broken"))
    d.submit(request("vm-b", "fine"))
    steps.finish("broken", "fine")
    assert steps.wait_started("fine")
    assert "vm-a 20261122T030000Z: failed outside the step" in caplog.text


def test_close_leaves_queued_requests_and_lets_running_ones_finish(dispatcher, steps):
    """After close: the running step ends normally, queued ones are handed back, unstarted."""
    d = dispatcher(1)
    d.submit(request("vm-a", "running"))
    assert steps.wait_started("running")
    d.submit(request("vm-a", "behind"))
    d.submit(request("vm-b", "waiting"))
    left = d.close()
    assert sorted(r.name for r in left) == ["behind", "waiting"]
    assert not d.submit(request("vm-c", "late"))
    assert not d.join(0.2)  # still running
    steps.finish("running")
    assert d.join(WAIT)
    assert steps.order == ["running"]


def test_limit_must_be_positive():
    """A limit below one is a programming error."""
    with pytest.raises(ValueError):
        Dispatcher(lambda r: None, 0)
