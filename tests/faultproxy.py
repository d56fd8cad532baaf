"""A fault-injecting HTTP proxy for tests: it sits on loopback between the agent and the
moto server and, per route, answers with errors, cuts bodies off, adds latency, throttles
or swallows requests.

The agent is pointed at ``proxy.url`` (``endpoint_url`` in its config); the test itself
keeps talking to moto directly, so only the agent's traffic sees the faults.

Routes: botocore 1.43 speaks the JSON protocol to SQS (``POST /`` with
``X-Amz-Target: AmazonSQS.<Operation>``), REST-XML to S3 (path-style
``/<bucket>/<key>``), and signs every request with a SigV4 credential scope naming the
service. The service is read from that scope (the target header as a fallback), the
operation from the target header (SQS) or the method and path (S3).

Rules are tried in the order they were added; the first active one that matches decides
what happens to a request. A rule is active until it has been applied ``times`` times,
``seconds`` have passed since it was added, or ``end()`` is called. Actions:

``pass``      forward, after ``delay`` seconds, the body throttled to ``rate`` bytes/s
``error``     answer ``status`` with an AWS-shaped error body (S3 XML, SQS JSON)
``reset``     forward the headers and ``fraction`` of the body, then reset the connection
``blackhole`` read the request and never answer (until the client gives up)
``refuse``    read the request and reset the connection without a word
``forbid-missing`` forward, but answer a 404 with ``403 AccessDenied``: what S3 says for a
              missing key to a role without ``s3:ListBucket`` on its prefix (S3 API
              reference, GetObject and HeadObject, "Permissions"). moto enforces no IAM.
``ignore-range`` forward without the Range header: a store or proxy that ignores ranges
              answers 200 with the whole object.
``rewrite``   forward, replacing ``old`` with ``new`` in the response body: what moto leaves
              out of an answer AWS gives (its GetBucketNotificationConfiguration never
              shows the EventBridgeConfiguration it stored and acts on).

``key_prefix`` matches an object's key, or the ``prefix`` of a ListObjectsV2 request: a
403 rule on a listing stands for ``s3:ListBucket`` granted only outside that prefix.
``ranged`` tells the parts of a large object (GETs with a Range header) from plain GETs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FaultProxy", "Request", "Rule"]

Action = Literal[
    "pass", "error", "reset", "blackhole", "refuse", "forbid-missing", "rewrite", "ignore-range"
]

HEAD_LIMIT = 1 << 20  # request/response heads (and chunk-size lines) longer than this: bug
PIECE = 64 * 1024  # body forwarding granularity (throttling and cuts work at this size)
JOURNAL_LENGTH = 10_000
HOLD_MAX = 180.0  # a blackholed connection is dropped after this long at the latest
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([a-z0-9-]+)/aws4_request")
_ACCESS_KEY = re.compile(r"Credential=([^/]+)/")

_REASONS = {
    403: "Forbidden",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Request:
    """What the proxy knows about one request."""

    service: str  # "s3", "sqs", "sns"... or "" when unsigned and unrecognised
    operation: str  # "GetObject", "ReceiveMessage"...
    method: str
    path: str
    key: str | None  # S3 object key (decoded), a listing's prefix, None for the rest
    ranged: bool = False  # sent with a Range header (a part of a large object)


@dataclass(eq=False)
class Rule:
    action: Action
    service: str | None = None  # None: any service
    operation: str | None = None  # None: any operation of the service
    key_prefix: str | None = None  # S3 only: the object key starts with this
    ranged: bool | None = None  # only requests with (True) or without (False) a Range header
    times: int | None = None  # applied at most this many times
    seconds: float | None = None  # active this long from when it was added
    delay: float = 0.0  # seconds before anything is sent (any action)
    rate: float | None = None  # bytes per second for forwarded bodies (pass)
    fraction: float = 0.5  # share of the body sent before a reset
    status: int = 503
    code: str = "SlowDown"
    old: bytes = b""  # rewrite: this in the response body ...
    new: bytes = b""  # ... becomes this
    hits: int = field(default=0, init=False)
    _until: float | None = field(default=None, init=False, repr=False)
    _ended: bool = field(default=False, init=False, repr=False)

    def end(self) -> None:
        self._ended = True

    def active(self, now: float) -> bool:
        return (
            not self._ended
            and (self.times is None or self.hits < self.times)
            and (self._until is None or now < self._until)
        )

    def matches(self, request: Request) -> bool:
        return (
            (self.service is None or self.service == request.service)
            and (self.operation is None or self.operation == request.operation)
            and (
                self.key_prefix is None
                or (request.key is not None and request.key.startswith(self.key_prefix))
            )
            and (self.ranged is None or self.ranged == request.ranged)
        )


def classify(method: str, target: str, headers: dict[str, str]) -> Request:
    """Name the service and operation of one request (see the module docstring)."""
    scope = _SCOPE.search(headers.get("authorization", ""))
    amz_target = headers.get("x-amz-target", "")
    service = scope.group(1) if scope else ""
    if not service and amz_target.startswith("AmazonSQS."):
        service = "sqs"
    split = urlsplit(target)
    path = split.path
    if service == "sqs" or amz_target.startswith("AmazonSQS."):
        return Request(service, amz_target.partition(".")[2] or method, method, path, None)
    if service == "s3":
        bucket, _, key = path.lstrip("/").partition("/")
        query = split.query
        if key:
            operation = {
                "GET": "GetObject",
                "HEAD": "HeadObject",
                "PUT": "PutObject",
                "DELETE": "DeleteObject",
            }.get(method, f"{method}Object")
            return Request(service, operation, method, path, unquote(key), "range" in headers)
        if method == "GET" and "list-type=2" in query:
            prefix = parse_qs(query).get("prefix", [""])[0]
            return Request(service, "ListObjectsV2", method, path, prefix)
        return Request(service, f"{method}Bucket" if bucket else method, method, path, None)
    return Request(service, method, method, path, None)


class _Head:
    """A parsed HTTP head: first line and headers, in order, names as sent."""

    def __init__(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        self.first = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers.append((name.strip(), value.strip()))

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def lowered(self) -> dict[str, str]:
        return {key.lower(): value for key, value in self.headers}

    def render(self, drop: tuple[str, ...] = (), add: tuple[tuple[str, str], ...] = ()) -> bytes:
        kept = [(k, v) for k, v in self.headers if k.lower() not in drop]
        lines = [self.first, *(f"{k}: {v}" for k, v in (*kept, *add)), "", ""]
        return "\r\n".join(lines).encode("latin-1")


async def _read_chunked(reader: asyncio.StreamReader) -> list[bytes]:
    """Read a chunked body, returning its raw framing (forwarded as is)."""
    pieces: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        pieces.append(size_line)
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer = await reader.readuntil(b"\r\n")
                pieces.append(trailer)
                if trailer == b"\r\n":
                    return pieces
        pieces.append(await reader.readexactly(size + 2))


def _error_response(request: Request, status: int, code: str) -> bytes:
    request_id = uuid.uuid4().hex
    if request.service == "sqs":
        body = (
            f'{{"__type": "com.amazonaws.sqs#{code}", "message": "injected by faultproxy"}}'
        ).encode()
        content_type = "application/x-amz-json-1.0"
        fault = "Sender" if status < 500 else "Receiver"
        extra = f"x-amzn-RequestId: {request_id}\r\nx-amzn-query-error: {code};{fault}\r\n"
    else:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>injected by faultproxy</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        ).encode()
        content_type = "application/xml"
        extra = f"x-amz-request-id: {request_id}\r\n"
    if request.method == "HEAD":
        body = b""
    reason = _REASONS.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN: what a dropped connection looks like."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """The proxy, on its own event loop in a daemon thread; use as a context manager."""

    def __init__(self, upstream: str) -> None:
        split = urlsplit(upstream)
        assert split.hostname is not None and split.port is not None
        self._upstream = (split.hostname, split.port)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._counts: Counter[tuple[str, str, str | None]] = Counter()
        self.faults: Counter[str] = Counter()  # action -> times applied (pass excluded)
        self.access_keys: Counter[str] = Counter()  # access key id -> requests signed with it
        # (service, operation, User-Agent) -> requests: which client sent them
        self.user_agents: Counter[tuple[str, str, str]] = Counter()
        # (monotonic time, service, operation, action) of the latest requests, for figures
        # and for finding out what happened when a test fails.
        self.journal: deque[tuple[float, str, str, str]] = deque(maxlen=JOURNAL_LENGTH)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.url = ""

    # -- the test's side (any thread) ----------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        port = started.result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            if rule.seconds is not None:
                rule._until = time.monotonic() + rule.seconds
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            for rule in self._rules:
                rule.end()
            self._rules.clear()

    def seen(
        self, service: str | None = None, operation: str | None = None, key: str | None = None
    ) -> int:
        """How many requests reached the proxy, filtered by service, operation and key."""
        with self._lock:
            return sum(
                count
                for (svc, op, k), count in self._counts.items()
                if (service is None or svc == service)
                and (operation is None or op == operation)
                and (key is None or k == key)
            )

    # -- the proxy's side (its own loop) -------------------------------------------

    async def _start(self) -> int:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, limit=HEAD_LIMIT, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Shutting down: end quietly (streams' connection callback would report a
            # cancelled handler as an error).
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    def _decide(self, request: Request) -> Rule | None:
        now = time.monotonic()
        with self._lock:
            self._counts[(request.service, request.operation, request.key)] += 1
            for rule in self._rules:
                if rule.active(now) and rule.matches(request):
                    rule.hits += 1
                    if rule.action != "pass":
                        self.faults[rule.action] += 1
                    self.journal.append((now, request.service, request.operation, rule.action))
                    return rule
            self.journal.append((now, request.service, request.operation, "pass"))
        return None

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request on a client connection; False when the connection is done."""
        try:
            raw_head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed an idle keep-alive connection
        head = _Head(raw_head)
        method, target, _version = head.first.split(" ", 2)
        if (head.get("expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        body: list[bytes] = []
        length = head.get("content-length")
        if length is not None:
            body.append(await reader.readexactly(int(length)))
        elif "chunked" in (head.get("transfer-encoding") or "").lower():
            body.extend(await _read_chunked(reader))
        request = classify(method, target, head.lowered())
        signed_by = _ACCESS_KEY.search(head.lowered().get("authorization", ""))
        with self._lock:
            if signed_by:
                self.access_keys[signed_by.group(1)] += 1
            agent = head.lowered().get("user-agent", "")
            self.user_agents[(request.service, request.operation, agent)] += 1
        rule = self._decide(request)

        if rule is not None and rule.delay:
            await asyncio.sleep(rule.delay)
        action = rule.action if rule is not None else "pass"
        if action == "error":
            assert rule is not None
            writer.write(_error_response(request, rule.status, rule.code))
            await writer.drain()
            return True
        if action == "refuse":
            _reset(writer)
            return False
        if action == "blackhole":
            # Never answer. The client times out and closes (read returns b""), or the
            # hold ends at HOLD_MAX; either way nothing was sent.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(1), HOLD_MAX)
            _reset(writer)
            return False

        upstream_reader, upstream_writer = await asyncio.open_connection(
            *self._upstream, limit=HEAD_LIMIT
        )
        try:
            upstream_writer.write(
                head.render(
                    drop=(
                        "connection",
                        "keep-alive",
                        "expect",
                        *(("range",) if action == "ignore-range" else ()),
                    ),
                    add=(("Connection", "close"),),
                )
                + b"".join(body)
            )
            await upstream_writer.drain()
            return await self._relay_response(
                upstream_reader, writer, request, rule, cut=action == "reset"
            )
        finally:
            upstream_writer.close()

    async def _relay_response(
        self,
        upstream: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: Request,
        rule: Rule | None,
        cut: bool,
    ) -> bool:
        method = request.method
        response = _Head(await upstream.readuntil(b"\r\n\r\n"))
        status = int(response.first.split(" ", 2)[1])
        length_header = response.get("content-length")
        chunked = "chunked" in (response.get("transfer-encoding") or "").lower()
        if status == 404 and rule is not None and rule.action == "forbid-missing":
            # The upstream closes after this response: its body need not be read.
            writer.write(_error_response(request, 403, "AccessDenied"))
            await writer.drain()
            return True
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        # The upstream closes after each response (we asked); the client connection
        # stays open only when the body's end can be told without a close.
        keep = no_body or length_header is not None or chunked
        if rule is not None and rule.action == "rewrite" and not no_body:
            # moto answers with a length; a chunked body is not rewritten here.
            assert not chunked, "rewrite: chunked responses are not supported"
            payload = (await upstream.read()).replace(rule.old, rule.new)
            writer.write(
                response.render(
                    drop=("content-length",), add=(("Content-Length", str(len(payload))),)
                )
                + payload
            )
            await writer.drain()
            return True
        writer.write(response.render(add=() if keep else (("Connection", "close"),)))
        if no_body:
            await writer.drain()
            return keep

        if chunked:
            pieces = await _read_chunked(upstream)
            payload = b"".join(pieces)
        elif length_header is not None:
            payload = await upstream.readexactly(int(length_header))
        else:
            payload = await upstream.read()

        limit = len(payload)
        if cut:
            assert rule is not None
            limit = int(len(payload) * rule.fraction)
        rate = rule.rate if rule is not None else None
        sent = 0
        started = time.monotonic()
        while sent < limit:
            piece = payload[sent : min(sent + PIECE, limit)]
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        if cut:
            await writer.drain()
            # Let the client read what was sent before the reset discards it.
            await asyncio.sleep(0.05)
            _reset(writer)
            return False
        await writer.drain()
        return keep
