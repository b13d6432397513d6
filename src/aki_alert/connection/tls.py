"""TLS for both MLLP modes (Python's `ssl`): the contexts, built from the settings' file paths.

`server_context` is the listener's (its certificate and key; with `verify_client`, mutual TLS:
a client certificate signed by the CA bundle is required); `client_context` is the client's
(the CA bundle, default the system's, and a hostname check; optionally a client certificate).
Both refuse anything older than TLS 1.2. A missing, unreadable, malformed, expired or not yet
valid certificate, an unreadable key or one that does not match the certificate is a
`TlsError` naming the setting, which the service reports at start-up (config.py).
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass


class TlsError(Exception):
    """A TLS setting that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class TlsSettings:
    """The paths and switches of MLLP_TLS=on (config.py's TLS_* settings)."""

    cert: str | None = None          # TLS_CERT: the listener's certificate (or the client's)
    key: str | None = None           # TLS_KEY
    ca: str | None = None            # TLS_CA: CA bundle (PEM)
    server_name: str | None = None   # TLS_SERVER_NAME: the name the client checks
    verify_client: bool = False      # TLS_VERIFY_CLIENT: the listener requires client certs

    def argv(self) -> list[str]:
        """As the front's command-line options (front.py)."""
        out = ["--tls"]
        for flag, value in (("--tls-cert", self.cert), ("--tls-key", self.key),
                            ("--tls-ca", self.ca), ("--tls-server-name", self.server_name)):
            if value:
                out += [flag, value]
        if self.verify_client:
            out.append("--tls-verify-client")
        return out


def _read(setting: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise TlsError(f"{setting}={path!r} cannot be read: {e.strerror or e}") from None


def check_certificate(setting: str, path: str, now: float | None = None) -> dict:
    """The certificate (the first in the PEM file) decoded; TlsError when it cannot be read or
    parsed, has expired or is not valid yet."""
    _read(setting, path)
    try:
        cert = ssl._ssl._test_decode_cert(path)     # the stdlib's own decoder (no extra package)
    except (ssl.SSLError, ValueError) as e:
        raise TlsError(f"{setting}={path!r} is not a PEM certificate: {e}") from None
    now = time.time() if now is None else now
    not_after = ssl.cert_time_to_seconds(cert["notAfter"])
    not_before = ssl.cert_time_to_seconds(cert["notBefore"])
    if not_after < now:
        raise TlsError(f"{setting}={path!r}: the certificate expired on {cert['notAfter']}")
    if not_before > now:
        raise TlsError(f"{setting}={path!r}: the certificate is not valid until "
                       f"{cert['notBefore']}")
    return cert


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    check_certificate("TLS_CERT", cert)
    if key:
        _read("TLS_KEY", key)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise TlsError(f"TLS_KEY={key or cert!r} is not the private key of TLS_CERT={cert!r} "
                       f"(or not a PEM key): {e.reason or e}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    _read("TLS_CA", ca)
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise TlsError(f"TLS_CA={ca!r} is not a PEM CA bundle: {e.reason or e}") from None


def server_context(s: TlsSettings) -> ssl.SSLContext:
    """The listener's context."""
    if not s.cert or not s.key:
        missing = "TLS_CERT" if not s.cert else "TLS_KEY"
        raise TlsError(f"{missing} is not set: the listener needs its certificate and key with "
                       f"MLLP_TLS=on; example: TLS_CERT=/tls/tls.crt TLS_KEY=/tls/tls.key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, s.cert, s.key)
    if s.verify_client:
        if not s.ca:
            raise TlsError("TLS_CA is not set: TLS_VERIFY_CLIENT=true needs the CA bundle that "
                           "signs the engine's certificates; example: TLS_CA=/tls/ca.crt")
        _load_ca(ctx, s.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif s.ca:
        _load_ca(ctx, s.ca)
    return ctx


def client_context(s: TlsSettings) -> ssl.SSLContext:
    """The client's context: the server's certificate is verified against TLS_CA (else the
    system's CAs) and must carry the hospital's name (TLS_SERVER_NAME, else MLLP_ADDRESS's
    host)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)      # verifies the peer and its name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if s.ca:
        _load_ca(ctx, s.ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if s.cert:
        _load_chain(ctx, s.cert, s.key)
    elif s.key:
        raise TlsError("TLS_CERT is not set: TLS_KEY is given without its certificate")
    return ctx
