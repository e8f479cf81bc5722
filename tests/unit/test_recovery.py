"""Finding the leaves a stopped daemon left locked and unanswered."""

from provbackup.directory.mirror import Mirror
from provbackup.workflow.recovery import RECOVERY_STEPS, abandon_snapshot, in_flight
from provbackup.workflow.steps import STEPS

S = "ou=virtualization,dc=x"


def leaf(mirror, uuid, vm, mode, state="0", ou="d1"):
    mirror.upsert(uuid, f"ou={ou},ou=backup,sstVirtualMachine={vm},ou=virtual machines,{S}",
                  {"sstProvisioningMode": [mode], "sstProvisioningState": [state]})


def test_only_this_nodes_locked_unanswered_leaves_are_in_flight(tmp_path):
    """Progress word + state 0 on this node's VM: in flight; anything else: not."""
    mirror = Mirror(tmp_path / "cookie")
    for vm, node in (("a", "node-01"), ("b", "node-02")):
        mirror.upsert(f"vm-{vm}", f"sstVirtualMachine={vm},ou=virtual machines,{S}",
                      {"sstNode": [node]})
    leaf(mirror, "1", "a", "merging")                      # in flight
    leaf(mirror, "2", "a", "snapshotting", ou="d2")        # in flight
    leaf(mirror, "3", "a", "merge", ou="d3")               # a request, not a lock
    leaf(mirror, "4", "a", "merged", ou="d4")              # answered
    leaf(mirror, "5", "a", "retaining", state="20261122T000000Z", ou="d5")  # failed, answered
    leaf(mirror, "6", "b", "merging")                      # another node's
    found = sorted((r.leaf.backup_date, r.verb.request) for r in in_flight(mirror, "node-01"))
    assert found == [("d1", "merge"), ("d2", "snapshot")]
    mirror.close()


def test_recovery_rolls_back_snapshots_and_reruns_the_rest():
    """Only snapshot differs when recovering; every other verb runs its normal step again."""
    assert RECOVERY_STEPS["snapshot"] is abandon_snapshot
    assert {k: v for k, v in RECOVERY_STEPS.items() if k != "snapshot"} == \
        {k: v for k, v in STEPS.items() if k != "snapshot"}
