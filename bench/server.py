"""The bench's moto server, in a child process of its own.

Why a child process: moto is bound by the GIL, so sharing a process with the driver (which
times things and watches files) would slow both and blur who is the bottleneck. The child
reuses ``s3pull.emulator.moto_server()`` unchanged and adds four bench-only hooks:

- every request is counted by service and operation (werkzeug calls ``log_request`` once
  per request, when it answers), so request counts come from the server, not from what
  each tool says it did. SQS calls are also counted per queue, when they start: a stopped
  agent's long poll lives on in moto for up to 20 s and would otherwise land in the next
  case's counts;
- the moment each SQS message is enqueued is recorded: that is when it becomes visible,
  the start of "message visible -> file renamed";
- while asked to, the moment each request arrives (its headers read, before moto handles
  it) is recorded with its operation and User-Agent: the end of "exec -> first request"
  in the start-up case. ``time.time()``, because the driver's start stamp comes from
  another process and CLOCK_REALTIME is the clock both share;
- objects can be created inside moto directly: filling a bucket with 50,000 objects over
  HTTP would take minutes and measure nothing the bench reports. Every tool still lists
  and downloads them over HTTP.

The parent sends one JSON object per line on stdin and reads one JSON line back on stdout.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

__all__ = ["REPO", "MotoProcess", "classify"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def classify(method: str, path: str, headers: Mapping[str, str], status: int) -> str:
    """Name a request the way the AWS API does: ``s3:GetObject``, ``sqs:ReceiveMessage``."""
    target = headers.get("X-Amz-Target", "")
    if target.startswith("AmazonSQS."):
        return "sqs:" + target.removeprefix("AmazonSQS.")
    service = _service(headers.get("Authorization", ""))
    if service != "s3":
        return f"{service}:{method}"
    url = urlsplit(path)
    query = parse_qs(url.query, keep_blank_values=True)
    bucket, _, key = url.path.lstrip("/").partition("/")
    if not bucket:
        return "s3:ListBuckets"
    if not key:
        if method == "GET":
            return "s3:ListObjectsV2" if query.get("list-type") == ["2"] else "s3:ListObjects"
        return f"s3:{method} bucket"
    if method == "GET":
        if status == 304:
            return "s3:GetObject (304)"
        return "s3:GetObject (range)" if "Range" in headers else "s3:GetObject"
    if method == "PUT":
        if "partNumber" in query:
            return "s3:UploadPart"
        return "s3:CopyObject" if "x-amz-copy-source" in headers else "s3:PutObject"
    names = {"HEAD": "HeadObject", "DELETE": "DeleteObject", "POST": "MultipartUpload"}
    return "s3:" + names.get(method, method)


def _service(authorization: str) -> str:
    # "AWS4-HMAC-SHA256 Credential=KEY/20261130/us-east-1/s3/aws4_request, ..."
    try:
        return authorization.split(",")[0].split()[1].split("/")[3]
    except IndexError:
        return "unsigned"


class Recorder:
    """What the hooks collect. Handler threads write, the control loop reads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.sqs_by_queue: dict[str, Counter[str]] = {}
        self.record_visible = False
        # (time enqueued, queue name, S3 keys in the body)
        self.visible: list[tuple[float, str, list[str]]] = []
        # (time received, operation, User-Agent); None while not recording.
        self.arrivals: list[tuple[float, str, str]] | None = None


# Enough for "the first request" of any tool; a bound keeps a forgotten recording small.
MAX_ARRIVALS = 1000


RECORDER = Recorder()

# moto's SQS API handlers (one call per HTTP request, unlike the backend methods, which
# call each other and which SNS delivery calls too) and the operation each serves.
SQS_OPERATIONS = {
    "receive_message": "sqs:ReceiveMessage",
    "delete_message": "sqs:DeleteMessage",
    "delete_message_batch": "sqs:DeleteMessageBatch",
    "change_message_visibility": "sqs:ChangeMessageVisibility",
    "change_message_visibility_batch": "sqs:ChangeMessageVisibilityBatch",
    "get_queue_attributes": "sqs:GetQueueAttributes",
    "send_message": "sqs:SendMessage",
    "tag_queue": "sqs:TagQueue",  # the state agents publish (cases.publishing)
}


def _keys_in(body: str) -> list[str]:
    """The S3 keys a notification body names (raw delivery or SNS-wrapped)."""
    try:
        document = json.loads(body)
        if "Records" not in document and "Message" in document:
            document = json.loads(document["Message"])
        return [unquote_plus(r["s3"]["object"]["key"]) for r in document.get("Records", ())]
    except (ValueError, KeyError, TypeError):
        return []


def install_hooks() -> None:
    """Patch moto, in this process only: the bench's server is nobody else's."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from moto.sqs.models import Queue
    from moto.sqs.responses import SQSResponse

    def log_request(self: Any, code: int | str = "-", size: int | str = "-") -> None:
        status = int(code) if str(code).isdigit() else 0
        name = classify(self.command, self.path, self.headers, status)
        with RECORDER.lock:
            RECORDER.requests[name] += 1

    def counted(operation: str, original: Any) -> Any:
        def handler(self: Any) -> Any:
            queue = self._get_queue_name()
            with RECORDER.lock:
                RECORDER.sqs_by_queue.setdefault(queue, Counter())[operation] += 1
            return original(self)

        return handler

    for method, operation in SQS_OPERATIONS.items():
        setattr(SQSResponse, method, counted(operation, getattr(SQSResponse, method)))

    original_environ = MotoRequestHandler.make_environ

    def make_environ(self: Any) -> dict[str, Any]:
        # Called once per request, as soon as its request line and headers are read: the
        # moment the server has the request, before moto spends anything on it.
        if RECORDER.arrivals is not None:
            stamp = time.time()
            name = classify(self.command, self.path, self.headers, 0)
            agent = str(self.headers.get("User-Agent", ""))
            with RECORDER.lock:
                if RECORDER.arrivals is not None and len(RECORDER.arrivals) < MAX_ARRIVALS:
                    RECORDER.arrivals.append((stamp, name, agent))
        environ: dict[str, Any] = original_environ(self)
        return environ

    original_add = Queue.add_message

    def add_message(self: Any, message: Any) -> None:
        original_add(self, message)
        if RECORDER.record_visible:
            entry = (time.time(), str(self.name), _keys_in(message.body))
            with RECORDER.lock:
                RECORDER.visible.append(entry)

    setattr(MotoRequestHandler, "log_request", log_request)  # noqa: B010
    setattr(MotoRequestHandler, "make_environ", make_environ)  # noqa: B010
    setattr(Queue, "add_message", add_message)  # noqa: B010


def _memory() -> dict[str, float]:
    fields: dict[str, float] = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    return {"rss_mb": fields.get("VmRSS", 0.0), "peak_rss_mb": fields.get("VmHWM", 0.0)}


def _fill(bucket: str, prefix: str, count: int, size: int, first: int) -> dict[str, Any]:
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    started = time.perf_counter()
    for index in range(first, first + count):
        # Random bytes: identical bodies would give every object the same ETag.
        backend.put_object(
            bucket, f"{prefix}{index:06d}", os.urandom(size), disable_notification=True
        )
    return {"created": count, "seconds": time.perf_counter() - started}


def handle(command: dict[str, Any]) -> dict[str, Any]:
    op = command["op"]
    if op == "stats":
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with RECORDER.lock:
            requests = dict(RECORDER.requests)
            by_queue = {name: dict(counts) for name, counts in RECORDER.sqs_by_queue.items()}
        return {
            "requests": requests,
            "sqs_by_queue": by_queue,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            **_memory(),
        }
    if op == "reset_peak_rss":
        # Writing 5 to clear_refs resets VmHWM, so each case gets its own server peak.
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return _memory()
    if op == "fill":
        return _fill(
            command["bucket"],
            command["prefix"],
            command["count"],
            command["size"],
            command.get("first", 0),
        )
    if op == "record_visible":
        with RECORDER.lock:
            RECORDER.record_visible = bool(command["on"])
            RECORDER.visible.clear()
        return {}
    if op == "record_arrivals":
        with RECORDER.lock:
            RECORDER.arrivals = [] if command["on"] else None
        return {}
    if op == "arrivals":
        with RECORDER.lock:
            arrivals = list(RECORDER.arrivals or ())
        return {"arrivals": arrivals}
    if op == "visible":
        with RECORDER.lock:
            visible = list(RECORDER.visible)
        return {"visible": visible}
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    # The parent reads our stdout as the protocol: keep it for replies only.
    protocol = sys.stdout
    sys.stdout = sys.stderr
    install_hooks()
    from s3pull.emulator import moto_server

    with moto_server() as endpoint:
        protocol.write(json.dumps({"endpoint": endpoint}) + "\n")
        protocol.flush()
        for line in sys.stdin:
            try:
                reply = handle(json.loads(line))
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            protocol.write(json.dumps(reply) + "\n")
            protocol.flush()


class MotoProcess:
    """The parent's handle on the server child: start, ask, stop."""

    def __init__(self, log_path: str) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self._child = subprocess.Popen(
            [sys.executable, "-m", "bench.server"],
            cwd=REPO,  # where ``bench`` is importable from, whatever the caller's cwd
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lock = threading.Lock()
        self.endpoint: str = self._read()["endpoint"]
        self.pid = self._child.pid

    def _read(self) -> dict[str, Any]:
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError(f"the moto server exited with {self._child.wait()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"moto server: {reply['error']}")
        return reply

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        assert self._child.stdin is not None
        with self._lock:
            self._child.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
            self._child.stdin.flush()
            return self._read()

    def requests(self) -> Counter[str]:
        return Counter(self.call("stats")["requests"])

    def agent_requests(self, queue: str | None) -> Counter[str]:
        """S3 requests of every client, SQS requests on ``queue`` only (None: no SQS).

        For counting what one agent does while the driver (S3 only) and stopped agents'
        lingering long polls (other queues, or calls that started earlier) are around.
        """
        stats = self.call("stats")
        counts = Counter(
            {name: n for name, n in stats["requests"].items() if not name.startswith("sqs:")}
        )
        if queue is not None:
            counts.update(stats["sqs_by_queue"].get(queue, {}))
        return counts

    def fill(self, bucket: str, prefix: str, count: int, size: int, first: int = 0) -> None:
        self.call("fill", bucket=bucket, prefix=prefix, count=count, size=size, first=first)

    def stop(self) -> None:
        assert self._child.stdin is not None
        self._child.stdin.close()  # the control loop ends, and moto_server() with it
        try:
            self._child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        self._log.close()


if __name__ == "__main__":
    main()
