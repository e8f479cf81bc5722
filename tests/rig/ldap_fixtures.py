"""pytest fixtures for a private slapd with the sample stoney cloud directory.

Import them all into a conftest.py with
``from tests.rig.ldap_fixtures import *``.

- ``slapd``: one server per session with the project's schema subset
  (etc/ldap/provbackup*.schema), suffix dc=stoney-cloud,dc=org.
- ``directory``: per test, the sample directory (etc/ldap/sample.ldif) loaded
  fresh into ``slapd``, with an ldap3 connection bound as the root DN.
- ``stoney_ldap_dir``: the directory with the real stoney schema and seed
  LDIFs (../shared/stoney-ldap next to the checkout); skips when it is
  missing, but fails on CI (environment variable CI set, see tests/shared.py).
- ``stoney_slapd``: one server per session with the REAL sst.schema and
  dhcp.schema, same suffix, empty below the suffix entry.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import ldap3
import pytest
from ldap3.core.exceptions import LDAPException

from provbackup.config import LdapSettings, Secret
from tests.rig.slapd import Slapd
from tests.shared import shared_file

__all__ = ["slapd", "directory", "stoney_ldap_dir", "stoney_slapd"]

REPO_DIR = Path(__file__).resolve().parents[2]
LDAP_ETC_DIR = REPO_DIR / "etc" / "ldap"
PROJECT_SCHEMA_FILES = (
    LDAP_ETC_DIR / "provbackup.schema",
    LDAP_ETC_DIR / "provbackup-dhcp.schema",
)
SAMPLE_LDIF = LDAP_ETC_DIR / "sample.ldif"

SUFFIX = "dc=stoney-cloud,dc=org"
SERVICE_DN = f"ou=virtualization,ou=services,{SUFFIX}"


def rig_ldap_settings(rig: Slapd, cookie_file: Path, **overrides) -> LdapSettings:
    """provbackup's LDAP settings for a rig slapd (plain LDAP on loopback unless overridden)."""
    values = dict(
        server="127.0.0.1", port=rig.port, tls="none", tls_ca_file=None, tls_verify=True,
        bind_dn=rig.root_dn, password=Secret(rig.root_password), password_file=None,
        timeout=10, service_subtree=SERVICE_DN,
        cloud_wide_dn=f"ou=backup,ou=configuration,{SERVICE_DN}", cookie_file=cookie_file,
        default_cookie="rid=001,csn=", search_filter=None)
    values.update(overrides)
    return LdapSettings(**values)


@dataclass
class Directory:
    """The loaded sample directory handed to a test."""

    slapd: Slapd
    suffix: str
    service_dn: str
    conn: ldap3.Connection


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory):
    """A session-wide slapd with the project schema; stopped at the end."""
    server = Slapd(tmp_path_factory.mktemp("slapd"), PROJECT_SCHEMA_FILES,
                   SUFFIX)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def directory(slapd: Slapd):
    """The sample directory, freshly loaded, with a root ldap3 connection."""
    # A test may have stopped the shared server; bring it back.
    slapd.start()
    slapd.wipe(SUFFIX, keep_base=True)
    slapd.add_ldif(SAMPLE_LDIF)
    conn = slapd.connection()
    try:
        yield Directory(slapd=slapd, suffix=SUFFIX, service_dn=SERVICE_DN,
                        conn=conn)
    finally:
        # The connection is dead if the test restarted slapd.
        with contextlib.suppress(LDAPException):
            conn.unbind()


@pytest.fixture(scope="session")
def stoney_ldap_dir() -> Path:
    """The real stoney schema and seed data; skip locally, fail on CI."""
    return shared_file("stoney-ldap")


@pytest.fixture(scope="session")
def stoney_slapd(tmp_path_factory: pytest.TempPathFactory,
                 stoney_ldap_dir: Path):
    """A session-wide slapd with the real stoney schema; stopped at the end."""
    server = Slapd(tmp_path_factory.mktemp("stoney-slapd"),
                   [stoney_ldap_dir / "sst.schema",
                    stoney_ldap_dir / "dhcp.schema"],
                   SUFFIX)
    try:
        yield server
    finally:
        server.stop()
