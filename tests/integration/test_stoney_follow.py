"""The same daemon-side behaviour on a slapd with the REAL stoney schema (sst.schema)."""

import types

import ldap3
import pytest

from provbackup.directory.machine import read_machine
from provbackup.directory.resolve import resolve
from tests.integration.test_directory_follow import VM1, VM2, Stack, add_leaf, request
from tests.rig.ldap_fixtures import SAMPLE_LDIF, SERVICE_DN, SUFFIX

pytestmark = pytest.mark.integration


def follow(server, state_dir):
    """Load the sample into `server` and follow it as node-01."""
    server.start()
    server.wipe(SUFFIX, keep_base=True)
    server.add_ldif(SAMPLE_LDIF)
    view = types.SimpleNamespace(slapd=server, service_dn=SERVICE_DN, conn=server.connection())
    return view, Stack(view, state_dir).start()


def summary(node):
    """What node-01 makes of the sample: disks, DHCP, resolved policy for both VMs."""
    result = {}
    for vm in (VM1, VM2):
        machine = read_machine(node.mirror, vm, SERVICE_DN)
        policy = resolve(machine.subtree[0], node.mirror.get, SERVICE_DN,
                         node.settings.cloud_wide_dn)
        result[vm] = (machine.node, [(d.target, d.kind, d.source) for d in machine.disks],
                      [e.dn.lower() for e in machine.dhcp], policy.level,
                      {k: v for k, v in vars(policy).items() if k != "source_dn"})
    return result


def test_real_schema_gives_the_same_reading_and_lock(slapd, stoney_slapd, tmp_path):
    """Mirror, machines, resolution and the compare-and-set lock agree across both schemas."""
    own_view, own = follow(slapd, tmp_path / "own")
    real_view, real = follow(stoney_slapd, tmp_path / "real")
    try:
        assert summary(real) == summary(own)
        for view, node in ((own_view, own), (real_view, real)):
            dn = add_leaf(view, VM1)
            request(view, dn, "snapshot")
            assert node.queue.get(timeout=10).verb.request == "snapshot"
            view.conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["sstProvisioningMode"])
            assert view.conn.entries[0].sstProvisioningMode.value == "snapshotting"
    finally:
        for view, node in ((own_view, own), (real_view, real)):
            node.stop()
            view.conn.unbind()
