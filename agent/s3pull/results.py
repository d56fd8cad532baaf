"""Trigger results: each run's outcome as JSON and its output as a capped ``.log``, in S3.

With ``[[trigger]] results = "s3://bucket/prefix/"`` every run that got as far as reading
its marker (succeeded, exited non-zero, timed out, or failed before the command could
start and will be retried) leaves ``<prefix><batch prefix><instance-id>.json`` and the
output beside it as ``.log``: what the older pattern got from SSM's command output in S3.
A retry overwrites both; ``attempt`` says which receive of the message wrote them.

Writing is best effort by design: a result that cannot be written is logged and counted,
and never fails or repeats the run it describes.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

__all__ = [
    "LOG_CAP_BYTES",
    "TAIL_LINES",
    "Output",
    "Result",
    "ResultObserver",
    "Results",
    "RunResult",
]

log = logging.getLogger(__name__)

# The .log keeps the first LOG_CAP_BYTES of the output (a batch command that loops on an
# error must not upload gigabytes); the JSON always keeps the last TAIL_LINES lines,
# which is where a failure usually says why.
LOG_CAP_BYTES: Final = 1 << 20
TAIL_LINES: Final = 20
TAIL_LINE_CHARS: Final = 1000

Result = Literal["succeeded", "failed", "timed out"]


class Output:
    """A command's output as it arrives: the capped log, and the last lines whole."""

    def __init__(self, cap: int = LOG_CAP_BYTES) -> None:
        self._cap = cap
        self._log = bytearray()
        self.total_bytes = 0
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def line(self, stream: str, text: str) -> None:
        """One line of ``stream`` ("stdout" or "stderr"), in the order lines came."""
        entry = f"[{stream}] {text}\n".encode()
        self.total_bytes += len(entry)
        room = self._cap - len(self._log)
        if room > 0:
            self._log += entry[:room]
        self.tail.append(f"[{stream}] {text[:TAIL_LINE_CHARS]}")

    @property
    def truncated(self) -> bool:
        return self.total_bytes > len(self._log)

    def log_bytes(self) -> bytes:
        if not self.truncated:
            return bytes(self._log)
        note = (
            f"\n[s3pull] output cut at {self._cap} bytes: {self.total_bytes - len(self._log)}"
            " more bytes not kept (see the agent's log for all of it)\n"
        )
        return bytes(self._log) + note.encode()


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run of a trigger's command (or one failed attempt at it) came to."""

    trigger: str
    bucket: str
    batch: str  # the batch prefix, ending in "/"
    marker_key: str
    marker_etag: str
    marker_version_id: str | None
    instance: str
    attempt: int  # the message's receive count: 1 the first time, then each retry
    started: str  # ISO 8601 UTC
    ended: str
    seconds: float
    result: Result
    exit_status: int | None  # None: timed out, or the command never started
    timed_out: bool
    error: str | None  # why the attempt failed, when it did
    files: int
    bytes: int
    output_tail: list[str]
    output_bytes: int  # all the output, though the .log keeps at most log_cap_bytes
    log_truncated: bool
    log_cap_bytes: int = LOG_CAP_BYTES


def utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


class ResultObserver(Protocol):
    """Told where each result went, or why it could not be written (status, metrics)."""

    def result_written(self, trigger: str, batch: str, result: str, url: str) -> None: ...

    def result_failed(self, trigger: str, batch: str, url: str, exc: BaseException) -> None: ...


class Results:
    """Writes one trigger's results under ``s3://bucket/folder``."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        folder: str,
        instance: str,
        observer: ResultObserver | None = None,
    ) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.folder = folder
        self.instance = instance
        self._observer = observer

    def key(self, batch: str, suffix: str) -> str:
        return f"{self.folder}{batch}{self.instance}{suffix}"

    async def write(self, result: RunResult, output: Output) -> bool:
        """Upload the .log, then the .json that names it; False (logged, counted) when
        either fails. Never raises: the run it describes is over either way."""
        json_key, log_key = self.key(result.batch, ".json"), self.key(result.batch, ".log")
        url = f"s3://{self.bucket}/{json_key}"
        record = {**asdict(result), "log": f"s3://{self.bucket}/{log_key}"}
        try:
            # The log first: a reader who finds the JSON finds the log it names.
            await self._s3.put_object(
                Bucket=self.bucket,
                Key=log_key,
                Body=output.log_bytes(),
                ContentType="text/plain; charset=utf-8",
            )
            await self._s3.put_object(
                Bucket=self.bucket,
                Key=json_key,
                Body=json.dumps(record, indent=1).encode(),
                ContentType="application/json",
            )
        except Exception as exc:  # whatever it was, the run stands
            log.error(
                "%s %s: could not write the run's result to %s (the run stands): %s: %s",
                result.trigger,
                result.batch,
                url,
                type(exc).__name__,
                exc,
            )
            if self._observer is not None:
                self._observer.result_failed(result.trigger, result.batch, url, exc)
            return False
        log.info(
            "%s %s: result (%s) written to %s", result.trigger, result.batch, result.result, url
        )
        if self._observer is not None:
            self._observer.result_written(result.trigger, result.batch, result.result, url)
        return True
