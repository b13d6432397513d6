"""Settings of `aki-alert serve`: each one an environment variable and a flag of the same meaning.

A missing or malformed setting stops the service at once with one line naming the setting and
an example of a good value.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from .connection.listener import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS
from .connection.tls import TlsError, TlsSettings, client_context, server_context
from .hl7.ack import NACK_POLICIES
from .logs import PATIENT_ID_MODES
from .hl7.profile import FeedProfile, ProfileError, load_profile

# The shipped shift-robust model, served on another population (MODEL_ON_SHIFT, population.py).
ROBUST = "v3-robust"


def shift_model(setting: str) -> str | None:
    """MODEL_ON_SHIFT as given: a shipped model's name, or None for `none` (or empty)."""
    return None if setting.strip() in ("", "none") else setting.strip()


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Setting:
    env: str
    flag: str
    default: str | None
    example: str
    help: str


SETTINGS = (
    Setting("MLLP_ADDRESS", "--mllp-address", "", "hospital-sim:8440",
            "the hospital's MLLP endpoint, host:port, the service connects to (required "
            "unless MLLP_LISTEN is set)"),
    Setting("MLLP_LISTEN", "--mllp-listen", "", "0.0.0.0:2575",
            "host:port the service listens on for the integration engine's MLLP connections "
            "(alongside or instead of MLLP_ADDRESS; default: off)"),
    Setting("MLLP_MAX_CONNECTIONS", "--mllp-max-connections", str(DEFAULT_MAX_CONNECTIONS), "8",
            "with MLLP_LISTEN: connections held at once; past it the longest idle is closed"),
    Setting("MLLP_IDLE_TIMEOUT", "--mllp-idle-timeout", f"{DEFAULT_IDLE_TIMEOUT:g}", "300",
            "with MLLP_LISTEN: seconds without a message before a connection is closed (0: "
            "never)"),
    Setting("MLLP_TLS", "--mllp-tls", "off", "on", "TLS on the MLLP connections: off or on"),
    Setting("TLS_CERT", "--tls-cert", "", "/tls/tls.crt",
            "PEM certificate: the listener's (required with MLLP_LISTEN and MLLP_TLS=on), "
            "else the client's own (optional)"),
    Setting("TLS_KEY", "--tls-key", "", "/tls/tls.key", "PEM private key of TLS_CERT"),
    Setting("TLS_CA", "--tls-ca", "", "/tls/ca.crt",
            "PEM CA bundle: the client verifies the hospital's certificate with it (default: "
            "the system's CAs); the listener, the engine's with TLS_VERIFY_CLIENT"),
    Setting("TLS_SERVER_NAME", "--tls-server-name", "", "mllp.trust.nhs.uk",
            "the name the hospital's certificate must carry (default: MLLP_ADDRESS's host)"),
    Setting("TLS_VERIFY_CLIENT", "--tls-verify-client", "false", "true",
            "the listener requires a client certificate signed by TLS_CA (mutual TLS)"),
    Setting("PAGER_ADDRESS", "--pager-address", None, "hospital-sim:8441",
            "the pager's HTTP endpoint, host:port; pages go to http://PAGER_ADDRESS/page "
            "(required)"),
    Setting("HISTORY_PATH", "--history-path", "/data/history.csv", "/data/history.csv",
            "history CSV imported into the state"),
    Setting("STATE_DIR", "--state-dir", "/state", "/state",
            "directory of the durable state (a persistent volume)"),
    Setting("STATE_URL", "--state-url", "", "postgresql://aki@db:5432/aki",
            "PostgreSQL state instead of the SQLite file in STATE_DIR (docs/postgres.md); "
            "STATE_DIR still holds the message log"),
    Setting("LEASE_SECONDS", "--lease-seconds", "5", "5",
            "with STATE_URL: the leader's lease; a standby takes over this long after the "
            "leader stops renewing it"),
    Setting("METRICS_PORT", "--metrics-port", "8000", "8000",
            "port of /metrics, /healthz and /readyz (0: off)"),
    Setting("DETECTOR", "--detector", "model", "nhs", "the detector: model or nhs"),
    Setting("MODEL_PATH", "--model-path", "", "/models/v2",
            "model artifact directory (default: the model shipped in the package)"),
    Setting("MODEL_ON_SHIFT", "--model-on-shift", ROBUST, "none",
            "the shipped model served instead of the default when the history shows another "
            "population (docs/model-card.md); none: always the default. Not with MODEL_PATH"),
    Setting("DURABILITY", "--durability", "process", "machine",
            "process: survives a process crash; machine: also a power cut (fsync per message)"),
    Setting("ON_HISTORY_CHANGE", "--on-history-change", "auto", "refuse",
            "when the state was built from another history or environment: auto, refuse, "
            "merge or rebuild (see docs/runbook.md)"),
    Setting("AKI_ENVIRONMENT", "--environment", "", "st-thomas-prod",
            "name of this hospital environment (default: the MLLP address)"),
    Setting("FEED_PROFILE", "--feed-profile", "", "/etc/aki-alert/feed.toml",
            "feed profile (TOML): this hospital's creatinine codes, units and patient numbers "
            "(docs/integration.md; default: the assessment hospital's contract)"),
    Setting("LABELS_PATH", "--labels-path", "", "/labels/confirmed-aki.csv",
            "CSV of confirmed AKIs (mrn,date) for the rolling F3 gauge (default: none)"),
    Setting("CONSOLE_PORT", "--console-port", "0", "8080",
            "port of the read-only alert console web page (0: off)"),
    Setting("CONSOLE_HOST", "--console-host", "127.0.0.1", "0.0.0.0",
            "address the console listens on"),
    Setting("CONSOLE_TOKEN", "--console-token", "", "s3cret-token",
            "bearer token (or basic-auth password) the console requires; required with "
            "CONSOLE_PORT"),
    Setting("CONSOLE_REFRESH", "--console-refresh", "30", "60",
            "seconds between the console pages' automatic reloads (0: none)"),
    Setting("LOG_FORMAT", "--log-format", "text", "json", "text or json"),
    Setting("LOG_LEVEL", "--log-level", "INFO", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Setting("NACK_POLICY", "--nack-policy", "accept", "hl7",
            "accept: AA to every message durably handled, a message that cannot be used becomes "
            "a dead letter; hl7: such a message is answered AE, an unreadable frame AR, with an "
            "ERR segment saying why (docs/integration.md)"),
    Setting("LOG_PATIENT_IDS", "--log-patient-ids", "plain", "hashed",
            "MRNs in log lines: plain, hashed (a keyed HMAC-SHA256, mrn#…; needs "
            "LOG_PATIENT_KEY) or none (left out)"),
    Setting("LOG_PATIENT_KEY", "--log-patient-key", "", "a-long-random-secret",
            "the key of LOG_PATIENT_IDS=hashed (at least 16 characters; keep it secret and "
            "stable: the same MRN then hashes alike across restarts)"),
)


@dataclass(frozen=True)
class Config:
    mllp_host: str | None          # None: no client (listener only)
    mllp_port: int | None
    pager_address: str
    history_path: str
    state_dir: str
    state_url: str | None
    lease_seconds: float
    metrics_port: int
    detector: str
    model_path: str | None
    durability: str
    environment: str
    on_history_change: str
    feed_profile: FeedProfile
    labels_path: str | None
    console_port: int
    console_host: str
    console_token: str | None
    console_refresh: int
    log_format: str
    log_level: str
    model_on_shift: str | None = ROBUST     # None: MODEL_ON_SHIFT=none
    nack_policy: str = "accept"
    feed_profile_path: str = ""             # FEED_PROFILE as given ("": the default profile)
    log_patient_ids: str = "plain"
    log_patient_key: str = ""
    mllp_listen: tuple[str, int] | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    tls: TlsSettings | None = None          # None: MLLP_TLS=off

    @property
    def mllp_address(self) -> str:
        """The MLLP side(s), as logged."""
        parts = []
        if self.mllp_host is not None:
            parts.append(f"{self.mllp_host}:{self.mllp_port}")
        if self.mllp_listen is not None:
            parts.append("listening on %s:%d" % self.mllp_listen)
        return ", ".join(parts) + (" (TLS)" if self.tls else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for s in SETTINGS:
        default = f" (default {s.default})" if s.default else ""
        parser.add_argument(s.flag, dest=s.env, metavar=s.env,
                            help=f"{s.help}{default}; env {s.env}")


def _host_port(s: Setting, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{s.env}={value!r} is not host:port; example: {s.env}={s.example}")
    return host, int(port)


def _seconds(s: Setting, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0.5 <= seconds <= 300:
        raise ConfigError(f"{s.env}={value!r} is not a number of seconds from 0.5 to 300; "
                          f"example: {s.env}={s.example}")
    return seconds


def _choice(s: Setting, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(
            f"{s.env}={value!r} is not one of {', '.join(choices)}; example: {s.env}={s.example}")
    return value


def _int(s: Setting, value: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise ConfigError(f"{s.env}={value!r} is not a whole number from {low} to {high}; "
                          f"example: {s.env}={s.example}")
    return int(value)


def _tls(raw: dict[str, str], by_env: dict[str, Setting], listener: bool,
         client: bool) -> TlsSettings | None:
    """MLLP_TLS and the TLS_* settings; with TLS on, the contexts are built here once, so that
    a bad, expired or unreadable certificate or key stops the start at once (the front builds
    its own from the same files)."""
    on = _choice(by_env["MLLP_TLS"], raw["MLLP_TLS"].lower(), ("off", "on")) == "on"
    verify = _choice(by_env["TLS_VERIFY_CLIENT"], raw["TLS_VERIFY_CLIENT"].lower(),
                     ("true", "false")) == "true"
    if not on:
        return None
    settings = TlsSettings(cert=raw["TLS_CERT"] or None, key=raw["TLS_KEY"] or None,
                           ca=raw["TLS_CA"] or None, server_name=raw["TLS_SERVER_NAME"] or None,
                           verify_client=verify)
    try:
        if listener:
            server_context(settings)
        if client:
            client_context(settings)
    except TlsError as e:
        raise ConfigError(str(e)) from None
    return settings


def _profile(path: str) -> FeedProfile:
    try:
        return load_profile(path)
    except ProfileError as e:
        raise ConfigError(f"FEED_PROFILE: {e}") from None


def load(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """Flags win over environment variables, which win over defaults."""
    environ = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    by_env = {s.env: s for s in SETTINGS}
    for s in SETTINGS:
        value = getattr(args, s.env, None)
        if value is None:
            value = environ.get(s.env, s.default)
        raw[s.env] = (value or "").strip()
    if not raw["MLLP_ADDRESS"] and not raw["MLLP_LISTEN"]:
        raise ConfigError("MLLP_ADDRESS is not set: the hospital's MLLP endpoint to connect to; "
                          "example: MLLP_ADDRESS=hospital-sim:8440 (or MLLP_LISTEN=0.0.0.0:2575 "
                          "for the integration engine to connect to the service)")
    for s in SETTINGS:
        if not raw[s.env] and s.default is None:
            raise ConfigError(f"{s.env} is not set: {s.help}; example: {s.env}={s.example} "
                              f"(or {s.flag} {s.example})")
    mllp_host = mllp_port = listen = None
    if raw["MLLP_ADDRESS"]:
        mllp_host, mllp_port = _host_port(by_env["MLLP_ADDRESS"], raw["MLLP_ADDRESS"])
    if raw["MLLP_LISTEN"]:
        listen = _host_port(by_env["MLLP_LISTEN"], raw["MLLP_LISTEN"])
    max_connections = _int(by_env["MLLP_MAX_CONNECTIONS"], raw["MLLP_MAX_CONNECTIONS"],
                           1, 10_000)
    idle = raw["MLLP_IDLE_TIMEOUT"]
    try:
        idle_timeout = float(idle)
    except ValueError:
        idle_timeout = -1.0
    if not (idle_timeout == 0 or 1 <= idle_timeout <= 86_400):
        raise ConfigError(f"MLLP_IDLE_TIMEOUT={idle!r} is not 0 or a number of seconds from 1 "
                          "to 86400; example: MLLP_IDLE_TIMEOUT=300")
    tls = _tls(raw, by_env, listen is not None, mllp_host is not None)
    _host_port(by_env["PAGER_ADDRESS"], raw["PAGER_ADDRESS"])
    ports = {}
    for name in ("METRICS_PORT", "CONSOLE_PORT"):
        port = raw[name]
        if not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{name}={port!r} is not a port number 0–65535; "
                              f"example: {name}={by_env[name].example}")
        ports[name] = int(port)
    refresh = raw["CONSOLE_REFRESH"]
    if not refresh.isdigit() or int(refresh) > 3600:
        raise ConfigError(f"CONSOLE_REFRESH={refresh!r} is not a number of seconds from 0 to "
                          "3600; example: CONSOLE_REFRESH=60 (0: no automatic reload)")
    if raw["LOG_PATIENT_IDS"] == "hashed" and len(raw["LOG_PATIENT_KEY"]) < 16:
        raise ConfigError("LOG_PATIENT_KEY is not set or shorter than 16 characters: "
                          "LOG_PATIENT_IDS=hashed needs a secret key; example: "
                          "LOG_PATIENT_KEY=$(openssl rand -hex 32)")
    if ports["CONSOLE_PORT"] and not raw["CONSOLE_TOKEN"]:
        raise ConfigError("CONSOLE_TOKEN is not set: the console shows patient data and needs "
                          "a token; example: CONSOLE_TOKEN=s3cret-token (or CONSOLE_PORT=0)")
    return Config(
        mllp_host=mllp_host,
        mllp_port=mllp_port,
        mllp_listen=listen,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        tls=tls,
        pager_address=raw["PAGER_ADDRESS"],
        history_path=raw["HISTORY_PATH"],
        state_dir=raw["STATE_DIR"],
        state_url=raw["STATE_URL"] or None,
        lease_seconds=_seconds(by_env["LEASE_SECONDS"], raw["LEASE_SECONDS"]),
        metrics_port=ports["METRICS_PORT"],
        detector=_choice(by_env["DETECTOR"], raw["DETECTOR"], ("model", "nhs")),
        model_path=raw["MODEL_PATH"] or None,
        model_on_shift=shift_model(raw["MODEL_ON_SHIFT"]),
        durability=_choice(by_env["DURABILITY"], raw["DURABILITY"], ("process", "machine")),
        environment=raw["AKI_ENVIRONMENT"] or raw["MLLP_ADDRESS"] or raw["MLLP_LISTEN"],
        on_history_change=_choice(by_env["ON_HISTORY_CHANGE"], raw["ON_HISTORY_CHANGE"],
                                  ("auto", "refuse", "merge", "rebuild")),
        feed_profile=_profile(raw["FEED_PROFILE"]),
        labels_path=raw["LABELS_PATH"] or None,
        console_port=ports["CONSOLE_PORT"],
        console_host=raw["CONSOLE_HOST"],
        console_token=raw["CONSOLE_TOKEN"] or None,
        console_refresh=int(refresh),
        log_format=_choice(by_env["LOG_FORMAT"], raw["LOG_FORMAT"], ("text", "json")),
        log_level=_choice(by_env["LOG_LEVEL"], raw["LOG_LEVEL"].upper(),
                          ("DEBUG", "INFO", "WARNING", "ERROR")),
        nack_policy=_choice(by_env["NACK_POLICY"], raw["NACK_POLICY"], NACK_POLICIES),
        feed_profile_path=raw["FEED_PROFILE"],
        log_patient_ids=_choice(by_env["LOG_PATIENT_IDS"], raw["LOG_PATIENT_IDS"],
                                PATIENT_ID_MODES),
        log_patient_key=raw["LOG_PATIENT_KEY"],
    )
