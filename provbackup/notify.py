"""sd_notify(3) without waiting: READY=1, WATCHDOG=1 and STATUS= to systemd.

The message is one datagram to $NOTIFY_SOCKET. libsystemd's sd_notify (and so
systemd-python's notify) sends it blocking, and systemd-python keeps the GIL while
it does: with the receiver's queue full, the whole daemon stopped, the syncrepl
consumer included (seen with a notify socket nobody read, bench/bench_directory.py).
Here the datagram is sent with MSG_DONTWAIT: if it does not fit, it is dropped and
the next tick sends the next one. A watchdog that keeps missing them is exactly what
systemd's WatchdogSec= is there to notice.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger(__name__)


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. "READY=1"); False without a notify socket or if it was dropped."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.debug("NOTIFY_SOCKET %r is not a unix socket; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, address)
    except OSError as e:  # BlockingIOError (a full queue) included
        log.debug("sd_notify %r not sent: %s", state.split("\n", 1)[0], e)
        return False
    return True
