"""`aki-alert serve`: the service."""

from __future__ import annotations

import argparse
import sys

from . import config, logs
from .store.sqlite import StateError


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="connect to the hospital's MLLP feed and page on AKI",
        description="Connect to the hospital's MLLP feed, keep each patient's creatinine "
                    "history, judge every result and page the response team. Every setting is "
                    "an environment variable and a flag of the same meaning.",
    )
    config.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args)
    except config.ConfigError as e:
        print(f"aki-alert serve: {e}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_format, cfg.log_level)
    logs.set_patient_ids(cfg.log_patient_ids, cfg.log_patient_key)
    from .leader import LeadershipLost
    from .service import Interrupted, serve
    from .startup import StartupError

    try:
        serve(cfg)
    except (StartupError, StateError) as e:
        print(f"aki-alert serve: {e}", file=sys.stderr)
        return 1
    except LeadershipLost as e:
        print(f"aki-alert serve: {e}; exiting so that a restart stands by", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"aki-alert serve: stopped by {e} during start-up; nothing was lost",
              file=sys.stderr)
    return 0
