"""`aki-alert` command line: one subcommand per verb.

Each command lives in the module that owns it and registers itself through `register(subparsers)`;
modules import their heavy dependencies inside the command, so `aki-alert serve` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "aki_alert.serve",          # serve
    "aki_alert.train",          # train, evaluate
    "aki_alert.hospital.cli",   # generate, simulate, score, demo
    "aki_alert.statecmd",       # state status|check|backup|restore|reset
    "aki_alert.replay",         # replay
    "aki_alert.feedcheck",      # feed check
    "aki_alert.console.process",  # console
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aki-alert",
        description="Real-time acute kidney injury alerting over HL7 v2 / MLLP.",
    )
    parser.add_argument("--version", action="version", version=f"aki-alert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
