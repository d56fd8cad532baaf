"""sd_notify: READY, WATCHDOG, STATUS, EXTEND_TIMEOUT_USEC and STOPPING for systemd's
``Type=notify``.

The protocol is one datagram to ``$NOTIFY_SOCKET`` (a leading ``@`` meaning an abstract
socket), sent here without blocking. systemd-python's ``daemon.notify`` is not used even
when installed: it sends with a blocking call, and a notify socket whose queue is full
(a busy systemd) would freeze the event loop, watchdog and SIGTERM handling included;
tests/test_faults.py proves the non-blocking send keeps the agent going. Without
``NOTIFY_SOCKET`` every call is a no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the interval systemd expects, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval: float | None = int(usec) / 2e6 if watchdog_for_us else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        message = "\n".join(fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone, or its queue full: drop it, never block
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def reloading(self, status: str = "reloading") -> None:
        self.send("RELOADING=1", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")
