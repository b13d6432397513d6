"""A loopback hospital for the connection's and the front's tests."""

from __future__ import annotations

import socket

from aki_alert.mllp import FrameDecoder, frame

TIMEOUT = 5.0


class Hospital:
    """A loopback server that sends frames one at a time and collects the replies."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(TIMEOUT)
        self.port = self.server.getsockname()[1]

    def accept(self) -> socket.socket:
        conn, _ = self.server.accept()
        conn.settimeout(TIMEOUT)
        return conn

    @staticmethod
    def exchange(conn: socket.socket, message: bytes) -> bytes | None:
        """Send one message; the ACK's payload, or None when the client closed instead."""
        conn.sendall(frame(message))
        decoder = FrameDecoder()
        while True:
            data = conn.recv(4096)
            if not data:
                return None
            frames = decoder.feed(data)
            if frames:
                return frames[0]

    def close(self) -> None:
        self.server.close()
