"""Command line: verbs, logging set-up, exit codes. The only module that exits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, TextIO

from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from s3pull import __version__
from s3pull.config import Config, default_config_path, load_config
from s3pull.errors import ConfigError

__all__ = ["main"]

log = logging.getLogger("s3pull")

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONFIG: Final = 78  # EX_CONFIG from sysexits.h; the unit's RestartPreventExitStatus


def setup_logging(verbose: bool = False, stream: TextIO = sys.stderr) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler | None = None
    if os.environ.get("JOURNAL_STREAM"):
        # Under systemd: structured records to journald when systemd-python is there;
        # journald adds timestamps either way, so the plain format leaves them out.
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="s3pull")
        except ImportError:
            handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore and aiobotocore are chatty at INFO about credentials and retries.
    for noisy in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3pull",
        description="Keep local directories in step with S3 prefixes, driven by SQS.",
    )
    parser.add_argument("--version", action="version", version=f"s3pull {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration file (default: $S3PULL_CONFIG, then /etc/s3pull/s3pull.toml)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    verbs.add_parser("run", parents=[common], help="the daemon: apply queued changes until stopped")
    sync = verbs.add_parser("sync", parents=[common], help="one full reconcile of every mirror")
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    verbs.add_parser("check", parents=[common], help="validate the configuration")
    demo = verbs.add_parser("demo", help="the whole pipeline on an embedded AWS emulator")
    demo.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    try:
        if args.verb == "demo":
            from s3pull.demo import run_demo

            return run_demo(keep=args.keep)
        config_path: Path = args.config or default_config_path()
        config = load_config(config_path)
        if args.verb == "check":
            return check(config)
        if args.verb == "sync":
            return asyncio.run(sync(config, dry_run=args.dry_run))
        if args.verb == "run":
            return run(config)
    except ConfigError as exc:
        print(f"s3pull: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except NoRegionError:
        print(
            f"s3pull: configuration error: {config_path}: aws.region: not set, and neither"
            " AWS_REGION nor AWS_DEFAULT_REGION is",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    except (BotoCoreError, ClientError, OSError) as exc:
        print(f"s3pull: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    raise AssertionError(f"unhandled verb {args.verb}")


def run(config: Config) -> int:
    from s3pull.daemon import Daemon

    if config.queue.url is None:
        raise ConfigError(
            str(config.path),
            "queue.topic_arn",
            "provisioning a per-server queue is not available in this version;"
            " set queue.url to an existing queue",
        )
    return asyncio.run(Daemon(config).run(config.queue.url))


def check(config: Config) -> int:
    print(f"configuration OK: {config.path}")
    for mirror in config.mirrors:
        deletes = "" if mirror.delete else " (deletions not mirrored)"
        print(
            f"  mirror {mirror.name}: s3://{mirror.bucket}/{mirror.prefix} -> "
            f"{mirror.directory}{deletes}"
        )
    for trigger in config.triggers:
        print(f"  trigger {trigger.name}: s3://{trigger.bucket}/{trigger.prefix}*/{trigger.marker}")
    print(f"  queue: {config.queue.url or config.queue.topic_arn}")
    return EXIT_OK


async def sync(config: Config, dry_run: bool) -> int:
    from s3pull.aws import open_clients
    from s3pull.ledger import Ledger
    from s3pull.mirror import Mirror
    from s3pull.progress import TerminalProgress
    from s3pull.reconcile import plan_all, reconcile_all

    ledger = Ledger.open(config.agent.state_directory)
    try:
        async with open_clients(config) as clients:
            mirrors = [Mirror(m, clients.s3, ledger) for m in config.mirrors]
            plans = await plan_all(mirrors)
            if dry_run:
                for mirror, plan in plans:
                    for obj, _parts in plan.downloads:
                        print(f"{mirror.name}: download {obj.key} ({obj.size} bytes)")
                    for key, _parts in plan.deletions:
                        print(f"{mirror.name}: delete {key}")
                    for refusal in plan.refused:
                        print(f"{mirror.name}: refuse {refusal.key!r}: {refusal.reason}")
                    print(
                        f"{mirror.name}: {len(plan.downloads)} to download"
                        f" ({plan.download_bytes} bytes), {len(plan.deletions)} to delete,"
                        f" {plan.up_to_date} up to date"
                    )
                return EXIT_OK
            progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
            report = await reconcile_all(mirrors, config.agent.concurrency, progress, plans)
    finally:
        ledger.close()
    return EXIT_FAILURE if report.failed else EXIT_OK
