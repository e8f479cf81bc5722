"""The daemon's configuration file on a rig slapd: plain LDAP on loopback, node-01.

Plain (no pytest, no fixtures): the integration tests (daemon_rig.py), the demo and
bench/bench_directory.py all write it through here.
"""

from pathlib import Path

from tests.rig.ldap_fixtures import SERVICE_DN

NODE = "node-01"


def write_daemon_config(path: Path, *, port: int, root_dn: str, password: Path,
                        libvirt_uri: str, state: Path, sleep: int = 1, attempts: int = 1,
                        max_steps: int = 2) -> Path:
    """Write the file; the password stays in its own file (PASSWORD_FILE)."""
    path.write_text(f"""[Global]
ENVIRONMENT = {NODE}
LOG_INFO = 1

[Database]
SERVER = 127.0.0.1
PORT = {port}
TLS = none
TIMEOUT = 10
ADMIN_USER = {root_dn}
PASSWORD_FILE = {password}
SERVICE_SUBTREE = {SERVICE_DN}
STONEY_CLOUD_WIDE_CONFIGURATION = ou=backup,ou=configuration,{SERVICE_DN}
COOKIE_FILE = {state}/syncrepl.cookie

[Operation Mode]
SLEEP = {sleep}
ATTEMPTS = {attempts}

[Hypervisor]
LIBVIRT_URI = {libvirt_uri}

[Daemon]
MAX_CONCURRENT_STEPS = {max_steps}
STATE_DIRECTORY = {state}
""")
    return path
