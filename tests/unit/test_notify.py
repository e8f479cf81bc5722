"""sd_notify without waiting (provbackup/notify.py)."""

import socket
import threading

from provbackup.notify import notify


def test_sends_one_datagram_to_the_notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        assert notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": str(path)})
        assert receiver.recv(4096) == b"READY=1\nSTATUS=x"


def test_abstract_socket_address():
    name = f"provbackup-test-{threading.get_ident()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert receiver.recv(4096) == b"WATCHDOG=1"


def test_without_a_usable_socket_nothing_is_sent(tmp_path):
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})


def test_a_full_queue_drops_the_message_instead_of_blocking(tmp_path):
    """A receiver that never reads: libsystemd's notify blocked here, holding the GIL,
    and stopped the whole daemon. Each call must return, the later ones with False."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(str(path))
        results = []
        sender = threading.Thread(target=lambda: results.extend(
            notify("WATCHDOG=1\nSTATUS=" + "x" * 200, {"NOTIFY_SOCKET": str(path)})
            for _ in range(2000)), daemon=True)
        sender.start()
        sender.join(60)
        assert not sender.is_alive(), "notify() blocked on a full notify socket"
        assert results[0] is True and results[-1] is False
