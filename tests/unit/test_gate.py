"""The gate of CONTRACT.md section 2: which leaves this node acts on, and how."""

import datetime

import pytest

from provbackup.directory.dn import normalize_dn
from provbackup.directory.entry import Entry
from provbackup.workflow import gate
from provbackup.workflow.verbs import VERBS

S = "ou=virtualization,ou=services,dc=stoney-cloud,dc=org"
VM_DN = f"sstVirtualMachine=vm-1,ou=virtual machines,{S}"
LEAF_DN = f"ou=20261122T030000Z,ou=backup,{VM_DN}"
TODAY = datetime.date(2026, 11, 22)


def leaf(mode="snapshot", state="0", date="0", dn=LEAF_DN):
    """A backup leaf entry with the given request attributes."""
    return Entry.from_dict(dn, {"objectClass": ["top", "organizationalUnit", "sstProvisioning"],
                                "sstProvisioningMode": mode, "sstProvisioningState": state,
                                "sstProvisioningExecutionDate": date})


def vm(node="node-01"):
    """The VM entry of the leaf, on `node`."""
    return Entry.from_dict(VM_DN, {"sstVirtualMachine": "vm-1", "sstNode": node})


@pytest.mark.parametrize("request_verb", sorted(VERBS))
def test_every_verb_runs_when_due_on_this_node(request_verb):
    """Each request verb with state 0 and date 0 on this node's VM is run."""
    decision = gate.decide(leaf(request_verb), vm(), "node-01", TODAY)
    assert isinstance(decision, gate.Run)
    assert decision.verb.request == request_verb
    assert decision.leaf.vm_name == "vm-1"
    assert decision.leaf.backup_date == "20261122T030000Z"


@pytest.mark.parametrize("entry, vm_entry, why", [
    (leaf(), vm("node-02"), "runs on 'node-02'"),
    (leaf(), None, "is unknown"),
    (leaf(state="20261122T030512Z"), vm(), "no request pending"),
    (leaf(state=""), vm(), "no request pending"),
    (leaf(state="00"), vm(), "no request pending"),
    (leaf(mode="finished"), vm(), "is not a request"),
    (leaf(mode="initialized"), vm(), "is not a request"),
    (leaf(mode="snapshotting"), vm(), "is not a request"),
    (leaf(mode="retained"), vm(), "is not a request"),
    (leaf(dn=f"ou=backup,{VM_DN}"), vm(), "not a backup leaf"),
    (leaf(dn=f"ou=x,ou=devices,{VM_DN}"), vm(), "not a backup leaf"),
    (leaf(dn=f"ou=x,ou=backup,ou=configuration,{S}"), vm(), "not a backup leaf"),
])
def test_leaves_that_are_not_ours_or_not_pending_are_ignored(entry, vm_entry, why):
    """Other nodes' VMs, consumed requests and non-request words produce no action."""
    decision = gate.decide(entry, vm_entry, "node-01", TODAY)
    assert isinstance(decision, gate.Ignore)
    assert why in decision.reason


@pytest.mark.parametrize("date", ["20261122", "20261121", "20200101"])
def test_today_or_a_past_date_runs(date):
    """An execution date that has come runs now (the original ran only on the exact day)."""
    assert isinstance(gate.decide(leaf(date=date), vm(), "node-01", TODAY), gate.Run)


def test_future_date_is_deferred_until_that_day():
    """A future date is deferred, with the day it becomes due."""
    decision = gate.decide(leaf(date="20261125"), vm(), "node-01", TODAY)
    assert decision == gate.Defer(gate.locate(LEAF_DN), datetime.date(2026, 11, 25))
    later = gate.decide(leaf(date="20261125"), vm(), "node-01", datetime.date(2026, 11, 25))
    assert isinstance(later, gate.Run)


@pytest.mark.parametrize("mode", ["backup", "Snapshot", "snapshot ", "bogus"])
def test_unknown_verb_is_rejected_with_18(mode):
    """An unknown request on this node's VM is answered with WRONG_STATE_INFORMATION."""
    decision = gate.decide(leaf(mode=mode), vm(), "node-01", TODAY)
    assert isinstance(decision, gate.Reject)
    assert decision.error.code == 18
    assert repr(mode) in str(decision.error)


@pytest.mark.parametrize("date", ["2026-11-22", "20261322", "tomorrow", "2026112"])
def test_malformed_execution_date_is_rejected_with_18(date):
    """An execution date that is neither 0 nor YYYYMMDD gets 18, not a crash."""
    decision = gate.decide(leaf(date=date), vm(), "node-01", TODAY)
    assert isinstance(decision, gate.Reject) and decision.error.code == 18


def test_unknown_verb_on_another_node_is_ignored():
    """Another node's unknown verb is not this node's to answer."""
    assert isinstance(gate.decide(leaf(mode="bogus"), vm("node-02"), "node-01", TODAY), gate.Ignore)


def test_locate_reads_vm_and_date_from_an_escaped_dn():
    """A VM name with special characters is unescaped in the located leaf."""
    located = gate.locate(r"ou=20261122T030000Z,ou=backup,sstVirtualMachine=vm\,odd,dc=x")
    assert located.vm_name == "vm,odd"
    assert normalize_dn(located.vm_dn) == normalize_dn(r"sstVirtualMachine=vm\,odd,dc=x")
