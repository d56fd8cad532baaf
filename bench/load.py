"""Raw HTTP load on the bench's S3/SQS endpoint: what the server itself can serve.

Every tool is reported as a fraction of a ceiling, and a ceiling is only honest if the
client that measures it costs next to nothing. So this client is plain ``http.client``
over keep-alive connections, a few threads in a process of its own, and every request is
signed once, before the clock starts (moto routes on the signature's credential scope
and does not verify it; s3rver does verify it, and a SigV4 signature stays valid for 15
minutes, far longer than a run).

It also serves as the fast uploader of the throughput case and the filler for s3rver.

    python -m bench.load get --endpoint URL --bucket B --prefix P --count N --connections C
    python -m bench.load put --endpoint URL --bucket B --prefix P --count N --size BYTES
    python -m bench.load sqs --endpoint URL --queue-url URL --seconds S

Prints one JSON object: requests, errors, seconds, rate, started, finished.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlsplit

__all__ = ["LoadResult", "run_load"]

REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    rate: float
    started: float
    finished: float


def _signed(
    method: str,
    url: str,
    service: str,
    credentials: tuple[str, str],
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Request:
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    signer = S3SigV4Auth if service == "s3" else SigV4Auth
    signer(Credentials(*credentials), service, REGION).add_auth(request)
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return Request(method, path, dict(request.headers.items()), body or None)


def _connect(endpoint: str) -> http.client.HTTPConnection:
    parts = urlsplit(endpoint)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)


def _send(connection: http.client.HTTPConnection, request: Request) -> tuple[int, bytes]:
    connection.request(request.method, request.path, body=request.body, headers=request.headers)
    response = connection.getresponse()
    return response.status, response.read()


def _threads(count: int, work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def timed_gets(
    endpoint: str, requests: Sequence[Request], connections: int, seconds: float, warmup: float
) -> LoadResult:
    """GET round-robin for ``warmup + seconds``; count what completes after the warmup."""
    started = time.time() + warmup
    finished = started + seconds
    counts = [0] * connections
    errors = [0] * connections

    def work(index: int) -> None:
        connection = _connect(endpoint)
        position = index
        while True:
            now = time.time()
            if now >= finished:
                break
            try:
                status, _body = _send(connection, requests[position % len(requests)])
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                connection.close()
                connection = _connect(endpoint)
                continue
            position += connections
            if started <= time.time() < finished:
                if status == 200:
                    counts[index] += 1
                else:
                    errors[index] += 1
        connection.close()

    _threads(connections, work)
    total = sum(counts)
    return LoadResult(total, sum(errors), seconds, total / seconds, started, finished)


def each_once(endpoint: str, requests: Sequence[Request], connections: int) -> LoadResult:
    """Send every request once, ``connections`` at a time (uploads, fills)."""
    lock = threading.Lock()
    pending = list(reversed(requests))
    errors = [0]
    started = time.time()

    def work(_index: int) -> None:
        connection = _connect(endpoint)
        while True:
            with lock:
                if not pending:
                    break
                request = pending.pop()
            for _attempt in range(3):
                try:
                    status, _body = _send(connection, request)
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connection = _connect(endpoint)
                    continue
                if status >= 300:
                    with lock:
                        errors[0] += 1
                break
        connection.close()

    _threads(connections, work)
    finished = time.time()
    seconds = max(finished - started, 1e-9)
    return LoadResult(len(requests), errors[0], seconds, len(requests) / seconds, started, finished)


def _sqs(
    connection: http.client.HTTPConnection,
    endpoint: str,
    credentials: tuple[str, str],
    action: str,
    body: dict[str, Any],
) -> Any:
    """One SQS call in the JSON protocol."""
    data = json.dumps(body).encode()
    headers = {"X-Amz-Target": f"AmazonSQS.{action}", "Content-Type": "application/x-amz-json-1.0"}
    status, reply = _send(
        connection, _signed("POST", endpoint + "/", "sqs", credentials, data, headers)
    )
    if status != 200:
        raise RuntimeError(f"{action}: HTTP {status}: {reply[:200]!r}")
    return json.loads(reply)


def drain_queue(
    endpoint: str, queue_url: str, credentials: tuple[str, str], seconds: float
) -> LoadResult:
    """ReceiveMessage (10) + DeleteMessageBatch pairs until the queue is empty or time is up.

    SQS's JSON protocol; one signature serves every call since moto does not verify it.
    """

    def call(connection: http.client.HTTPConnection, action: str, body: dict[str, Any]) -> Any:
        return _sqs(connection, endpoint, credentials, action, body)

    connection = _connect(endpoint)
    started = time.time()
    pairs = messages = 0
    while time.time() < started + seconds:
        received = call(
            connection,
            "ReceiveMessage",
            {"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "VisibilityTimeout": 300},
        ).get("Messages", [])
        if not received:
            break
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received)
        ]
        call(connection, "DeleteMessageBatch", {"QueueUrl": queue_url, "Entries": entries})
        pairs += 1
        messages += len(received)
    finished = time.time()
    connection.close()
    # The rate is in messages: one receive and one delete serve up to ten of them.
    return LoadResult(
        pairs * 2, 0, finished - started, messages / (finished - started), started, finished
    )


def pipeline(
    endpoint: str,
    queue_url: str,
    puts: Sequence[Request],
    gets: dict[str, Request],
    connections: int,
    consumers: int,
    credentials: tuple[str, str],
    timeout: float,
) -> LoadResult:
    """The notification path with a client that costs nothing: PUT every object over
    ``connections`` connections while ``consumers`` threads receive, GET and delete.
    Measures from the first PUT to the last GET, as the throughput case does for the agent.

    The consumers keep the queue shallow, and that matters: moto's ReceiveMessage and
    SendMessage look at every queued message, so their cost grows with the queue's depth.
    """
    done: set[str] = set()
    lock = threading.Lock()
    deadline = time.time() + timeout
    last = [0.0]

    def consume(_index: int) -> None:
        connection = _connect(endpoint)
        while time.time() < deadline:
            with lock:
                if len(done) >= len(gets):
                    break
            received = _sqs(
                connection,
                endpoint,
                credentials,
                "ReceiveMessage",
                {"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1},
            ).get("Messages", [])
            for message in received:
                for key in _keys_in(message["Body"]):
                    if key in gets:
                        _send(connection, gets[key])
                        with lock:
                            done.add(key)
                            last[0] = time.time()
            if received:
                entries = [
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(received)
                ]
                _sqs(
                    connection,
                    endpoint,
                    credentials,
                    "DeleteMessageBatch",
                    {"QueueUrl": queue_url, "Entries": entries},
                )
        connection.close()

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(consumers)]
    for thread in threads:
        thread.start()
    uploaded = each_once(endpoint, puts, connections)
    for thread in threads:
        thread.join()
    seconds = max(last[0] - uploaded.started, 1e-9)
    missing = len(gets) - len(done)
    return LoadResult(len(done), missing, seconds, len(done) / seconds, uploaded.started, last[0])


def _keys_in(body: str) -> list[str]:
    document = json.loads(body)
    return [unquote_plus(r["s3"]["object"]["key"]) for r in document.get("Records", ())]


def _object_url(endpoint: str, bucket: str, key: str) -> str:
    return f"{endpoint}/{bucket}/{key}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("mode", choices=("get", "put", "sqs", "pipeline"))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", default="")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--queue-url", default="")
    parser.add_argument("--access-key", default="testing")
    parser.add_argument("--secret-key", default="testing")
    args = parser.parse_args(argv)
    credentials = (args.access_key, args.secret_key)
    keys = [f"{args.prefix}{index:06d}" for index in range(args.first, args.first + args.count)]
    if args.mode == "pipeline":
        puts = [
            _signed(
                "PUT",
                _object_url(args.endpoint, args.bucket, k),
                "s3",
                credentials,
                os.urandom(args.size),
            )
            for k in keys
        ]
        by_key = {
            k: _signed("GET", _object_url(args.endpoint, args.bucket, k), "s3", credentials)
            for k in keys
        }
        result = pipeline(
            args.endpoint,
            args.queue_url,
            puts,
            by_key,
            args.connections,
            args.consumers,
            credentials,
            args.seconds,
        )
    elif args.mode == "get":
        gets = [
            _signed("GET", _object_url(args.endpoint, args.bucket, key), "s3", credentials)
            for key in keys
        ]
        result = timed_gets(args.endpoint, gets, args.connections, args.seconds, args.warmup)
    elif args.mode == "put":
        puts = [
            _signed(
                "PUT",
                _object_url(args.endpoint, args.bucket, key),
                "s3",
                credentials,
                os.urandom(args.size),
            )
            for key in keys
        ]
        result = each_once(args.endpoint, puts, args.connections)
    else:
        result = drain_queue(args.endpoint, args.queue_url, credentials, args.seconds)
    print(json.dumps(_as_dict(result)))


def _as_dict(result: LoadResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in LoadResult.__slots__}


def run_load(mode: str, *arguments: str, env: dict[str, str] | None = None) -> LoadResult:
    """Run the load generator in a child process (its own GIL) and return its result."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    completed = subprocess.run(
        [sys.executable, "-m", "bench.load", mode, *arguments],
        cwd=repo,  # where ``bench`` is importable from
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench.load {mode} failed: {completed.stderr.strip()[-2000:]}")
    return LoadResult(**json.loads(completed.stdout))


if __name__ == "__main__":
    main()
