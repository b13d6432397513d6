"""An acknowledge-only MLLP client: the protocol floor for benchmarks.

It connects, answers every message with `MSH|^~\\&|||||<now>||ACK|||2.5\\rMSA|AA\\r`, and does
nothing else. Blocking sockets: one peer, stop-and-wait, nothing to multiplex.

    python -m aki_alert.hospital.ackclient 127.0.0.1:8440 [--count N]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from ..mllp import FrameDecoder, frame


def ack_frame(now: float) -> bytes:
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now))
    return frame(f"MSH|^~\\&|||||{stamp}||ACK|||2.5\rMSA|AA\r".encode())


def run(host: str, port: int, count: int | None = None, idle_timeout: float = 30.0) -> int:
    """Acknowledge messages until `count` are acknowledged, the peer closes, or nothing arrives
    for `idle_timeout` seconds. Returns the number acknowledged."""
    acked = 0
    decoder = FrameDecoder()
    second, ack = 0, b""
    with socket.create_connection((host, port), timeout=idle_timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while count is None or acked < count:
            try:
                data = sock.recv(65536)
            except (TimeoutError, socket.timeout):
                break
            if not data:
                break
            for _ in decoder.feed(data):
                now = time.time()
                if int(now) != second:
                    second, ack = int(now), ack_frame(now)
                sock.sendall(ack)
                acked += 1
    return acked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aki_alert.hospital.ackclient",
                                description="Acknowledge every MLLP message; nothing else.")
    p.add_argument("address", help="HOST:PORT of the hospital's MLLP endpoint")
    p.add_argument("--count", type=int, help="stop after this many messages")
    p.add_argument("--idle-timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    start = time.perf_counter()
    n = run(host or "127.0.0.1", int(port), args.count, args.idle_timeout)
    took = time.perf_counter() - start
    print(f"acknowledged {n} messages in {took:.2f} s ({n / took:.0f}/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
