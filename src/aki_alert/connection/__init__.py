"""The MLLP connections: the client (`client.py`: the service dials the hospital)."""

from .client import (CONNECT_FAILED, CONNECT_TIMEOUT, CONNECTED, DISCONNECTED,
                     NOT_ACKNOWLEDGED, RECONNECT_CAP, RECONNECT_FIRST, FrameHandler,
                     MllpClient, reconnect_delay)

__all__ = [
    "CONNECT_FAILED", "CONNECT_TIMEOUT", "CONNECTED", "DISCONNECTED", "NOT_ACKNOWLEDGED",
    "RECONNECT_CAP", "RECONNECT_FIRST", "FrameHandler", "MllpClient", "reconnect_delay",
]
