"""Connections to the directory: TLS, bind, timeouts, and ldap3's errors translated once.

Nothing above this package sees an ldap3 exception: a connection problem becomes
`DirectoryUnavailable` (worth retrying), bad credentials `DirectoryAuthError` and a
certificate that does not verify `DirectoryTLSError` (both need an operator). The
password is handed to ldap3 and nowhere else; it is never logged.
"""

from __future__ import annotations

import logging
import socket
import ssl

import ldap3
from ldap3.core import exceptions as ldap_errors

from provbackup.config import LdapSettings

log = logging.getLogger(__name__)


class DirectoryError(Exception):
    """A directory operation failed."""


class DirectoryUnavailable(DirectoryError):
    """The directory cannot be reached right now; retrying may help."""


class DirectoryAuthError(DirectoryError):
    """The directory refused our bind DN or password."""


class DirectoryTLSError(DirectoryError):
    """TLS could not be set up or the server's certificate did not verify."""


# Errors of the connection itself, as opposed to the result of one operation.
_CONNECTION_ERRORS = (ldap_errors.LDAPSocketOpenError, ldap_errors.LDAPSocketReceiveError,
                      ldap_errors.LDAPSocketSendError, ldap_errors.LDAPSocketCloseError,
                      ldap_errors.LDAPSessionTerminatedByServerError,
                      ldap_errors.LDAPCommunicationError, ldap_errors.LDAPResponseTimeoutError,
                      ldap_errors.LDAPUnavailableResult, ldap_errors.LDAPBusyResult)


def _tls(settings: LdapSettings) -> ldap3.Tls | None:
    if settings.tls == "none":
        return None
    return ldap3.Tls(
        validate=ssl.CERT_REQUIRED if settings.tls_verify else ssl.CERT_NONE,
        ca_certs_file=str(settings.tls_ca_file) if settings.tls_ca_file else None,
        version=ssl.PROTOCOL_TLS_CLIENT if settings.tls_verify else ssl.PROTOCOL_TLS)


def server(settings: LdapSettings) -> ldap3.Server:
    """The ldap3 Server for these settings (no schema read: we never need it)."""
    return ldap3.Server(settings.server, port=settings.port, use_ssl=settings.tls == "ldaps",
                        tls=_tls(settings), get_info=ldap3.NONE,
                        connect_timeout=settings.timeout)


def connect(settings: LdapSettings, streaming: bool = False) -> ldap3.Connection:
    """Open, secure and bind a connection; raise a DirectoryError subclass on failure.

    `streaming`: a connection for a never-ending search, whose socket stream.py then
    reads itself; TCP keepalive lets it notice a server that vanished without a word.
    """
    conn = ldap3.Connection(server(settings), user=settings.bind_dn,
                            password=settings.password.reveal(), auto_bind=ldap3.AUTO_BIND_NONE,
                            client_strategy=ldap3.SYNC, raise_exceptions=True,
                            auto_referrals=False, receive_timeout=settings.timeout)
    where = f"{settings.uri} as {settings.bind_dn}"
    try:
        _open(conn, settings, where)
        if streaming:
            _keepalive(conn.socket, settings.timeout)
        if settings.tls == "starttls":
            _start_tls(conn, where)
        conn.bind()
    except ldap_errors.LDAPInvalidCredentialsResult:
        _close(conn)
        raise DirectoryAuthError(f"{where}: the server refused the bind DN or password") from None
    except ldap_errors.LDAPException as e:
        _close(conn)
        raise DirectoryUnavailable(f"{where}: {_reason(e)}") from None
    except DirectoryError:
        _close(conn)
        raise
    log.debug("connected to %s (TLS: %s)", where, settings.tls)
    return conn


def _keepalive(sock: socket.socket, timeout: int) -> None:
    """Probe an idle connection so that a vanished server is noticed within ~2 timeouts."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, timeout))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, timeout // 3))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def _open(conn: ldap3.Connection, settings: LdapSettings, where: str) -> None:
    """Open the socket; with ldaps a handshake failure is a TLS error."""
    try:
        conn.open()
    except ldap_errors.LDAPException as e:
        if settings.tls == "ldaps" and _is_tls_failure(e):
            raise DirectoryTLSError(f"{where}: TLS failed: {_reason(e)}") from None
        raise


def _start_tls(conn: ldap3.Connection, where: str) -> None:
    """Upgrade to TLS; any failure here is a TLS error, with the way out named."""
    try:
        conn.start_tls()
    except ldap_errors.LDAPException as e:
        raise DirectoryTLSError(f"{where}: StartTLS failed ({_reason(e)}); if this server "
                                f"offers no TLS, set [Database] TLS = none") from None


def _is_tls_failure(e: BaseException) -> bool:
    # ldap3 wraps ssl errors in its socket exceptions and keeps only their text.
    text = str(e)
    return isinstance(e.__context__, ssl.SSLError) or any(
        word in text for word in ("SSL", "certificate", "hostname", "CERTIFICATE"))


def _close(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except ldap_errors.LDAPException:
        pass


def _reason(e: Exception) -> str:
    """A short reason for an ldap3 exception, with the password nowhere in it."""
    text = str(e) or type(e).__name__
    return text.replace("\n", " ")[:300]


def is_connection_error(e: BaseException) -> bool:
    """Whether an ldap3 exception means the connection, not the operation, failed."""
    return isinstance(e, _CONNECTION_ERRORS)
