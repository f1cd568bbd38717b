"""CURVE keys for TCP ingest: where they live and how a socket uses them.

The default ingest endpoint is an ipc socket in a folder only its owner can open. A TCP
endpoint is only served with CURVE: the daemon's key pair and the public keys of the
clients it accepts live under {home}/keys (see `stagewatch keys`). A client names the
server's public key file and its own secret key file in STAGEWATCH_CURVE_SERVER_KEY and
STAGEWATCH_CURVE_CLIENT_KEY.
"""

from __future__ import annotations

import os

import zmq
import zmq.auth


def configure_client(socket: zmq.Socket, endpoint: str) -> bool:
    """Give a client socket its CURVE keys for a TCP endpoint; False if they are not set."""
    if not endpoint.startswith("tcp://"):
        return True
    server_file = os.environ.get("STAGEWATCH_CURVE_SERVER_KEY")
    client_file = os.environ.get("STAGEWATCH_CURVE_CLIENT_KEY")
    if not server_file or not client_file:
        return False
    server_public, _ = zmq.auth.load_certificate(server_file)
    client_public, client_secret = zmq.auth.load_certificate(client_file)
    if client_secret is None:
        raise ValueError(f"expected a secret key file (*.key_secret) in STAGEWATCH_CURVE_CLIENT_KEY, got {client_file}")
    socket.curve_serverkey = server_public
    socket.curve_publickey = client_public
    socket.curve_secretkey = client_secret
    return True
