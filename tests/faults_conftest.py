"""Helpers shared by the fault, crash, ordering and hostile-input suites.

Plain functions and classes (no fixtures: each suite declares the two or three it needs,
so pytest's fixture lookup stays in ``conftest.py`` and the test module itself).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import stat
import threading
import uuid
from pathlib import Path
from typing import Any

from conftest import render_config
from s3pull.emulator import Pipeline, client
from s3pull.paths import TEMP_PREFIX

__all__ = [
    "NotifySocket",
    "dead_letters",
    "digest",
    "local_tree",
    "quiet_bucket",
    "s3_tree",
    "snapshot",
    "temp_files",
    "through",
    "write_config",
]


def through(pipeline: Pipeline, proxy_url: str) -> Pipeline:
    """The same pipeline as the agent sees it: every request via the proxy."""
    return dataclasses.replace(pipeline, endpoint=proxy_url)


def write_config(
    path: Path,
    pipeline: Pipeline,
    state: Path,
    mirrors: list[dict[str, Any]],
    triggers: list[dict[str, Any]] | None = None,
    queue: dict[str, Any] | None = None,
) -> Path:
    path.write_text(render_config(pipeline, state, mirrors, triggers, queue))
    return path


def quiet_bucket(s3: Any) -> str:
    """A bucket without notifications: only the events a test forges reach the queue."""
    name = f"quiet-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def s3_tree(s3: Any, bucket: str, prefix: str) -> dict[str, str]:
    """``relative key -> sha256`` of every object under ``prefix`` (folder keys skipped)."""
    tree: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            if item["Key"].endswith("/"):
                continue
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            tree[item["Key"][len(prefix) :]] = digest(body)
    return tree


def local_tree(root: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every regular file below ``root`` (temp files too)."""
    tree: dict[str, str] = {}
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                tree[str(path.relative_to(root))] = digest(path.read_bytes())
    return tree


def temp_files(root: Path) -> list[Path]:
    """Every ``.s3pull-tmp-*`` file below ``root``."""
    return [
        Path(directory, name)
        for directory, _dirs, names in os.walk(root)
        for name in names
        if name.startswith(TEMP_PREFIX)
    ]


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Everything below ``root`` (symlinks not followed): kind and content or target.

    Two equal snapshots mean nothing was created, removed, rewritten or re-pointed.
    """
    seen: dict[str, tuple[str, str]] = {}
    for directory, dirs, names in os.walk(root, followlinks=False):
        for name in [*dirs, *names]:
            path = Path(directory, name)
            mode = path.lstat().st_mode
            relative = str(path.relative_to(root))
            if stat.S_ISLNK(mode):
                seen[relative] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(mode):
                seen[relative] = ("dir", oct(stat.S_IMODE(mode)))
            elif stat.S_ISREG(mode):
                seen[relative] = ("file", digest(path.read_bytes()))
            else:
                seen[relative] = ("other", oct(mode))
    return seen


def dead_letters(endpoint: str, url: str) -> list[str]:
    """Take every message from a dead-letter queue; return their bodies."""
    sqs = client(endpoint, "sqs")
    bodies: list[str] = []
    for _ in range(100):  # bounded: 1000 messages at most
        response = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = response.get("Messages", ())
        if not messages:
            break
        for message in messages:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


class NotifySocket:
    """A stand-in for systemd's notification socket: collects the agent's datagrams.

    Read continuously by a thread, as systemd does: a datagram socket nobody reads fills
    after ``net.unix.max_dgram_qlen`` (10) messages.
    """

    def __init__(self) -> None:
        self.address = f"@s3pull-test-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind("\0" + self.address[1:])
        self._sock.settimeout(0.1)
        self._received: list[str] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                self._received.append(self._sock.recv(65536).decode(errors="replace"))
            except TimeoutError:
                continue
            except OSError:
                return

    def statuses(self) -> list[str]:
        """Every STATUS= value received so far, oldest first."""
        return [
            line[len("STATUS=") :]
            for message in list(self._received)
            for line in message.split("\n")
            if line.startswith("STATUS=")
        ]

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=5)
        self._sock.close()
