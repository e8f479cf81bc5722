"""StepRunner: every outcome becomes exactly one answer with the right return value."""

import pytest

from provbackup import errors
from provbackup.directory.entry import Entry
from provbackup.workflow.gate import Leaf
from provbackup.workflow.intake import Request
from provbackup.workflow.job import StepRunner
from provbackup.workflow.journal import JournalStore
from provbackup.workflow.verbs import VERBS

S = "ou=virtualization,dc=x"
VM_DN = f"sstVirtualMachine=vm-1,ou=virtual machines,{S}"
LEAF = Leaf(dn=f"ou=d,ou=backup,{VM_DN}", vm_dn=VM_DN, vm_name="vm-1", backup_date="d")


class Entries:
    """A two-entry directory: the VM with one disk and the cloud-wide configuration."""

    def __init__(self):
        self.items = {e.key: e for e in [
            Entry.from_dict(VM_DN, {"sstNode": "node-01", "sstVirtualMachine": "vm-1"}),
            Entry.from_dict(f"sstDisk=vda,ou=devices,{VM_DN}", {
                "objectClass": "sstVirtualizationVirtualMachineDisk", "sstDevice": "disk",
                "sstDisk": "vda", "sstType": "file", "sstSourceFile": "/var/virtualization/a.qcow2"}),
            Entry.from_dict(f"ou=backup,ou=configuration,{S}", {
                "objectClass": ["top", "sstVirtualizationBackupObjectClass"]})]}

    def get(self, dn):
        from provbackup.directory.dn import normalize_dn
        return self.items.get(normalize_dn(dn))

    def subtree(self, dn):
        from provbackup.directory.dn import normalize_dn
        base = normalize_dn(dn)
        return sorted((e for k, e in self.items.items() if k == base or k.endswith("," + base)),
                      key=lambda e: len(e.key))

    def named(self, rdn, base):
        from provbackup.directory.dn import normalize_dn
        return [e for e in self.subtree(base) if e.key.startswith(normalize_dn(rdn) + ",")]


class Answers:
    def __init__(self):
        self.calls = []

    def answer(self, dn, code, times, completion=None):
        self.calls.append((dn, code, dict(times), completion))


def run(step, verb="snapshot", tmp_path=None):
    answers = Answers()
    ticks = iter(range(100))
    runner = StepRunner({verb: step} if step else {}, Entries(), hypervisor=None,
                        journals=JournalStore(tmp_path), answerer=answers, service_subtree=S,
                        cloud_wide_dn=f"ou=backup,ou=configuration,{S}",
                        clock=lambda: float(next(ticks)))
    code = runner.run(Request(LEAF, VERBS[verb], Entry.from_dict(LEAF.dn, {})))
    assert len(answers.calls) == 1
    return code, answers.calls[0]


def test_success_answers_with_completion_and_step_times(tmp_path):
    """A step that returns its times is answered 0 with the completion word."""
    code, (dn, value, times, completion) = run(lambda ctx: {"snapshot": 1.5, "downtime": 0.1},
                                               tmp_path=tmp_path)
    assert (code, value, completion, dn) == (0, 0, "snapshotted", LEAF.dn)
    assert times == {"snapshot": 1.5, "downtime": 0.1}


def test_step_error_is_answered_with_its_number(tmp_path):
    """A StepError becomes its return value; the mode stays (no completion word)."""
    def fail(ctx):
        raise errors.NotEnoughDiskSpaceError("need 5 GiB, 1 GiB free")
    code, (_, value, times, completion) = run(fail, tmp_path=tmp_path)
    assert (code, value, completion) == (47, 47, None)
    assert set(times) == {"snapshot"}


def test_unexpected_exception_is_1_and_logged(tmp_path, caplog):
    """A bug in a step is answered with 1 and logged with its traceback."""
    def crash(ctx):
        raise KeyError("boom")
    code, (_, value, _, completion) = run(crash, tmp_path=tmp_path)
    assert (code, value, completion) == (1, 1, None)
    assert "Traceback" in caplog.text and "boom" in caplog.text


def test_step_not_in_this_version_is_18(tmp_path):
    """A verb without a step here is answered 18, not left hanging."""
    code, (_, value, _, _) = run(None, verb="restore", tmp_path=tmp_path)
    assert code == 18 and value == 18


@pytest.mark.parametrize("verb", ["snapshot", "merge"])
def test_context_carries_policy_and_ldif_for_snapshot_only(tmp_path, verb):
    """The step sees the resolved policy; only snapshot gets the LDIF export."""
    seen = {}

    def step(ctx):
        seen.update(policy=ctx.policy, ldif=ctx.ldif, vm=ctx.vm, date=ctx.date)
        return {}
    run(step, verb=verb, tmp_path=tmp_path)
    assert seen["policy"].level == "cloud" and (seen["vm"], seen["date"]) == ("vm-1", "d")
    assert seen["ldif"].startswith(f"dn: {VM_DN}") == (verb == "snapshot")
