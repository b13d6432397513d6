"""A send-only MLLP client: the integration engine's side, for the listener (MLLP_LISTEN).

It connects to the service, sends each message of an MLLP file stop-and-wait (the next only
after the `AA` of this one), as an engine's MLLP sender does, and reports the rate. Blocking
socket: one peer, nothing to multiplex. Used by `make bench` (the listener's row) and by hand:

    python -m aki_alert.hospital.sender 127.0.0.1:2575 messages.mllp
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

from ..mllp import FrameDecoder, frame
from .datafiles import read_messages


class MllpSender(threading.Thread):
    """Sends `messages` to HOST:PORT, reconnecting (and resending the message in hand) until
    every one is acknowledged `AA`. `acked`, `rate()`; `done` is set at the end."""

    def __init__(self, host: str, port: int, messages: list[bytes],
                 connect_for: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.messages = host, port, messages
        self.connect_for = connect_for
        self.acked = 0
        self.first_send: float | None = None
        self.done_at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.connect_for
        while self.acked < len(self.messages) and time.monotonic() < deadline:
            try:
                self._send()
            except OSError:
                time.sleep(0.05)
        self.done_at = time.perf_counter()
        self.done.set()

    def _send(self) -> None:
        frames = [frame(m) for m in self.messages]
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            decoder = FrameDecoder()
            if self.first_send is None:
                self.first_send = time.perf_counter()
            while self.acked < len(frames):
                sock.sendall(frames[self.acked])
                replies: list = []
                while not replies:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionResetError("closed by the peer")
                    replies = decoder.feed(data)
                if b"\rMSA|AA" in replies[0]:
                    self.acked += 1

    def rate(self) -> float | None:
        if self.first_send is None or self.done_at is None or self.done_at <= self.first_send:
            return None
        return self.acked / (self.done_at - self.first_send)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aki_alert.hospital.sender",
                                description="Send an MLLP file to a listener, stop-and-wait.")
    p.add_argument("address", help="HOST:PORT of the service's MLLP_LISTEN")
    p.add_argument("messages", help="an MLLP file (0x0B … 0x1C 0x0D frames)")
    args = p.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    from pathlib import Path

    sender = MllpSender(host or "127.0.0.1", int(port), read_messages(Path(args.messages)))
    sender.run()
    print(f"sent {sender.acked} of {len(sender.messages)} messages "
          f"({sender.rate() or 0:.0f}/s)", file=sys.stderr)
    return 0 if sender.acked == len(sender.messages) else 1


if __name__ == "__main__":
    sys.exit(main())
