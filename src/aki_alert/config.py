"""Settings of `aki-alert serve`: each one an environment variable and a flag of the same meaning.

A missing or malformed setting stops the service at once with one line naming the setting and
an example of a good value.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from .hl7.profile import DEFAULT_PROFILE, FeedProfile, ProfileError, load_profile


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
    Setting("MLLP_ADDRESS", "--mllp-address", None, "hospital-sim:8440",
            "the hospital's MLLP endpoint, host:port (required)"),
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
    mllp_host: str
    mllp_port: int
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
    nack_policy: str = "accept"
    feed_profile_path: str = ""             # FEED_PROFILE as given ("": the default profile)
    log_patient_ids: str = "plain"
    log_patient_key: str = ""

    @property
    def mllp_address(self) -> str:
        return f"{self.mllp_host}:{self.mllp_port}"


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


def _profile(path: str) -> FeedProfile:
    if not path:
        return DEFAULT_PROFILE
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
        if value is None or (value == "" and s.default is None):
            raise ConfigError(f"{s.env} is not set: {s.help}; example: {s.env}={s.example} "
                              f"(or {s.flag} {s.example})")
        raw[s.env] = value.strip()
    mllp_host, mllp_port = _host_port(by_env["MLLP_ADDRESS"], raw["MLLP_ADDRESS"])
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
        pager_address=raw["PAGER_ADDRESS"],
        history_path=raw["HISTORY_PATH"],
        state_dir=raw["STATE_DIR"],
        state_url=raw["STATE_URL"] or None,
        lease_seconds=_seconds(by_env["LEASE_SECONDS"], raw["LEASE_SECONDS"]),
        metrics_port=ports["METRICS_PORT"],
        detector=_choice(by_env["DETECTOR"], raw["DETECTOR"], ("model", "nhs")),
        model_path=raw["MODEL_PATH"] or None,
        durability=_choice(by_env["DURABILITY"], raw["DURABILITY"], ("process", "machine")),
        environment=raw["AKI_ENVIRONMENT"] or raw["MLLP_ADDRESS"],
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
        nack_policy=_choice(by_env["NACK_POLICY"], raw["NACK_POLICY"], ("accept", "hl7")),
        feed_profile_path=raw["FEED_PROFILE"],
        log_patient_ids=_choice(by_env["LOG_PATIENT_IDS"], raw["LOG_PATIENT_IDS"],
                                ("plain", "hashed", "none")),
        log_patient_key=raw["LOG_PATIENT_KEY"],
    )
