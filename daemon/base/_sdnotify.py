"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET.

READY=1 once recovery is done and ingest is bound, WATCHDOG=1 pings at half of
$WATCHDOG_USEC, STOPPING=1 on shutdown, STATUS=... for `systemctl status`. Without
$NOTIFY_SOCKET (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address or None
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(watchdog_usec) / 2e6 if watchdog_usec.isdigit() else None

    def notify(self, *lines: str) -> bool:
        """Send `KEY=value` lines; False if there is no socket or it refused."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self._address)
            return True
        except OSError:
            return False
