"""Hostile clients shared by the fault tests: frames and sockets that attack a relay."""

from __future__ import annotations

import socket
from pathlib import Path

import msgpack
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0  # pragma: no cover


def expanding_hello(size: int) -> bytes:
    """A hello-shaped map whose extra key holds ``size`` empty arrays: 1 byte each on the wire,
    about 64 bytes each once decoded."""
    n = size - 64
    head = msgpack.packb({"t": "hello", "v": 1, "store": "x"})
    # map of 4 entries instead of 3: the last value is an array32 of n empty arrays
    body = bytearray(head)
    body[0] = 0x84
    body += msgpack.packb("pad") + b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n
    return bytes(body)


def client_that_never_reads(port: int, hello: bytes) -> socket.socket:
    """A WebSocket client (websockets' sans-I/O protocol over a plain socket with a tiny
    receive buffer) that sends its hello and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}"), max_size=None)
    proto.send_request(proto.connect())
    sock.sendall(b"".join(proto.data_to_send()))
    while proto.handshake_exc is None and proto.state is not State.OPEN:
        proto.receive_data(sock.recv(4096))
    assert proto.state is State.OPEN
    proto.send_binary(hello)
    sock.sendall(b"".join(proto.data_to_send()))
    return sock
