"""The slapd test rig: the sample directory, syncprov, restarts, secrets."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
from pathlib import Path

import ldap3
import pytest
from ldap3.core.exceptions import LDAPNoSuchObjectResult
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import namedtype, namedval, univ

from tests.rig import slapd as slapd_module
from tests.rig.ldap_fixtures import PROJECT_SCHEMA_FILES, SUFFIX
from tests.rig.slapd import Slapd, SlapdError, make_test_pki

WEB_01 = "53d39b08-4323-4f98-b8b9-68f94e7fd712"
DB_01 = "0a261bb2-9da0-45ad-902c-25cf4cc1ccef"
POOL = "dad483bd-f35b-453f-ab67-ea637526a216"

SYNC_REQUEST_OID = "1.3.6.1.4.1.4203.1.9.1.1"
SYNC_STATE_OID = "1.3.6.1.4.1.4203.1.9.1.2"
SYNC_DONE_OID = "1.3.6.1.4.1.4203.1.9.1.3"
CSN_RE = re.compile(r"^\d{14}\.\d{6}Z#[0-9a-f]{6}#[0-9a-f]{3}#[0-9a-f]{6}$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                     r"[0-9a-f]{12}$")


# -- minimal RFC 4533 values, enough to prove syncprov answers ---------------

class _SyncRequestValue(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("mode", univ.Enumerated(
            namedValues=namedval.NamedValues(
                ("refreshOnly", 1), ("refreshAndPersist", 3)))),
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("reloadHint", univ.Boolean(False)))


class _SyncStateValue(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("state", univ.Enumerated(
            namedValues=namedval.NamedValues(
                ("present", 0), ("add", 1), ("modify", 2), ("delete", 3)))),
        namedtype.NamedType("entryUUID", univ.OctetString()),
        namedtype.OptionalNamedType("cookie", univ.OctetString()))


class _SyncDoneValue(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("refreshDeletes", univ.Boolean(False)))


def _refresh_only(conn: ldap3.Connection, base: str,
                  cookie: bytes | None = None):
    """Run a refreshOnly sync search; return (entries, Sync Done value)."""
    request = _SyncRequestValue()
    request["mode"] = "refreshOnly"
    if cookie is not None:
        request["cookie"] = cookie
    conn.search(base, "(objectClass=*)", ldap3.SUBTREE,
                attributes=["entryUUID"],
                controls=[(SYNC_REQUEST_OID, True, encoder.encode(request))],
                # slapd answers protocolError to ldap3's default DEREF_ALWAYS.
                dereference_aliases=ldap3.DEREF_NEVER)
    done_raw = conn.result["controls"][SYNC_DONE_OID]["value"]
    done, _ = decoder.decode(done_raw, asn1Spec=_SyncDoneValue())
    entries = [e for e in conn.response if e["type"] == "searchResEntry"]
    return entries, done


def _sync_state(entry: dict) -> _SyncStateValue:
    """Decode the Sync State control of one search result entry."""
    raw = entry["controls"][SYNC_STATE_OID]["value"]
    state, _ = decoder.decode(raw, asn1Spec=_SyncStateValue())
    return state


def _dns(conn: ldap3.Connection, base: str, search_filter: str,
         scope=ldap3.SUBTREE) -> set[str]:
    """Return the DNs (lower case) a search finds."""
    conn.search(base, search_filter, scope, attributes=[])
    return {entry.entry_dn.lower() for entry in conn.entries}


# -- the sample directory -----------------------------------------------------

@pytest.mark.integration
def test_sample_has_two_vms_on_two_nodes(directory):
    """The sample directory holds two VMs in one pool, one on each node."""
    conn = directory.conn
    conn.search(f"ou=virtual machines,{directory.service_dn}",
                "(objectClass=sstVirtualizationVirtualMachine)",
                ldap3.LEVEL, attributes=["sstVirtualMachine", "sstNode",
                                         "sstVirtualMachinePool"])
    vms = {str(e.sstVirtualMachine): e for e in conn.entries}
    assert set(vms) == {WEB_01, DB_01}
    assert str(vms[WEB_01].sstNode) == "node-01"
    assert str(vms[DB_01].sstNode) == "node-02"
    assert {str(e.sstVirtualMachinePool) for e in vms.values()} == {POOL}
    conn.search(f"ou=virtual machine pools,{directory.service_dn}",
                "(objectClass=sstVirtualMachines)", ldap3.LEVEL,
                attributes=["sstVirtualMachinePool"])
    assert [str(e.sstVirtualMachinePool) for e in conn.entries] == [POOL]


@pytest.mark.integration
def test_each_vm_has_one_file_disk_and_web_01_a_cdrom(directory):
    """Each VM has one file disk under the contract's filter; the CD-ROM is not
    one."""
    conn = directory.conn
    disk_filter = ("(&(objectClass=sstVirtualizationVirtualMachineDisk)"
                   "(sstDevice=disk))")
    for vm in (WEB_01, DB_01):
        vm_dn = (f"sstVirtualMachine={vm},ou=virtual machines,"
                 f"{directory.service_dn}")
        conn.search(vm_dn, disk_filter, ldap3.SUBTREE,
                    attributes=["sstDisk", "sstSourceFile", "sstType"])
        assert len(conn.entries) == 1
        disk = conn.entries[0]
        assert disk.entry_dn.lower() == (
            f"sstdisk=vda,ou=devices,{vm_dn}".lower())
        assert str(disk.sstType) == "file"
        assert re.fullmatch(
            r"/var/virtualization/vm-persistent/[0-9a-f-]{36}/"
            r"[0-9a-f-]{36}\.qcow2", str(disk.sstSourceFile))
    cdroms = _dns(conn, directory.service_dn, "(sstDevice=cdrom)")
    assert len(cdroms) == 1 and cdroms.pop().startswith("sstdisk=hdc,")


@pytest.mark.integration
def test_each_vm_has_exactly_one_dhcp_host_entry(directory):
    """A subtree search for cn=<vm> under cn=config-01 finds one dhcpHost per
    VM."""
    conn = directory.conn
    dhcp_base = f"cn=config-01,ou=dhcp,ou=networks,{directory.service_dn}"
    for vm, address in ((WEB_01, "192.168.140.11"), (DB_01, "192.168.140.12")):
        conn.search(dhcp_base, f"(&(objectClass=dhcpHost)(cn={vm}))",
                    ldap3.SUBTREE, attributes=["dhcpHWAddress",
                                               "dhcpStatements"])
        assert len(conn.entries) == 1
        host = conn.entries[0]
        assert host.entry_dn.lower().startswith(
            f"cn={vm},ou=virtual machines,cn=192.168.140.0,cn=config-01,")
        assert str(host.dhcpHWAddress).startswith("ethernet 52:54:00:")
        assert f"fixed-address {address}" in host.dhcpStatements.values


@pytest.mark.integration
def test_three_backup_configuration_levels(directory):
    """Cloud-wide, pool and web-01's own ou=backup carry the backup class with
    distinct iterations."""
    conn = directory.conn
    conn.search(directory.service_dn,
                "(objectClass=sstVirtualizationBackupObjectClass)",
                ldap3.SUBTREE, attributes=["sstBackupNumberOfIterations",
                                           "objectClass"])
    found = {e.entry_dn.lower(): e for e in conn.entries}
    service = directory.service_dn.lower()
    expected = {
        f"ou=backup,ou=configuration,{service}": 1,
        f"ou=backup,sstvirtualmachinepool={POOL},ou=virtual machine pools,"
        f"{service}": 3,
        f"ou=backup,sstvirtualmachine={WEB_01},ou=virtual machines,"
        f"{service}": 5,
    }
    assert {dn: int(str(e.sstBackupNumberOfIterations))
            for dn, e in found.items()} == expected
    with_schedule = {dn for dn, e in found.items()
                     if "sstCronObjectClass" in e.objectClass.values}
    assert with_schedule == set(list(expected)[:2])
    # db-01's container is a plain organizationalUnit.
    conn.search(f"ou=backup,sstVirtualMachine={DB_01},ou=virtual machines,"
                f"{directory.service_dn}", "(objectClass=*)", ldap3.BASE,
                attributes=["objectClass"])
    assert set(conn.entries[0].objectClass.values) == {
        "top", "organizationalUnit"}


@pytest.mark.integration
def test_each_vm_has_one_finished_backup_leaf(directory):
    """Each VM's ou=backup holds one finished leaf with the contract's
    attributes."""
    conn = directory.conn
    conn.search(directory.service_dn, "(objectClass=sstProvisioning)",
                ldap3.SUBTREE, attributes=[ldap3.ALL_ATTRIBUTES])
    assert len(conn.entries) == 2
    for leaf in conn.entries:
        assert leaf.entry_dn.startswith("ou=20261101T030000Z,ou=backup,"
                                        "sstVirtualMachine=")
        assert str(leaf.sstProvisioningMode) == "finished"
        assert re.fullmatch(r"\d{8}T\d{6}Z", str(leaf.sstProvisioningState))
        assert int(str(leaf.sstProvisioningExecutionDate)) == 0
        assert int(str(leaf.sstProvisioningReturnValue)) == 0
        steps = {v.split(":")[0] for v in
                 leaf.sstProvisioningExecutionTime.values}
        assert {"snapshot", "merge", "retain"} <= steps


@pytest.mark.integration
def test_wipe_removes_a_subtree_and_can_keep_its_base(directory):
    """wipe() deletes children before parents, keeps the base on request, and
    ignores a missing base."""
    server, conn = directory.slapd, directory.conn
    vms = f"ou=virtual machines,{directory.service_dn}"
    below = len(_dns(conn, vms, "(objectClass=*)")) - 1
    assert server.wipe(vms, keep_base=True) == below > 0
    assert _dns(conn, vms, "(objectClass=*)") == {vms.lower()}
    assert server.wipe(directory.service_dn) > 0
    with pytest.raises(LDAPNoSuchObjectResult):
        conn.search(directory.service_dn, "(objectClass=*)", ldap3.BASE)
    assert server.wipe(directory.service_dn) == 0
    assert _dns(conn, SUFFIX, "(objectClass=*)", ldap3.BASE) == {
        SUFFIX.lower()}


# -- syncprov -----------------------------------------------------------------

@pytest.mark.integration
def test_sync_refresh_only_returns_entries_and_a_cookie(directory):
    """A refreshOnly Sync Request is accepted: every entry comes with a Sync
    State and the search ends with a Sync Done cookie."""
    entries, done = _refresh_only(directory.conn, directory.service_dn)
    expected = _dns(directory.conn, directory.service_dn, "(objectClass=*)")
    assert {e["dn"].lower() for e in entries} == expected
    for entry in entries:
        state = _sync_state(entry)
        assert str(state["state"]) == "add"
        assert len(bytes(state["entryUUID"])) == 16
    cookie = bytes(done["cookie"])
    assert re.fullmatch(rb"rid=\d{3},csn=\d{14}\.\d{6}Z#.+", cookie)


@pytest.mark.integration
def test_sync_cookie_brings_only_what_changed(directory):
    """Refreshing with the cookie returns nothing when nothing changed, then
    exactly the modified entry."""
    conn = directory.conn
    _, done = _refresh_only(conn, directory.service_dn)
    cookie = bytes(done["cookie"])
    unchanged, _ = _refresh_only(conn, directory.service_dn, cookie)
    assert unchanged == []
    leaf = (f"ou=20261101T030000Z,ou=backup,sstVirtualMachine={DB_01},"
            f"ou=virtual machines,{directory.service_dn}")
    conn.modify(leaf, {"sstProvisioningMode": [(ldap3.MODIFY_REPLACE,
                                                ["snapshot"])],
                       "sstProvisioningState": [(ldap3.MODIFY_REPLACE,
                                                 ["0"])]})
    changed, done = _refresh_only(conn, directory.service_dn, cookie)
    assert [e["dn"].lower() for e in changed] == [leaf.lower()]
    assert bytes(done["cookie"]) != cookie


@pytest.mark.integration
def test_entry_uuid_and_entry_csn_are_readable(directory):
    """Every sample entry has an entryUUID and an entryCSN, and the suffix a
    contextCSN."""
    conn = directory.conn
    conn.search(directory.service_dn, "(objectClass=*)", ldap3.SUBTREE,
                attributes=["entryUUID", "entryCSN"])
    assert len(conn.entries) > 20
    for entry in conn.entries:
        assert UUID_RE.match(str(entry.entryUUID))
        assert CSN_RE.match(str(entry.entryCSN))
    conn.search(SUFFIX, "(objectClass=*)", ldap3.BASE,
                attributes=["contextCSN"])
    assert CSN_RE.match(str(conn.entries[0].contextCSN))


# -- process handling ---------------------------------------------------------

@pytest.mark.integration
def test_restart_keeps_data_port_and_socket(directory):
    """restart() brings slapd back as a new process on the same port and socket
    with the data kept."""
    server = directory.slapd
    uris = (server.ldap_uri, server.ldapi_uri)
    old_pid = server.pid
    leaf = (f"ou=20261101T030000Z,ou=backup,sstVirtualMachine={WEB_01},"
            f"ou=virtual machines,{directory.service_dn}")
    directory.conn.modify(leaf, {"sstProvisioningMode": [
        (ldap3.MODIFY_REPLACE, ["snapshot"])]})
    server.restart()
    assert server.running and server.pid != old_pid
    assert (server.ldap_uri, server.ldapi_uri) == uris
    conn = server.connection()
    conn.search(leaf, "(objectClass=*)", ldap3.BASE,
                attributes=["sstProvisioningMode"])
    assert str(conn.entries[0].sstProvisioningMode) == "snapshot"
    conn.unbind()
    # The ldapi listener is back too: add_ldif goes through it.
    server.add_ldif(f"dn: ou=after restart,{directory.service_dn}\n"
                    "objectClass: organizationalUnit\nou: after restart\n")


@pytest.mark.integration
def test_stop_ends_the_process(tmp_path):
    """stop() ends slapd by pid and closes its port; stopping twice is
    harmless."""
    server = Slapd(tmp_path, PROJECT_SCHEMA_FILES, SUFFIX)
    pid, port = server.pid, server.port
    server.stop()
    server.stop()
    assert not server.running and server.pid is None
    with pytest.raises(ProcessLookupError):
        # Signal 0 only checks that the pid exists (it was reaped).
        os.kill(pid, 0)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.integration
def test_start_failure_reports_slapd_output(tmp_path):
    """A slapd that cannot start raises SlapdError carrying slapd's own
    messages."""
    server = Slapd(tmp_path, PROJECT_SCHEMA_FILES, SUFFIX)
    server.stop()
    with socket.socket() as squatter:
        # SO_REUSEADDR: the port may still be in TIME_WAIT from slapd.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        with pytest.raises(SlapdError, match=r"(?s)exited with .*bind"):
            server.start()
    assert not server.running


@pytest.mark.integration
def test_bad_schema_is_reported(tmp_path):
    """A schema file slapd cannot read makes Slapd() fail with slaptest's
    message."""
    bad = tmp_path / "bad.schema"
    bad.write_text("attributetype ( 1.2.3.4 NAME 'broken' SYNTAX nonsense )\n")
    with pytest.raises(SlapdError, match="slaptest"):
        Slapd(tmp_path / "work", [bad], SUFFIX)


# -- secrets ------------------------------------------------------------------

@pytest.mark.integration
def test_root_password_stays_out_of_argv_and_files(slapd, monkeypatch):
    """The root password appears in no slapd or tool argv, config file or log.
    """
    password = slapd.root_password
    cmdline = Path(f"/proc/{slapd.pid}/cmdline").read_bytes()
    assert password.encode() not in cmdline
    seen = []
    real_run = subprocess.run

    def spy(argv, *args, **kwargs):
        seen.append(list(argv))
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(slapd_module.subprocess, "run", spy)
    slapd.add_ldif(f"dn: ou=spy,{SUFFIX}\nobjectClass: organizationalUnit\n"
                   "ou: spy\n")
    slapd.wipe(f"ou=spy,{SUFFIX}")
    assert seen and all(password not in " ".join(argv) for argv in seen)
    assert any("-y" in argv for argv in seen)
    for path in [slapd.workdir / "slapd.conf", slapd.log_path,
                 *slapd.config_dir.rglob("*")]:
        if path.is_file():
            assert password not in path.read_text(errors="replace"), path


@pytest.mark.integration
def test_password_file_is_private_and_binds(slapd, tmp_path):
    """write_password_file() writes the bare password with mode 0600, and
    ldapwhoami -y binds with it."""
    path = slapd.write_password_file(tmp_path / "pw")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == slapd.root_password
    done = subprocess.run(
        [slapd_module._tool("ldapwhoami"), "-x", "-H", slapd.ldapi_uri,
         "-D", slapd.root_dn, "-y", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
        env={"LDAPNOINIT": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().lower() == f"dn:{slapd.root_dn}".lower()


# -- TLS ----------------------------------------------------------------------

@pytest.mark.integration
# ldap3 2.9 still calls ssl.match_hostname(); not ours to fix here.
@pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning")
def test_tls_listener_with_test_ca(tmp_path):
    """With tls=(cert, key, ca) slapd serves ldaps:// and StartTLS with a
    certificate the test CA verifies."""
    pki = make_test_pki(tmp_path / "pki")
    with Slapd(tmp_path / "work", PROJECT_SCHEMA_FILES, SUFFIX,
               tls=(pki.cert, pki.key, pki.ca)) as server:
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(pki.ca))
        for uri, start_tls in ((server.ldaps_uri, False),
                               (server.ldap_uri, True)):
            conn = ldap3.Connection(
                ldap3.Server(uri, tls=tls, connect_timeout=5),
                server.root_dn, server.root_password, raise_exceptions=True)
            conn.open()
            if start_tls:
                conn.start_tls()
            conn.bind()
            assert conn.extend.standard.who_am_i().lower() == (
                f"dn:{server.root_dn}".lower())
            conn.unbind()
        # A client that trusts another CA is refused.
        other = make_test_pki(tmp_path / "other")
        strict = ldap3.Tls(validate=ssl.CERT_REQUIRED,
                           ca_certs_file=str(other.ca))
        with pytest.raises(ldap3.core.exceptions.LDAPSocketOpenError):
            ldap3.Connection(ldap3.Server(server.ldaps_uri, tls=strict,
                                          connect_timeout=5),
                             auto_bind=True)
