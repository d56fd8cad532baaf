"""What an operator runs when paged: ``status`` and the ``dlq`` tools."""

from __future__ import annotations

import json
import time
from typing import Any, Final

from s3pull.aws import open_clients
from s3pull.config import Config
from s3pull.errors import UnparseableBody
from s3pull.events import parse_body
from s3pull.logsafe import escape_controls, escape_strings
from s3pull.status import problems, process_alive, queue_depths, read_snapshot, verdict

__all__ = ["dlq_list_command", "dlq_redrive_command", "status_command"]

LABEL_WIDTH: Final = 13  # `s3pull status`'s label column, wider for a long name
PEEK_VISIBILITY: Final = 30  # seconds a listed dead letter is hidden before it shows again


def _ago(then: float | None) -> str:
    if not then:
        return "never"
    seconds = max(0.0, time.time() - then)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _due(then: float | None) -> str:
    if not then:
        return 'never (reconcile_interval = "0")'
    seconds = then - time.time()
    if seconds <= 0:
        return "due now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"in {seconds / size:.0f} {unit}"
    return f"in {seconds:.0f} s"


async def status_command(config: Config, queue_url: str | None, as_json: bool) -> int:
    snapshot = read_snapshot(config.agent.state_directory)
    alive = bool(
        snapshot
        and snapshot.get("phase") != "stopped"
        and process_alive(int(snapshot.get("pid", 0)))
        and time.time() - float(snapshot.get("updated_at", 0)) < 30
    )
    urls = list(snapshot.get("queue_urls", [])) if snapshot else []
    if not urls and queue_url:
        urls = [queue_url]
    queues: list[dict[str, Any]] = []
    async with open_clients(config, "sqs") as clients:
        for url in urls:
            try:
                queues.append(await queue_depths(clients.sqs, url))
            except Exception as exc:  # report it; status must work when AWS does not
                queues.append({"url": url, "error": str(exc)})
    word = verdict(snapshot, alive, queues)
    wrong = problems(snapshot if alive else None, queues)
    if as_json:
        report = {
            "verdict": word,
            "alive": alive,
            "problems": wrong,
            "daemon": snapshot,
            "queues": queues,
        }
        print(json.dumps(report, indent=1))
    else:
        _print_status(word, alive, snapshot, queues, wrong)
    return 0 if word == "IN SYNC" else 1


def _print_status(
    word: str,
    alive: bool,
    snapshot: dict[str, Any] | None,
    queues: list[dict[str, Any]],
    wrong: list[str],
) -> None:
    # Keys, reasons and errors come from events and S3: one line each, escaped.
    snapshot, queues = escape_strings(snapshot), escape_strings(queues)
    wrong = escape_strings(wrong)
    print(f"s3pull: {word}")
    rows = _status_rows(alive, snapshot, queues, wrong)
    # One column for every label, however long a mirror's or trigger's name: the text
    # of each row starts at the same place.
    width = max([LABEL_WIDTH, *(len(label) for label, _text in rows)])
    for label, text in rows:
        print(f"  {label:<{width}} {text}")


def _status_rows(
    alive: bool,
    snapshot: dict[str, Any] | None,
    queues: list[dict[str, Any]],
    wrong: list[str],
) -> list[tuple[str, str]]:
    """``s3pull status`` as (label, text) rows."""
    rows = [("problem", problem) for problem in wrong]
    if snapshot is None:
        rows.append(("daemon", "has never run with this state directory"))
    else:
        state = "running" if alive else "not running"
        rows.append(
            (
                "daemon",
                f"{state} (pid {snapshot.get('pid')}, started"
                f" {_ago(snapshot.get('started_at'))}, phase: {snapshot.get('phase')},"
                f" {snapshot.get('in_flight', 0)} message(s) in flight)",
            )
        )
    for queue in queues:
        name = str(queue["url"]).rsplit("/", 1)[-1]
        if "error" in queue:
            rows.append(("queue", f"{name}: cannot ask SQS: {queue['error']}"))
            continue
        dead = queue["dead_lettered"]
        dead_text = "no dead-letter queue" if dead is None else f"{dead} dead-lettered"
        hint = "  (see: s3pull dlq list)" if dead else ""
        rows.append(
            (
                "queue",
                f"{name}: {queue['visible']} waiting, {queue['in_flight']}"
                f" in flight, {dead_text}{hint}",
            )
        )
    if snapshot is None:
        return rows
    lag = snapshot.get("lag_seconds")
    if lag is not None:
        rows.append(("lag", f"{lag:.1f} s from send to applied (last message)"))
    counters = snapshot.get("counters", {})
    rows.append(
        (
            "changes",
            f"{counters.get('applied', 0)} applied, {counters.get('refused', 0)} refused,"
            f" {counters.get('errors', 0)} errors; last {_ago(snapshot.get('last_change_at'))}",
        )
    )
    reconcile = snapshot.get("last_reconcile")
    if reconcile:
        rows.append(
            (
                "reconcile",
                f"{_ago(reconcile['at'])}: {reconcile['downloaded']} downloaded,"
                f" {reconcile['deleted']} deleted, {reconcile['failed']} failed"
                f" ({reconcile['seconds']:.1f} s)",
            )
        )
    for mirror, schedule in sorted(snapshot.get("reconciles", {}).items()):
        rows.append(
            (
                "reconcile",
                f"{mirror}: last {_ago(schedule.get('last_at'))},"
                f" next {_due(schedule.get('next_at'))}",
            )
        )
    for where, changes in sorted(snapshot.get("last_changes", {}).items()):
        last = changes[-1]
        # A trigger's batch files are kept under "trigger:<name>": say it in words.
        label = f"trigger {where[8:]}" if where.startswith("trigger:") else where
        rows.append(
            (
                label,
                f"last: {last['outcome']} {last['key']} ({last['bytes']} bytes) {_ago(last['at'])}",
            )
        )
    for mirror, archived in snapshot.get("archived", {}).items():
        # Not a problem: the configuration says what to do with them (archived = ...).
        rows.append(
            (
                "archived",
                f"{mirror}: {archived['skipped']} skipped,"
                f" {archived['restoring']} restoring (GLACIER/DEEP_ARCHIVE, not restored),"
                f" e.g. '{archived['examples'][0]}'",
            )
        )
    for mirror, hook in sorted(snapshot.get("on_change", {}).items()):
        print(
            f"  on_change     {mirror}: last run {hook['result']} ({hook['paths']} path(s))"
            f" {_ago(hook['at'])}; {counters.get('on_change_failures', 0)} of"
            f" {counters.get('on_change_runs', 0)} run(s) failed in all"
        )
    for mirror, cap in sorted(snapshot.get("bandwidth", {}).items()):
        print(
            f"  bandwidth     {mirror}: capped at {cap['limit_bytes_per_second']} bytes/s,"
            f" {cap['bytes']} bytes so far, {cap['waited_seconds']:.1f} s spent waiting"
        )
    for run in snapshot.get("trigger_runs", [])[-5:]:
        rows.append(
            (
                "trigger",
                f"{run['trigger']} {run['batch']} {run['result']}"
                f" {_ago(run['at'])} ({run['seconds']:.1f} s)",
            )
        )
    for result in snapshot.get("trigger_results", [])[-5:]:
        if result["written"]:
            print(f"  result        {result['result']} -> {result['url']} {_ago(result['at'])}")
        else:
            print(
                f"  result        NOT WRITTEN to {result['url']}: {result['error']}"
                f" ({_ago(result['at'])})"
            )
    for refusal in snapshot.get("refused", [])[-5:]:
        rows.append(
            (
                "refused",
                f"{refusal['where']}: '{refusal['key']}': {refusal['reason']}"
                f" ({_ago(refusal['at'])})",
            )
        )
    for error in snapshot.get("errors", [])[-5:]:
        rows.append(("error", f"{error['message']} ({_ago(error['at'])})"))
    return rows


def _summary(body: str) -> str:
    """What a dead letter is about, in one line."""
    try:
        notification = parse_body(body)
    except UnparseableBody as exc:
        return f"unparseable: {exc}"
    if notification.test_event:
        return "s3:TestEvent"
    parts = [f"{c.event_name} s3://{c.bucket}/{c.key}" for c in notification.changes]
    return "; ".join(parts) or "no records"


async def _dead_letter_url(sqs: Any, queue_url: str) -> str:
    depths = await queue_depths(sqs, queue_url)
    if depths["dead_letter_url"] is None:
        raise SystemExit(f"s3pull: {queue_url} has no dead-letter queue (no RedrivePolicy)")
    return str(depths["dead_letter_url"])


async def _receive(sqs: Any, url: str, visibility: int) -> list[dict[str, Any]]:
    response = await sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=1,
        VisibilityTimeout=visibility,
        MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
    )
    return list(response.get("Messages", ()))


async def dlq_list_command(config: Config, queue_url: str, most: int, as_json: bool) -> int:
    """Show dead letters without removing them (each is hidden briefly while read)."""
    async with open_clients(config, "sqs") as clients:
        dead_url = await _dead_letter_url(clients.sqs, queue_url)
        seen: dict[str, dict[str, Any]] = {}
        while len(seen) < most:
            batch = await _receive(clients.sqs, dead_url, PEEK_VISIBILITY)
            fresh = [m for m in batch if m["MessageId"] not in seen]
            if not fresh:
                break
            for message in fresh:
                seen[message["MessageId"]] = message
        # Hand them back at once: listing must not delay a redrive.
        for message in seen.values():
            await clients.sqs.change_message_visibility(
                QueueUrl=dead_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
    rows = [
        {
            "message_id": m["MessageId"],
            "sent": time.strftime(
                "%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(m["Attributes"]["SentTimestamp"]) / 1000)
            ),
            "receives": int(m["Attributes"].get("ApproximateReceiveCount", 0)),
            "summary": _summary(m.get("Body", "")),
            "body": m.get("Body", ""),
        }
        for m in list(seen.values())[:most]
    ]
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{len(rows)} dead-lettered message(s) in {dead_url.rsplit('/', 1)[-1]}")
        for row in rows:
            print(f"  {row['message_id']}  {row['sent']}  {escape_controls(row['summary'])}")
    return 0


async def dlq_redrive_command(config: Config, queue_url: str, most: int) -> int:
    """Move dead letters back to their queue (send a copy, then delete the dead letter)."""
    moved = 0
    async with open_clients(config, "sqs") as clients:
        sqs = clients.sqs
        dead_url = await _dead_letter_url(sqs, queue_url)
        while moved < most:
            batch = (await _receive(sqs, dead_url, PEEK_VISIBILITY))[: most - moved]
            if not batch:
                break
            for message in batch:
                # Sent first, deleted second: a crash in between duplicates a message,
                # which the agent handles; the reverse order could lose one.
                await sqs.send_message(QueueUrl=queue_url, MessageBody=message["Body"])
                await sqs.delete_message(QueueUrl=dead_url, ReceiptHandle=message["ReceiptHandle"])
                moved += 1
    print(
        f"moved {moved} message(s) from {dead_url.rsplit('/', 1)[-1]} back to"
        f" {queue_url.rsplit('/', 1)[-1]}"
    )
    return 0
