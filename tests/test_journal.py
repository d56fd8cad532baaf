"""journald's native protocol as the agent speaks it: real datagram sockets standing in
for /run/systemd/journal/socket, read back field by field. (The packaged service against
a real journald is proven by the systemd-nspawn boot test, packaging/test/.)"""

from __future__ import annotations

import array
import contextlib
import io
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3pull.journal import JournalHandler, encode
from s3pull.logfields import journal_fields
from s3pull.logsafe import EscapingFormatter


def decode(data: bytes) -> dict[str, str]:
    """The native protocol read back the way journald reads it."""
    fields: dict[str, str] = {}
    while data:
        line, sep, rest = data.partition(b"\n")
        assert sep, data
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            data = rest
        else:
            (size,) = struct.unpack("<Q", rest[:8])
            fields[line.decode()] = rest[8 : 8 + size].decode()
            assert rest[8 + size : 9 + size] == b"\n"
            data = rest[9 + size :]
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "journal.socket")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    yield path, server
    server.close()


def handler_logger(handler: logging.Handler) -> logging.Logger:
    handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"s3pull.test.{id(handler)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_encode_plain_and_binary_safe_values() -> None:
    assert encode({"MESSAGE": "hi", "S3PULL_KEY": "a\nb"}) == (
        b"MESSAGE=hi\n" + b"S3PULL_KEY\n" + struct.pack("<Q", 3) + b"a\nb\n"
    )
    # journald drops a whole record with a bad field name: such a field is left out.
    assert encode({"_PID": "1", "lower": "x", "OK": "y"}) == b"OK=y\n"


def test_a_record_carries_our_fields(journal: tuple[str, socket.socket]) -> None:
    path, server = journal
    log = handler_logger(JournalHandler("s3pull", path, io.StringIO()))
    key = "data/odd\nname.txt"
    log.warning("%s: downloaded %s", "assets", key, extra=journal_fields(mirror="assets", key=key))
    fields = decode(server.recv(65536))
    assert fields["MESSAGE"] == "WARNING assets: downloaded data/odd\\nname.txt"  # escaped
    assert fields["S3PULL_KEY"] == key  # the field keeps the key as it is
    assert fields["S3PULL_MIRROR"] == "assets"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "s3pull"
    assert fields["LOGGER"] == log.name
    assert fields["CODE_FUNC"] == "test_a_record_carries_our_fields"


def test_a_record_too_big_for_a_datagram_goes_as_a_memfd(
    journal: tuple[str, socket.socket],
) -> None:
    path, server = journal
    log = handler_logger(JournalHandler("s3pull", path, io.StringIO()))
    line = "x" * (4 << 20)  # beyond any datagram's size limit
    log.info("orders incoming/b1/ [stdout] %s", line)
    data, ancillary, _flags, _address = server.recvmsg(1024, socket.CMSG_SPACE(4))
    assert data == b""
    ((level, kind, payload),) = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fd = array.array("i", payload)[0]
    with os.fdopen(fd, "rb") as memfd:
        fields = decode(os.pread(memfd.fileno(), 8 << 20, 0))
    assert fields["MESSAGE"].endswith(line)


def test_a_busy_journal_never_blocks_the_caller(journal: tuple[str, socket.socket]) -> None:
    path, server = journal
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = io.StringIO()
    handler = JournalHandler("s3pull", path, stream)
    log = handler_logger(handler)
    # journald not reading: its queue fills, and a blocking send would wait here forever.
    for number in range(5000):
        log.info("line %d", number)
    assert handler.fell_back > 0
    kept = stream.getvalue().splitlines()
    assert len(kept) == handler.fell_back  # what journald could not take, on stderr
    assert kept[-1] == "INFO line 4999"


def test_no_journal_means_the_stream(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = JournalHandler("s3pull", str(tmp_path / "absent.socket"), stream)
    handler_logger(handler).error("failed %s", "x")
    assert stream.getvalue() == "ERROR failed x\n"
    assert handler.fell_back == 1


def test_a_stream_socket_nobody_reads_never_blocks_the_caller(
    journal: tuple[str, socket.socket],
) -> None:
    # Under systemd stderr is journald's stream socket: when journald takes no datagram,
    # it may read that stream no faster. A blocking write there would stop the agent.
    path, server = journal
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ours, journald_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with ours, journald_end, os.fdopen(os.dup(ours.fileno()), "w") as stderr:
        handler = JournalHandler("s3pull", path, stderr)
        log = handler_logger(handler)
        for number in range(5000):  # returns only if no write waited for a reader
            log.info("line %d", number)
        assert handler.fell_back > 0 and handler.dropped > 0
        journald_end.setblocking(False)
        received = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := journald_end.recv(1 << 16):
                received += chunk
        lines = received.decode().splitlines()
        assert len(lines) == handler.fell_back  # whole lines only: a record fits or is dropped
        assert all(line.startswith("INFO line ") for line in lines)
        handler.close()
