"""The words of ``s3pull <verb> --help``: one line, a paragraph where it helps, the exit
codes and where to read more. Written once here; ``cli`` builds the parser from it and
``tests/test_help.py`` holds the man page to the same parser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["VERBS", "VerbHelp", "description", "epilog"]

README: Final = "/usr/share/doc/s3pull/README.md"


@dataclass(frozen=True, slots=True)
class VerbHelp:
    summary: str  # one line: the verb list of `s3pull --help`, and the first of its own
    about: str  # a short paragraph, or ""
    exits: tuple[tuple[int, str], ...]  # what 0 and 1 mean for this verb
    section: str  # the README section that says more
    configured: bool = True  # reads the configuration: 78 applies


VERBS: Final[dict[str, VerbHelp]] = {
    "run": VerbHelp(
        "the daemon: apply queued changes until stopped",
        "Makes sure the queue exists (and, with a topic, is provisioned and subscribed),\n"
        "reconciles every mirror, then long-polls the queue and applies each change until\n"
        "SIGTERM or SIGINT. A transient AWS or network error is retried, never fatal.\n"
        "SIGHUP (or a change of the file) reloads the configuration.",
        (
            (0, "stopped by SIGTERM or SIGINT"),
            (1, "another agent runs on the state directory (named), or a fault"),
        ),
        "How it behaves",
    ),
    "sync": VerbHelp(
        "one full reconcile of every mirror",
        "Lists every mirror's prefix, downloads what differs and deletes what S3 no longer\n"
        "holds, with a progress bar on a terminal. Refused beside a running agent on the\n"
        "same state directory (it keeps the mirrors in sync itself).",
        (
            (0, "every mirror reconciled (or the plan printed)"),
            (1, "a file could not be written or deleted, or an agent holds the state directory"),
        ),
        "Commands",
    ),
    "check": VerbHelp(
        "validate the configuration, then walk bucket -> topic -> queue",
        "Checks this server (directories writable, trigger commands executable, the state\n"
        "directory usable), then walks bucket notification -> topic -> subscription ->\n"
        "queue policy -> queue -> redrive and names the first broken link. Changes nothing.",
        ((0, "every link holds"), (1, "a problem on this server or a broken link (named)")),
        "Verify: `check`, then `status`",
    ),
    "status": VerbHelp(
        "is it running, is it behind, what failed (exit 0 when in sync)",
        "Reads the running agent's status file and the queues' counters: one verdict\n"
        "(IN SYNC, BEHIND, BOOTSTRAPPING, BACKING OFF, FAILING, DEAD LETTERS, UNKNOWN,\n"
        "NOT RUNNING), then what is failing now, queue depths, lag and the last changes.",
        (
            (0, "IN SYNC: nothing failing, nothing waiting, no dead letters"),
            (1, "any other verdict (printed first, with what is wrong)"),
        ),
        "Troubleshooting: is it running, is it behind, what failed",
    ),
    "dlq": VerbHelp(
        "inspect and replay dead-lettered messages",
        "",
        ((0, "done"), (1, "SQS refused, or the queue has no dead-letter queue")),
        "Troubleshooting: is it running, is it behind, what failed",
    ),
    "dlq list": VerbHelp(
        "show dead letters without removing them",
        "Each message is hidden for a few seconds while it is read, then handed back.",
        ((0, "listed"), (1, "SQS refused, or the queue has no dead-letter queue")),
        "Troubleshooting: is it running, is it behind, what failed",
    ),
    "dlq redrive": VerbHelp(
        "move dead letters back to their queue",
        "Each message is sent to the source queue first, then deleted from the dead-letter\n"
        "queue: a crash in between duplicates one (harmless), never loses one.",
        ((0, "moved"), (1, "SQS refused, or the queue has no dead-letter queue")),
        "Troubleshooting: is it running, is it behind, what failed",
    ),
    "provision": VerbHelp(
        "create this server's queue and subscription; print the queue URL",
        "Idempotent: creates or repairs the queue, its dead-letter queue, the queue policy\n"
        "and the SNS subscription (raw delivery). Needs [queue] topic_arn. `run` does the\n"
        "same at start-up.",
        ((0, "provisioned; the URL printed"), (1, "AWS refused")),
        "Per-server queues",
    ),
    "deprovision": VerbHelp(
        "remove this server's subscription and queues",
        "Says for each part whether it was removed or already gone. Needs [queue] topic_arn.",
        ((0, "nothing of this server's is left"), (1, "AWS refused")),
        "Per-server queues",
    ),
    "gc": VerbHelp(
        "remove queues and subscriptions of servers that are gone",
        "A queue goes when EC2 no longer knows its instance or its heartbeat tag is older\n"
        "than --stale-after; a subscription goes when its queue is gone. Run it from one\n"
        "place for the fleet. Needs [queue] topic_arn.",
        ((0, "removed (or listed, with --dry-run)"), (1, "AWS refused")),
        "Per-server queues",
    ),
    "fleet": VerbHelp(
        "every server's agent, seen from one place",
        "",
        ((0, "every live server in sync"), (1, "a server is behind, stopped or failing")),
        "Fleet: every server from one place, and waiting for a rollout",
    ),
    "fleet status": VerbHelp(
        "one row per server: state, applied-through, backlog, last error",
        "Reads every s3pull queue under the [queue] name template's prefix: the state its\n"
        "agent published on the queue's tags and the queue's own counters. A server whose\n"
        "instance EC2 no longer knows is flagged gone. Any machine that may read the queues.",
        ((0, "every live server in sync"), (1, "a server is behind, stopped or failing")),
        "Fleet: every server from one place, and waiting for a rollout",
    ),
    "fleet wait": VerbHelp(
        "wait until every live server has applied a change",
        "Waits until every live server has applied everything up to --since (default: now),\n"
        "or the current version of --key, then exits 0; at --timeout it exits 1 naming each\n"
        "server that is behind and why (backlog, dead letters, stopped).",
        ((0, "every live server has it"), (1, "the timeout passed; the servers behind named")),
        "Fleet: every server from one place, and waiting for a rollout",
    ),
    "demo": VerbHelp(
        "the whole pipeline on an embedded AWS emulator",
        "Starts a moto server on loopback, a bucket, a topic and a queue, an agent with a\n"
        "mirror and a trigger, uploads samples and shows each step. --serve then leaves the\n"
        "emulator and a working configuration running for your own tries. Needs the demo\n"
        "extra (pip install 's3pull[demo]'; `make demo` installs it).",
        ((0, "every step worked"), (1, "a step failed (named), or the demo extra is missing")),
        "Try it: `make demo`",
        configured=False,
    ),
}

_COMMON_EXITS: Final = ((2, "usage error (a wrong option or verb)"),)
_CONFIG_EXIT: Final = (78, "configuration error: the message names the file, the key, the problem")


def description(verb: str) -> str:
    """The top of ``s3pull <verb> --help``."""
    text = VERBS[verb]
    first = text.summary[0].upper() + text.summary[1:] + "."
    return f"{first}\n\n{text.about}" if text.about else first


def epilog(verb: str) -> str:
    """The bottom of ``s3pull <verb> --help``: exit codes, and where to read more."""
    text = VERBS[verb]
    exits = [*text.exits, *_COMMON_EXITS, *((_CONFIG_EXIT,) if text.configured else ())]
    lines = ["exit status:", *(f"  {code:<3} {meaning}" for code, meaning in exits)]
    lines += [
        "",
        f'more: README.md, section "{text.section}"',
        f"      ({README} where s3pull is installed), and `man s3pull`",
    ]
    return "\n".join(lines)
