"""Connecting to the real slapd: TLS verified, errors translated, password never logged."""

import logging
import socket

import pytest
from ldap3.utils.log import EXTENDED, set_library_log_detail_level

from provbackup.config import Secret
from provbackup.directory.connection import (DirectoryAuthError, DirectoryTLSError,
                                             DirectoryUnavailable, connect)
from tests.rig.ldap_fixtures import PROJECT_SCHEMA_FILES, SUFFIX, rig_ldap_settings
from tests.rig.slapd import Slapd, make_test_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_slapd(tmp_path_factory):
    """A slapd with a test CA, serving StartTLS on ldap:// and TLS on ldaps://."""
    workdir = tmp_path_factory.mktemp("tls-slapd")
    pki = make_test_pki(workdir / "pki", hostname="ldap.test")
    server = Slapd(workdir / "server", PROJECT_SCHEMA_FILES, SUFFIX,
                   tls=(pki.cert, pki.key, pki.ca))
    try:
        yield server, pki
    finally:
        server.stop()


def whoami(conn) -> str:
    """The identity the connection is bound as."""
    return conn.extend.standard.who_am_i()


def test_plain_connection_binds(slapd, tmp_path):
    """TLS = none binds to a loopback slapd as the configured DN."""
    conn = connect(rig_ldap_settings(slapd, tmp_path / "cookie"))
    assert whoami(conn) == f"dn:{slapd.root_dn}"
    conn.unbind()


def test_starttls_with_the_test_ca_verifies(tls_slapd, tmp_path):
    """StartTLS with the right CA file succeeds and the session is encrypted."""
    server, pki = tls_slapd
    conn = connect(rig_ldap_settings(server, tmp_path / "c", tls="starttls", tls_ca_file=pki.ca))
    assert conn.tls_started
    assert whoami(conn) == f"dn:{server.root_dn}"
    conn.unbind()


def test_ldaps_with_the_test_ca_verifies(tls_slapd, tmp_path):
    """TLS = ldaps connects to the ldaps:// port with certificate verification."""
    server, pki = tls_slapd
    conn = connect(rig_ldap_settings(server, tmp_path / "c", tls="ldaps", port=server.tls_port,
                                     tls_ca_file=pki.ca))
    assert conn.server.ssl
    assert whoami(conn) == f"dn:{server.root_dn}"
    conn.unbind()


@pytest.mark.parametrize("tls", ["starttls", "ldaps"])
def test_unknown_ca_is_refused(tls_slapd, tmp_path, tls):
    """A server certificate from a CA we do not trust fails with a TLS error."""
    server, _pki = tls_slapd
    other = make_test_pki(tmp_path / "other-ca")
    port = server.tls_port if tls == "ldaps" else server.port
    with pytest.raises(DirectoryTLSError, match="TLS"):
        connect(rig_ldap_settings(server, tmp_path / "c", tls=tls, port=port,
                                  tls_ca_file=other.ca))


def test_wrong_host_name_is_refused(tls_slapd, tmp_path):
    """A certificate for another name fails verification even with the right CA."""
    server, pki = tls_slapd
    with pytest.raises(DirectoryTLSError):
        connect(rig_ldap_settings(server, tmp_path / "c", server="localhost", tls="ldaps",
                                  port=server.tls_port, tls_ca_file=pki.ca))


def test_verification_can_be_switched_off(tls_slapd, tmp_path):
    """TLS_VERIFY = 0 accepts an untrusted certificate (and is documented as unsafe)."""
    server, _pki = tls_slapd
    other = make_test_pki(tmp_path / "other-ca")
    conn = connect(rig_ldap_settings(server, tmp_path / "c", tls="starttls", tls_verify=False,
                                     tls_ca_file=other.ca))
    assert conn.tls_started
    conn.unbind()


def test_starttls_to_a_server_without_tls_says_what_to_do(slapd, tmp_path):
    """StartTLS refused by the server is a TLS error that names the TLS key."""
    with pytest.raises(DirectoryTLSError, match=r"TLS = none"):
        connect(rig_ldap_settings(slapd, tmp_path / "c", tls="starttls"))


def test_wrong_password_is_an_auth_error(slapd, tmp_path):
    """A refused bind is reported as such, without the password."""
    with pytest.raises(DirectoryAuthError) as caught:
        connect(rig_ldap_settings(slapd, tmp_path / "c", password=Secret("wrong-pw-123")))
    assert "wrong-pw-123" not in str(caught.value)


def test_nothing_listening_is_unavailable(slapd, tmp_path):
    """A closed port is DirectoryUnavailable (retry later), not a crash."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DirectoryUnavailable, match=f"127.0.0.1:{port}"):
        connect(rig_ldap_settings(slapd, tmp_path / "c", port=port, timeout=2))


def test_password_never_reaches_the_logs(slapd, tmp_path, caplog):
    """Even with ldap3's most detailed logging, the bind password is not logged."""
    set_library_log_detail_level(EXTENDED)
    try:
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("ldap3").setLevel(logging.DEBUG)
            conn = connect(rig_ldap_settings(slapd, tmp_path / "c"))
            conn.unbind()
            with pytest.raises(DirectoryAuthError):
                connect(rig_ldap_settings(slapd, tmp_path / "c", password=Secret("Not-The-Pw-42")))
    finally:
        set_library_log_detail_level(0)
        logging.getLogger("ldap3").setLevel(logging.NOTSET)
    text = caplog.text
    assert text, "expected some log output at DEBUG"
    assert slapd.root_password not in text
    assert "Not-The-Pw-42" not in text
