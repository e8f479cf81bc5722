"""A private OpenLDAP server with the syncprov overlay, started by a test.

``Slapd(workdir, schema_files, suffix)`` writes a slapd.conf, converts it to a
cn=config directory, creates the suffix entry and starts ``slapd`` in the
foreground, so its pid is known and it can be stopped and restarted on the
same port with the same data. The root password is random; it is stored
hashed in the configuration and handed to the LDAP tools through a 0600
file, never on a command line.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import ldap3
from ldap3.core.exceptions import LDAPException, LDAPNoSuchObjectResult
from ldap3.utils.dn import parse_dn, safe_dn

__all__ = ["Slapd", "SlapdError", "TlsFiles", "make_test_pki"]

SYSTEM_SCHEMA_DIR = Path("/etc/ldap/schema")
SYSTEM_SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
MODULE_PATH = "/usr/lib/ldap"
# sun_path holds 108 bytes; stay well below it.
MAX_SOCKET_PATH = 90
TOOL_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


class SlapdError(RuntimeError):
    """slapd or one of the OpenLDAP tools failed."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener: server certificate, its key, the CA."""

    cert: Path
    key: Path
    ca: Path


def _tool(name: str) -> str:
    """Return the path of an OpenLDAP/OpenSSL program, also from sbin."""
    found = shutil.which(name) or shutil.which(
        name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise SlapdError(f"{name} is not installed")
    return found


def _run(argv: Sequence[str], *, input_text: str | None = None,
         timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a tool (argv list, no shell); raise SlapdError with its output."""
    # LDAPNOINIT: ignore any ldap.conf/ldaprc of the machine or the user.
    env = dict(os.environ, LDAPNOINIT="1")
    try:
        done = subprocess.run(
            list(argv), input=input_text, capture_output=True, text=True,
            timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SlapdError(f"{argv[0]} timed out after {timeout} s") from exc
    if done.returncode != 0:
        # The tools report progress on stdout (ldapadd: "adding new entry
        # ...") and the error on stderr: the last progress lines name the
        # entry that failed.
        progress = "\n".join(done.stdout.strip().splitlines()[-6:])
        raise SlapdError(
            f"{Path(argv[0]).name} exited with {done.returncode}:\n"
            f"{progress}\n{done.stderr.strip()}".strip())
    return done


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ssha(password: str) -> str:
    """Hash a password as OpenLDAP's {SSHA} (salted SHA-1)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies (Linux only)."""
    # Keeps a crashed or killed test run from leaving slapd behind. Note:
    # the signal comes when the *thread* that started slapd ends.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _base_entry(suffix: str) -> str:
    """Return the LDIF of the suffix entry itself."""
    attr, _, value = suffix.split(",", 1)[0].partition("=")
    attr = attr.strip().lower()
    value = value.strip()
    classes = {
        "dc": ["dcObject", "organization"],
        "o": ["organization"],
        "ou": ["organizationalUnit"],
    }
    if attr not in classes:
        raise ValueError(f"unsupported suffix RDN type {attr!r} in {suffix!r}")
    lines = [f"dn: {suffix}", "objectClass: top"]
    lines += [f"objectClass: {oc}" for oc in classes[attr]]
    lines.append(f"{attr}: {value}")
    if attr == "dc":
        lines.append(f"o: {value}")
    return "\n".join(lines) + "\n"


class Slapd:
    """One private slapd: mdb database, syncprov, ldap:// and ldapi://."""

    def __init__(self, workdir: Path, schema_files: Sequence[Path],
                 suffix: str, *, tls: TlsFiles | tuple | None = None,
                 start_timeout: float = 15.0, reload_hint: bool = False) -> None:
        """Configure a new server in workdir and start it.

        workdir may exist but must not hold a configured server (slapd.d).
        """
        self.workdir = Path(workdir).resolve()
        self.suffix = suffix
        self.schema_files = [Path(p).resolve() for p in schema_files]
        self.tls = TlsFiles(*tls) if tls is not None else None
        self.start_timeout = start_timeout
        # syncprov-reloadhint TRUE: a stale cookie gets e-syncRefreshRequired (4096)
        # instead of a silent full refresh.
        self.reload_hint = reload_hint
        self.root_dn = f"cn=admin,{suffix}"
        self.root_password = secrets.token_urlsafe(24)
        self.port = _free_port()
        self.tls_port = None
        while self.tls and self.tls_port in (None, self.port):
            self.tls_port = _free_port()
        self.config_dir = self.workdir / "slapd.d"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "slapd.log"
        self._own_socket_dir = False
        self.socket_path = self._choose_socket_path()
        self._password_file = self.workdir / "rootpw"
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._log_offset = 0
        self._configure()
        self.start()

    # -- addresses -----------------------------------------------------------

    @property
    def ldap_uri(self) -> str:
        """URL of the plain TCP listener."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str | None:
        """URL of the TLS listener, or None without TLS."""
        return f"ldaps://127.0.0.1:{self.tls_port}" if self.tls else None

    @property
    def ldapi_uri(self) -> str:
        """URL of the Unix socket listener (no trailing slash, for ldap3)."""
        return "ldapi://" + quote(str(self.socket_path), safe="")

    @property
    def pid(self) -> int | None:
        """Process id of the running slapd, or None."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        """True while the slapd process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- set-up ---------------------------------------------------------------

    def _choose_socket_path(self) -> Path:
        """Put the ldapi socket in workdir, or in a short /tmp dir."""
        candidate = self.workdir / "run" / "ldapi"
        if len(str(candidate)) <= MAX_SOCKET_PATH:
            return candidate
        self._own_socket_dir = True
        return Path(tempfile.mkdtemp(prefix="slapd-", dir="/tmp")) / "ldapi"

    def _conf_text(self) -> str:
        """Return the slapd.conf text (holds only the hashed password)."""
        lines = [f"include {SYSTEM_SCHEMA_DIR / (name + '.schema')}"
                 for name in SYSTEM_SCHEMAS]
        lines += [f"include {path}" for path in self.schema_files]
        lines += [
            f"modulepath {MODULE_PATH}",
            "moduleload back_mdb",
            "moduleload syncprov",
            # The whole tree in one answer, for the root and any consumer.
            "sizelimit unlimited",
        ]
        if self.tls:
            lines += [
                f"TLSCACertificateFile {self.tls.ca}",
                f"TLSCertificateFile {self.tls.cert}",
                f"TLSCertificateKeyFile {self.tls.key}",
            ]
        lines += [
            "database mdb",
            f'suffix "{self.suffix}"',
            f'rootdn "{self.root_dn}"',
            f"rootpw {_ssha(self.root_password)}",
            f"directory {self.data_dir}",
            "maxsize 1073741824",
            "index objectClass,entryCSN,entryUUID eq",
            "overlay syncprov",
            "syncprov-checkpoint 100 10",
            "syncprov-sessionlog 1000",
        ]
        if self.reload_hint:
            lines.append("syncprov-reloadhint TRUE")
        return "\n".join(lines) + "\n"

    def _configure(self) -> None:
        """Write slapd.conf, convert it to slapd.d, add the suffix entry."""
        for path in self.schema_files:
            if not path.is_file():
                raise SlapdError(f"schema file not found: {path}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.config_dir.exists() and any(self.config_dir.iterdir()):
            raise SlapdError(f"{self.config_dir} is not empty")
        for directory in (self.config_dir, self.data_dir,
                          self.socket_path.parent):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        conf = self.workdir / "slapd.conf"
        conf.touch(mode=0o600)
        conf.write_text(self._conf_text())
        self.write_password_file(self._password_file)
        # -n0: only the config database; without it slaptest fails on the
        # still empty mdb database.
        _run([_tool("slaptest"), "-n0", "-f", str(conf),
              "-F", str(self.config_dir)])
        _run([_tool("slapadd"), "-F", str(self.config_dir),
              "-b", self.suffix], input_text=_base_entry(self.suffix))

    def write_password_file(self, path: Path) -> Path:
        """Write the root password to path (mode 0600, no newline)."""
        # No trailing newline: ldapadd -y and most daemons use the file
        # content verbatim.
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.root_password)
        os.chmod(path, 0o600)
        return path

    # -- process --------------------------------------------------------------

    def _urls(self) -> str:
        """Return the -h listener list."""
        urls = [self.ldap_uri + "/", self.ldapi_uri]
        if self.tls:
            urls.append(self.ldaps_uri + "/")
        return " ".join(urls)

    def start(self) -> None:
        """Start slapd and wait until it answers (bounded)."""
        if self.running:
            return
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        self._log = open(self.log_path, "ab")
        self._log_offset = self._log.tell()
        # -d keeps slapd in the foreground. Level "none" (not 0) still prints
        # the messages slapd always logs - start-up errors such as a busy
        # port - but none of the per-operation chatter; -d 0 prints nothing.
        self._proc = subprocess.Popen(
            [_tool("slapd"), "-F", str(self.config_dir), "-h", self._urls(),
             "-d", "none"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Poll the root DSE until slapd answers or the timeout passes."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise SlapdError(
                    f"slapd exited with {self._proc.returncode} while "
                    f"starting:\n{self.log_tail()}")
            # slapd opens all listeners at once and creates the (removed)
            # socket then; before that, a TCP probe could reach someone else
            # holding the port and hang in its receive timeout.
            if self.socket_path.exists() and self._answers():
                return
            if time.monotonic() > deadline:
                raise SlapdError(
                    f"slapd did not answer within {self.start_timeout} s:\n"
                    f"{self.log_tail()}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        """True if an anonymous root DSE search over ldap:// succeeds."""
        try:
            # A fresh Server each time: ldap3 remembers a refused address
            # as unavailable and would not retry it for a few seconds.
            server = ldap3.Server(self.ldap_uri, connect_timeout=1)
            conn = ldap3.Connection(server, auto_bind=True, receive_timeout=2)
            conn.search("", "(objectClass=*)", ldap3.BASE)
            conn.unbind()
            return True
        except LDAPException:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop slapd by pid: SIGTERM, then SIGKILL after timeout seconds."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_socket_dir:
            # start() makes it again (same path) on a restart.
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines slapd wrote since its last start."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self._log_offset)
                text = handle.read().decode(errors="replace")
        except OSError:
            return "(no slapd log)"
        return "\n".join(text.splitlines()[-lines:]) or "(slapd wrote nothing)"

    def __enter__(self) -> "Slapd":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- data -----------------------------------------------------------------

    def connection(self, **kwargs) -> ldap3.Connection:
        """Return an ldap3 connection bound as the root DN over ldap://."""
        server = ldap3.Server(self.ldap_uri, connect_timeout=5)
        kwargs.setdefault("receive_timeout", 30)
        kwargs.setdefault("raise_exceptions", True)
        return ldap3.Connection(server, self.root_dn, self.root_password,
                                auto_bind=True, **kwargs)

    def add_ldif(self, ldif: str | Path) -> None:
        """Add the entries of an LDIF (a Path is read, a str is LDIF text)."""
        text = ldif.read_text() if isinstance(ldif, Path) else ldif
        _run([_tool("ldapadd"), "-x", "-H", self.ldapi_uri,
              "-D", self.root_dn, "-y", str(self._password_file)],
             input_text=text)

    def wipe(self, base_dn: str, *, keep_base: bool = False) -> int:
        """Delete the subtree at base_dn (only its children if keep_base).

        Returns the number of entries deleted; a missing base is no error.
        """
        conn = self.connection()
        try:
            try:
                conn.search(base_dn, "(objectClass=*)", ldap3.SUBTREE,
                            attributes=[])
            except LDAPNoSuchObjectResult:
                return 0
            dns = [entry.entry_dn for entry in conn.entries]
            base = safe_dn(base_dn).lower()
            if keep_base:
                dns = [dn for dn in dns if safe_dn(dn).lower() != base]
            # Children before parents: the longest DNs first.
            dns.sort(key=lambda dn: len(parse_dn(dn)), reverse=True)
            for dn in dns:
                conn.delete(dn)
            return len(dns)
        finally:
            conn.unbind()


def make_test_pki(directory: Path, hostname: str = "localhost") -> TlsFiles:
    """Create a throw-away CA and a server certificate for 127.0.0.1."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    openssl = _tool("openssl")
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = (directory / "server.key", directory / "server.csr",
                     directory / "server.crt")
    ext = directory / "server.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes"]
    _run([openssl, "req", "-x509", *ec, "-keyout", str(ca_key),
          "-out", str(ca_crt), "-days", "2", "-subj", "/CN=provbackup test CA",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    _run([openssl, "req", *ec, "-keyout", str(key), "-out", str(csr),
          "-subj", f"/CN={hostname}"])
    ext.write_text(
        f"subjectAltName=DNS:{hostname},IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n")
    _run([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt),
          "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
          "-extfile", str(ext), "-out", str(crt)])
    for path in (ca_key, key):
        os.chmod(path, 0o600)
    return TlsFiles(cert=crt, key=key, ca=ca_crt)
