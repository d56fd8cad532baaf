"""Structured log records to journald over its native protocol, without blocking.

https://systemd.io/JOURNAL_NATIVE_PROTOCOL/: one datagram per record to
``/run/systemd/journal/socket``, each field ``NAME=value\\n``, or, for a value holding a
newline, ``NAME\\n`` + its length (64-bit little-endian) + the bytes + ``\\n``. A record
too big for one datagram goes as a sealed memfd passed with SCM_RIGHTS.

Why not systemd-python (``systemd.journal``)? It is a C extension: the all/noarch
packages would have to carry it built for every CPython (3.11-3.13) and architecture, or
depend on the distribution's ``python3-systemd``, which is built for the distribution's
default Python only (Amazon Linux 2023's is 3.9; the agent runs on 3.11 or 3.12), so the
packaged agent had no fields at all. And ``sd_journal_send`` blocks while journald's
socket queue is full (a busy journal): the event loop, the watchdog pings and SIGTERM
handling would wait with it. Here the send never blocks: a record journald cannot take
right now is written to ``stream`` (stderr, which systemd also hands to journald) as a
plain line, so it is late and without fields but not lost. The same reasoning made
``notify.py`` speak sd_notify itself.
"""

from __future__ import annotations

import array
import errno
import fcntl
import io
import logging
import os
import re
import socket
import stat
import struct
import sys
from collections.abc import Mapping
from typing import Final, TextIO

__all__ = ["JOURNAL_SOCKET", "JournalHandler", "encode"]

JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"
# What journald accepts as a field name: upper-case letters, digits and "_", not starting
# with "_" (those are trusted fields journald sets itself), at most 64 characters.
_FIELD_NAME: Final = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")
_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
# syslog priorities (sd-journal's PRIORITY=) for logging's levels.
_PRIORITY: Final = {
    logging.CRITICAL: "2",
    logging.ERROR: "3",
    logging.WARNING: "4",
    logging.INFO: "6",
    logging.DEBUG: "7",
}


def encode(fields: Mapping[str, str]) -> bytes:
    """The native protocol's encoding of ``fields``; a name journald would reject is
    dropped rather than have journald drop the whole record."""
    out = bytearray()
    for name, value in fields.items():
        if not _FIELD_NAME.fullmatch(name):
            continue
        data = value.encode("utf-8", errors="surrogateescape")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def _socket_of(stream: TextIO) -> socket.socket | None:
    """A socket on a copy of ``stream``'s descriptor when it is a socket (journald's
    stream), else None (a terminal, a file, a StringIO)."""
    try:
        fd = stream.fileno()
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        return socket.socket(fileno=os.dup(fd))
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


def _priority(level: int) -> str:
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if level >= threshold:
            return _PRIORITY[threshold]
    return _PRIORITY[logging.DEBUG]


class JournalHandler(logging.Handler):
    """Sends each record with MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, LOGGER, CODE_* and
    every ``S3PULL_*`` attribute of the record (``logfields.journal_fields``) as fields."""

    def __init__(
        self,
        identifier: str = "s3pull",
        path: str = JOURNAL_SOCKET,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__()
        self._identifier = identifier
        self._path = path
        self._stream = stream if stream is not None else sys.stderr
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)
        # Under systemd the stream is journald's own stream socket: when journald is too
        # busy for a datagram it may be too busy for that too, and a blocking write there
        # would stop the event loop (watchdog pings, SIGTERM). Sent with MSG_DONTWAIT, a
        # record that does not fit is dropped and counted instead.
        self._stream_socket = _socket_of(self._stream)
        self.fell_back = 0  # records written to the stream instead (journald busy or gone)
        self.dropped = 0  # records neither journald nor the stream could take without waiting

    def close(self) -> None:
        self._socket.close()
        if self._stream_socket is not None:
            self._stream_socket.close()
        super().close()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            fields = {
                "MESSAGE": message,
                "PRIORITY": _priority(record.levelno),
                "SYSLOG_IDENTIFIER": self._identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
                **{k: str(v) for k, v in vars(record).items() if k.startswith("S3PULL_")},
            }
            if not self._send(encode(fields)):
                self._fall_back(message + "\n")
        except Exception:
            self.handleError(record)

    def _fall_back(self, line: str) -> None:
        if self._stream_socket is None:
            self.fell_back += 1
            self._stream.write(line)
            self._stream.flush()
            return
        data = line.encode("utf-8", "backslashreplace")
        try:
            sent = self._stream_socket.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            self.fell_back += 1
        else:
            self.dropped += 1

    def _send(self, data: bytes) -> bool:
        """True once journald has the record; False when it cannot take it now."""
        try:
            self._socket.sendto(data, self._path)
            return True
        except (BlockingIOError, FileNotFoundError, ConnectionRefusedError):
            return False  # journald's queue is full, or journald is not there
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                return False
        return self._send_large(data)

    def _send_large(self, data: bytes) -> bool:
        # Bigger than a datagram may be: journald reads the record from a sealed memfd
        # (the protocol's documented way), so a long command output line is kept whole.
        fd = os.memfd_create("s3pull-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            self._socket.sendmsg(
                [], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self._path
            )
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
