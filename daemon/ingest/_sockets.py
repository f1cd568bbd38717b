"""The daemon's sockets: the ROUTER that clients send to (CURVE only over TCP), the live
feed's PUB, the locks on their ipc endpoints, and the socket files removed on close."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import zmq

from stagewatch._home import check_endpoint, ipc_path
from stagewatch._shared import SHARED_FOLDER_MODE
from stagewatch.daemon.base._layout import DaemonHome
from stagewatch.daemon.base._lock import DaemonAlreadyRunning, lock_endpoint

RECEIVE_HWM_FRAMES = 64
LIVE_HWM_MESSAGES = 16


@dataclass(frozen=True)
class IngestSettings:
    endpoint: str
    live_endpoint: str
    accuracy_endpoint: str | None
    max_frame_bytes: int
    max_group_events: int
    group_access: bool


def _require_curve(context: zmq.Context, router: zmq.Socket, home: DaemonHome) -> Any:
    """Serve with CURVE: clients whose public key is not authorized are refused."""
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(home.authorized_keys))
    public, secret = zmq.auth.load_certificate(str(home.server_secret_key))
    router.curve_server = True
    router.curve_publickey = public
    router.curve_secretkey = secret
    return authenticator


class Sockets:
    """The sockets of one daemon, bound by `bind` and closed (their files removed) by `close`."""

    def __init__(self, home: DaemonHome, settings: IngestSettings) -> None:
        self.home = home
        self.settings = settings
        self._context = zmq.Context()
        self._authenticator: Any = None
        self.router: zmq.Socket | None = None
        self.live: zmq.Socket | None = None
        self._bound: list[str] = []  # endpoints this daemon bound (whose socket files it removes)
        self._endpoint_locks: list[int] = []

    def endpoints(self) -> list[str]:
        settings = self.settings
        return [e for e in (settings.endpoint, settings.live_endpoint, settings.accuracy_endpoint) if e]

    def bind(self) -> None:
        # Only the owner may connect, or with group access the home's group too. The setgid
        # bit makes what clients create inherit the group (and tells them to share it).
        folder_mode = SHARED_FOLDER_MODE if self.settings.group_access else 0o700
        if self.settings.group_access:
            for folder in self.home.shared_folders():
                folder.mkdir(exist_ok=True)
                folder.chmod(folder_mode)
        for endpoint in self.endpoints():
            check_endpoint(endpoint)
            socket_file = ipc_path(endpoint)
            if socket_file is not None:
                socket_file.parent.mkdir(parents=True, exist_ok=True)
                socket_file.parent.chmod(folder_mode)
                if endpoint != self.settings.accuracy_endpoint:  # the worker binds that one
                    self._endpoint_locks.append(lock_endpoint(socket_file))
        self._bind_router()
        self.live = self._context.socket(zmq.PUB)
        # A message is a whole group (up to 10k events): a stalled subscriber may hold back
        # 16 of them, then it misses messages; the daemon never waits and never grows.
        self.live.setsockopt(zmq.SNDHWM, LIVE_HWM_MESSAGES)
        self.live.setsockopt(zmq.LINGER, 0)
        self.live.bind(self.settings.live_endpoint)
        self._bound.append(self.settings.live_endpoint)
        if self.settings.group_access:
            for endpoint in (self.settings.endpoint, self.settings.live_endpoint):
                socket_file = ipc_path(endpoint)
                if socket_file is not None:
                    socket_file.chmod(0o660)

    def _bind_router(self) -> None:
        if self.settings.endpoint.startswith("tcp://") and not self.home.server_secret_key.exists():
            raise ValueError(f"a TCP endpoint needs CURVE keys: run `stagewatch keys init --home {self.home.root}`")
        router = self.router = self._context.socket(zmq.ROUTER)  # closed by close(), whatever fails next
        if self.settings.endpoint.startswith("tcp://"):  # TCP is served with CURVE only
            self._authenticator = _require_curve(self._context, router, self.home)
        router.setsockopt(zmq.MAXMSGSIZE, self.settings.max_frame_bytes)
        # Per client, at most this many frames wait in memory; a flooding client is slowed
        # by its own send queue filling up, and the daemon's memory stays bounded.
        router.setsockopt(zmq.RCVHWM, RECEIVE_HWM_FRAMES)
        router.setsockopt(zmq.LINGER, 0)
        try:
            router.bind(self.settings.endpoint)
        except zmq.ZMQError as error:
            if error.errno == zmq.EADDRINUSE:
                raise DaemonAlreadyRunning(f"{self.settings.endpoint} is in use (another daemon?)") from None
            raise
        self._bound.append(self.settings.endpoint)

    def close(self) -> None:
        """Close the sockets and the context; remove the ipc socket files (a stale one would
        look like a daemon)."""
        for socket in (self.router, self.live):
            if socket is not None:
                socket.close(0)
        if self._authenticator is not None:
            self._authenticator.stop()
        for endpoint in self._bound:
            socket_file = ipc_path(endpoint)
            if socket_file is not None:
                socket_file.unlink(missing_ok=True)
        for fd in self._endpoint_locks:
            os.close(fd)
        self._endpoint_locks = []
        self._context.term()

    def wait(self, timeout_ms: int) -> bool:
        return bool(self.router.poll(timeout_ms, zmq.POLLIN))

    def principal(self, identity: bytes, frame: zmq.Frame) -> bytes:
        """Who sent a frame: over an authenticated (CURVE) socket its public key, stable across
        reconnects; else its connection's routing id. (Only an authenticated socket has a
        User-Id; asking another raises, every batch.)"""
        if self._authenticator is None:
            return identity
        try:
            user = frame.get("User-Id")
        except zmq.ZMQError:
            user = None
        return user.encode() if user else identity

    def publish(self, topic: bytes, body: bytes) -> None:
        if self.live is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.live.send_multipart([topic, body], zmq.NOBLOCK)
