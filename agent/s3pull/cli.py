"""Command line: verbs, logging set-up, exit codes. The only module that exits."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import sys
from collections.abc import Coroutine, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeVar, cast

from s3pull.errors import ConfigError, StateDirectoryBusy
from s3pull.heap import pause_collection
from s3pull.logsafe import EscapingFormatter, escape_controls

# Each verb imports what it uses, after the arguments are parsed: `--help`, a usage error
# and the verbs that never talk to AWS do not pay for botocore, aiohttp and the rest
# (bench/README.md, "What the profiler says about the agent").
if TYPE_CHECKING:
    from s3pull.config import Config
    from s3pull.identity import Identity
    from s3pull.progress import TerminalProgress

__all__ = ["main"]

log = logging.getLogger("s3pull")

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONFIG: Final = 78  # EX_CONFIG from sysexits.h; the unit's RestartPreventExitStatus


_T = TypeVar("_T")


def _run(work: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run``, importing asyncio (40 ms with ssl) only for a verb that runs."""
    import asyncio

    return asyncio.run(work)


class _Shown(logging.Filter):
    """What is written: with ``quiet``, errors and summary lines only; without
    ``details``, no line about one file below WARNING (a bar counts them instead)."""

    def __init__(self, quiet: bool, details: bool) -> None:
        super().__init__()
        self._quiet = quiet
        self._details = details

    def filter(self, record: logging.LogRecord) -> bool:
        if self._quiet:
            return record.levelno >= logging.ERROR or hasattr(record, "S3PULL_SUMMARY")
        return (
            self._details or record.levelno >= logging.WARNING or not hasattr(record, "S3PULL_KEY")
        )


def setup_logging(
    verbose: bool = False,
    stream: TextIO = sys.stderr,
    *,
    quiet: bool = False,
    bar: TerminalProgress | None = None,
) -> None:
    """Log to journald under systemd, else to ``stream``. With a progress ``bar`` (sync on
    a terminal), lines go above it and per-file lines only at ``verbose``."""
    # Every line escapes control characters (logsafe): a key or a command's output must
    # not forge or rewrite a log line. journald's structured fields keep raw values.
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler | None = None
    if os.environ.get("JOURNAL_STREAM"):
        # Under systemd: structured records to journald over its native socket (no
        # compiled binding needed, so the packages have the fields too); journald adds
        # timestamps either way, so the plain format leaves them out.
        from s3pull.journal import JOURNAL_SOCKET, JournalHandler

        if os.path.exists(JOURNAL_SOCKET):
            handler = JournalHandler("s3pull", JOURNAL_SOCKET, stream)
        else:
            handler = logging.StreamHandler(stream)
        handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    else:
        if bar is not None:
            from s3pull.progress import AboveTheBar

            handler = AboveTheBar(stream, bar)
        else:
            handler = logging.StreamHandler(stream)
        handler.setFormatter(
            EscapingFormatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        )
    handler.addFilter(_Shown(quiet, details=verbose or bar is None))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore and aiobotocore are chatty at INFO about credentials and retries.
    for noisy in ("botocore", "aiobotocore", "urllib3", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Version(argparse.Action):
    """argparse's ``version`` action, asking for the version only when ``--version`` is
    given: finding it costs an ``importlib.metadata`` scan every other run would pay."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from s3pull import __version__

        print(f"s3pull {__version__}")  # on stdout, as argparse's own action does
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from s3pull.helptext import README, VERBS, description, epilog

    parser = argparse.ArgumentParser(
        prog="s3pull",
        description="Keep local directories in step with S3 prefixes, driven by SQS.",
        epilog="`s3pull COMMAND --help` tells more of each, with its exit codes.\n"
        f"more: README.md ({README}); man s3pull",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="show program's version number and exit")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration file (default: $S3PULL_CONFIG, then /etc/s3pull/s3pull.toml)",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging; on a terminal, every file"
    )

    def verb(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        words: str = "",
        options: bool = True,
    ) -> argparse.ArgumentParser:
        # Every verb's help from one table (helptext.VERBS): its line, its paragraph,
        # its exit codes, where to read more.
        words = words or name
        return group.add_parser(
            name,
            parents=[common] if options and VERBS[words].configured else [],
            help=VERBS[words].summary,
            description=description(words),
            epilog=epilog(words),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    run = verb(verbs, "run")
    sync = verb(verbs, "sync")
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    for chatty in (run, sync):
        chatty.add_argument(
            "-q", "--quiet", action="store_true", help="log errors and the final summary only"
        )
    sync.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="confirm deletions that max_delete (or an empty listing) holds back",
    )
    check = verb(verbs, "check")
    check.add_argument(
        "--probe",
        action="store_true",
        help="also publish a synthetic event to the topic and wait for it",
    )
    status = verb(verbs, "status")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    # --config after the action (`dlq list --config X`): given to both, the action's
    # default would override the one given before it.
    dlq = verb(verbs, "dlq", options=False)
    dlq_verbs = dlq.add_subparsers(dest="dlq_verb", required=True, metavar="ACTION")
    for action in ("list", "redrive"):
        sub = verb(dlq_verbs, action, f"dlq {action}")
        sub.add_argument("--max", type=int, default=100, help="at most this many (default 100)")
        sub.add_argument("--queue-url", help="the source queue (default: this server's queue)")
        if action == "list":
            sub.add_argument("--json", action="store_true", help="machine-readable output")
    verb(verbs, "provision")
    verb(verbs, "deprovision")
    gc = verb(verbs, "gc")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed")
    gc.add_argument(
        "--stale-after",
        type=float,
        default=96.0,
        metavar="HOURS",
        help="a heartbeat older than this marks a queue as abandoned (default 96,"
        " the queue's message retention)",
    )
    fleet = verb(verbs, "fleet", options=False)
    fleet_verbs = fleet.add_subparsers(dest="fleet_verb", required=True, metavar="ACTION")
    fleet_status = verb(fleet_verbs, "status", "fleet status")
    fleet_status.add_argument("--json", action="store_true", help="machine-readable output")
    wait = verb(fleet_verbs, "wait", "fleet wait")
    since = wait.add_mutually_exclusive_group()
    since.add_argument("--since", metavar="TIME", help="ISO 8601 time (default: now)")
    since.add_argument("--key", help="KEY or s3://BUCKET/KEY: its current version")
    wait.add_argument("--timeout", type=float, default=300.0, metavar="S", help="default 300")
    demo = verb(verbs, "demo")
    mode = demo.add_mutually_exclusive_group()
    mode.add_argument(
        "--serve",
        action="store_true",
        help="keep an emulator running with a working configuration for your own tries,"
        " print the commands to run next, stop at Ctrl-C or SIGTERM",
    )
    mode.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's files afterwards (its configuration goes with the emulator)",
    )
    return parser


class _ReaderMayLeave(io.TextIOBase):
    """Standard output for a reader that may leave early (``s3pull status | head -1``):
    once the pipe is closed, what follows goes to /dev/null and the verb still finishes,
    so its exit status says what it found, not that the reader left."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_left()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_left()

    def _reader_left(self) -> None:
        # Whatever is still buffered goes to /dev/null too: no second error when the
        # interpreter flushes the stream at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True


def main(argv: Sequence[str] | None = None) -> int:
    stdout = sys.stdout
    sys.stdout = cast(TextIO, _ReaderMayLeave(stdout))
    try:
        return _verb(argv)
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


def _verb(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    if verbose and quiet:
        parser.error("--verbose and --quiet: choose one")
    bar: TerminalProgress | None = None
    if args.verb == "sync" and not args.dry_run and not quiet and sys.stderr.isatty():
        from s3pull.progress import TerminalProgress

        bar = TerminalProgress(sys.stderr)
    setup_logging(verbose, quiet=quiet, bar=bar)
    if args.verb not in ("demo", "run"):
        # Until the verb's AWS clients exist (aws.open_clients resumes it): heap.py. Not
        # for the agent, which starts once and then idles: paused, its start-up leaves
        # 0.5 MB more behind (measured), and its start-up time is no one's wait.
        pause_collection()
    from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

    from s3pull.config import default_config_path, load_config

    try:
        if args.verb == "demo":
            if args.serve:
                from s3pull.playground import serve_demo

                return serve_demo()
            from s3pull.demo import run_demo

            return run_demo(keep=args.keep)
        config_path: Path = args.config or default_config_path()
        configured = load_config(config_path)
        # Every verb but the demo talks to AWS: find the region before anything says OK.
        config = _run(with_region(configured))
        if args.verb == "check":
            return _run(check(config, probe=args.probe))
        if args.verb in ("provision", "deprovision"):
            from s3pull.fleet import deprovision_command, provision_command, require_topic

            require_topic(config, args.verb)
            identity = _run(identify(config))
            verb = provision_command if args.verb == "provision" else deprovision_command
            return _run(verb(config, identity))
        if args.verb in ("status", "dlq"):
            from s3pull import operate

            url = getattr(args, "queue_url", None) or _run(own_queue_url(config))
            if args.verb == "status":
                with naming_state_directory(config):
                    status = operate.status_command(config, url, as_json=args.json)
                    return _run(status)
            if url is None:
                raise ConfigError(str(config.path), "queue", "this server's queue does not exist")
            if args.dlq_verb == "list":
                return _run(operate.dlq_list_command(config, url, args.max, args.json))
            return _run(operate.dlq_redrive_command(config, url, args.max))
        if args.verb == "gc":
            from s3pull.fleet import gc_command, require_topic

            require_topic(config, "gc")
            region = config.aws.region or config.queue.topic_region
            stale = timedelta(hours=args.stale_after)
            return _run(gc_command(config, region, stale, dry_run=args.dry_run))
        if args.verb == "fleet":
            return fleet(config, args)
        if args.verb == "sync":
            return _run(
                sync(
                    config,
                    dry_run=args.dry_run,
                    progress=bar,
                    allow_mass_delete=args.allow_mass_delete,
                )
            )
        if args.verb == "run":
            return run(config, configured)
    except ConfigError as exc:
        print(f"s3pull: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StateDirectoryBusy as exc:
        hint = (
            "it keeps the mirrors in sync itself, and a restart makes it reconcile them all;"
            " `s3pull sync --dry-run` shows what differs"
            if args.verb == "sync"
            else "one agent per state directory"
        )
        if args.verb == "sync" and args.allow_mass_delete:
            hint = (
                "stop it first (systemctl stop s3pull), run `s3pull sync --allow-mass-delete`,"
                " then start it again"
            )
        print(f"s3pull: {exc}: {hint}", file=sys.stderr)
        return EXIT_FAILURE
    except NoRegionError:  # with_region should have caught it; say the same
        print(f"s3pull: configuration error: {_no_region(config_path)}", file=sys.stderr)
        return EXIT_CONFIG
    except (BotoCoreError, ClientError, OSError) as exc:
        print(f"s3pull: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    raise AssertionError(f"unhandled verb {args.verb}")


def fleet(config: Config, args: argparse.Namespace) -> int:
    from s3pull import fleetview

    if args.fleet_verb == "status":
        return _run(fleetview.fleet_status_command(config, as_json=args.json))
    try:
        since = fleetview.parse_since(args.since) if args.since else None
    except ValueError:
        print(f"s3pull: --since {args.since!r}: not an ISO 8601 time", file=sys.stderr)
        return EXIT_USAGE
    return _run(fleetview.fleet_wait_command(config, since, args.key, args.timeout))


def run(config: Config, configured: Config) -> int:
    """The daemon on ``config`` (the region resolved); ``configured`` is the file as
    written, from which instance metadata is asked for what it leaves out."""
    from s3pull.daemon import Daemon
    from s3pull.identity import Identity

    # First of all: a second agent on this state directory would share its ledger and
    # overwrite its status. Released at the end, or by the kernel if we crash.
    with claim(config, "run"):
        # The instance id names a per-server queue and each trigger result.
        if config.queue.topic_arn or any(t.results for t in config.triggers):
            identity = _run(identify(configured))
        else:
            # The region rides on the identity: a reloaded file may leave it out again.
            identity = Identity(config.agent.instance_id, config.aws.region, from_metadata=False)
        return _run(Daemon(config, identity).run())


@contextlib.contextmanager
def naming_state_directory(config: Config) -> Iterator[None]:
    """The state directory itself unusable (a file in its place, no permission to create
    or write it): a configuration error naming ``agent.state_directory`` and its file.
    An errno alone names neither, and nothing can start without the directory."""
    directory = config.agent.state_directory
    try:
        yield
    except OSError as exc:
        where = Path(exc.filename) if isinstance(exc.filename, str) else None
        if where is not None and not (
            where.is_relative_to(directory) or directory.is_relative_to(where)
        ):
            raise  # about something else: not the directory's fault
        from s3pull.host import writable_problem

        # check's words where they tell more ("/x is not a directory", "not writable by
        # s3pull"); the errno's otherwise.
        problem = writable_problem(directory) or exc.strerror or str(exc)
        shown = f" ({where})" if where is not None and where != directory else ""
        raise ConfigError(
            str(config.path),
            "agent.state_directory",
            f"{directory} cannot be used: {problem}{shown}",
        ) from exc


@contextlib.contextmanager
def claim(config: Config, verb: str) -> Iterator[None]:
    """The state directory, held for this verb (see ``claim_state_directory``)."""
    from s3pull.status import claim_state_directory

    with contextlib.ExitStack() as held:
        with naming_state_directory(config):
            held.enter_context(claim_state_directory(config.agent.state_directory, verb))
        yield


def _no_region(path: Path, why: str = "") -> ConfigError:
    because = f" ({why})" if why else ""
    return ConfigError(
        str(path),
        "aws.region",
        'not set: add region = "eu-west-1" (your region) under [aws], or set AWS_REGION;'
        f" instance metadata, the last source, cannot tell{because}",
    )


async def with_region(config: Config) -> Config:
    """``config`` with its region filled in from the sources after the file (the
    environment, instance metadata); a configuration error naming ``[aws] region`` when
    none can tell."""
    if config.aws.region:
        return config
    from s3pull.identity import InstanceMetadata, MetadataUnavailable, resolve_region

    try:
        region = await resolve_region(config, InstanceMetadata())
    except MetadataUnavailable as exc:
        raise _no_region(config.path, str(exc)) from exc
    return dataclasses.replace(config, aws=dataclasses.replace(config.aws, region=region))


async def own_queue_url(config: Config) -> str | None:
    """This server's queue: the configured URL, or the provisioned one's (looked up)."""
    if config.queue.url is not None:
        return config.queue.url
    from botocore.exceptions import ClientError

    from s3pull.aws import open_clients

    identity = await identify(config)
    async with open_clients(config, "sqs", region=identity.region) as clients:
        name = config.queue.queue_name(identity.instance_id)
        try:
            response = await clients.sqs.get_queue_url(QueueName=name)
        except ClientError:
            return None
    return str(response["QueueUrl"])


async def identify(config: Config) -> Identity:
    """Instance id and region for a provisioned queue; a configuration error when
    neither the configuration nor instance metadata can tell."""
    from s3pull.identity import (
        Identity,
        InstanceMetadata,
        MetadataUnavailable,
        resolve_identity,
    )

    try:
        identity = await resolve_identity(config, InstanceMetadata())
    except MetadataUnavailable as exc:
        raise ConfigError(
            str(config.path),
            "agent.instance_id",
            f"not set, and instance metadata cannot supply it ({exc})",
        ) from exc
    if identity.region is None and config.queue.topic_arn:
        # Not on EC2 and no region configured: the topic's own region is the best guess.
        region = config.queue.topic_region
        identity = Identity(identity.instance_id, region, identity.from_metadata)
    return identity


async def check(config: Config, probe: bool) -> int:
    from s3pull.chain import walk_chain
    from s3pull.host import host_problems

    print(f"configuration OK: {config.path}")
    for mirror in config.mirrors:
        deletes = "" if mirror.delete else " (deletions not mirrored)"
        print(
            f"  mirror {mirror.name}: s3://{mirror.bucket}/{mirror.prefix} -> "
            f"{mirror.directory}{deletes}"
        )
    for trigger in config.triggers:
        print(f"  trigger {trigger.name}: s3://{trigger.bucket}/{trigger.prefix}*/{trigger.marker}")
    problems = host_problems(config)
    print("this server:")
    for problem in problems:
        print(f"  PROBLEM {problem}")
    if not problems:
        print("  ok      directories writable, trigger commands executable")
    identity = await identify(config) if config.queue.topic_arn else None
    chain = await walk_chain(config, identity, probe=probe)
    return 1 if problems else chain


async def sync(
    config: Config,
    dry_run: bool,
    progress: TerminalProgress | None = None,
    allow_mass_delete: bool = False,
) -> int:
    if dry_run:
        return await _sync(config, dry_run, None, allow_mass_delete)
    # A daemon on this state directory owns the mirrors: writing beside it would race
    # its per-key locks and ledger. Refused, naming it.
    with claim(config, "sync"):
        return await _sync(config, dry_run, progress, allow_mass_delete)


async def _sync(
    config: Config, dry_run: bool, progress: TerminalProgress | None, allow_mass_delete: bool
) -> int:
    from s3pull.aws import open_clients
    from s3pull.ledger import Ledger
    from s3pull.mirror import Mirror
    from s3pull.progress import human_bytes
    from s3pull.reconcile import plan_all, reconcile_all

    with naming_state_directory(config):
        ledger = Ledger.open(config.agent.state_directory)
    try:
        async with open_clients(config, "s3") as clients:
            mirrors = [Mirror(m, clients.s3, ledger) for m in config.mirrors]
            plans = await plan_all(mirrors, allow_mass_delete)
            if dry_run:
                for mirror, plan in plans:
                    for obj, _parts in plan.downloads:
                        # Sizes as the progress bar shows them: one way to read both.
                        print(
                            f"{mirror.name}: download {escape_controls(obj.key)}"
                            f" ({human_bytes(obj.size)})"
                        )
                    verb = "held back: delete" if plan.held_back else "delete"
                    for key, _parts in plan.deletions:
                        print(f"{mirror.name}: {verb} {escape_controls(key)}")
                    for refusal in plan.refused:
                        print(f"{mirror.name}: refuse {refusal.key!r}: {refusal.reason}")
                    for obj in plan.archived:
                        print(
                            f"{mirror.name}: skip {escape_controls(obj.key)}"
                            f" (archived: {obj.storage_class})"
                        )
                    print(
                        f"{mirror.name}: {len(plan.downloads)} to download"
                        f" ({human_bytes(plan.download_bytes)}), {len(plan.deletions)} to delete,"
                        f" {plan.up_to_date} up to date"
                        + (
                            f", {plan.excluded} left out by include/exclude"
                            if plan.excluded
                            else ""
                        )
                        + (
                            f", {len(plan.left_alone)} local file(s) they leave out left alone"
                            if plan.left_alone
                            else ""
                        )
                        + (f", {len(plan.archived)} archived" if plan.archived else "")
                    )
                    if plan.held_back:
                        print(
                            f"{mirror.name}: deletions held back: {plan.held_back}"
                            " (`s3pull sync --allow-mass-delete` confirms them)"
                        )
                return EXIT_OK
            report = await reconcile_all(mirrors, config.agent.concurrency, progress, plans)
    finally:
        ledger.close()
    # Deletions held back are work not done: a script running `sync` must hear of it.
    return EXIT_FAILURE if report.failed or report.held_back else EXIT_OK
