"""AWS clients, created once per process and injected into every adapter."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import ClientError as HttpError
from botocore.exceptions import BotoCoreError, ClientError

from s3pull.config import Config

__all__ = ["TRANSIENT_ERRORS", "Clients", "open_clients"]

# Errors worth backing off and retrying in-process: the network, the endpoint, throttling
# that outlasted botocore's own retries.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    BotoCoreError,
    ClientError,
    HttpError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class Clients:
    s3: Any
    sqs: Any
    sns: Any
    ec2: Any


def _client_config(config: Config, read_timeout: int, attempts: int = 5) -> AioConfig:
    return AioConfig(
        connect_timeout=10,
        read_timeout=read_timeout,
        # One connection per parallel transfer, plus room for SQS calls beside them.
        max_pool_connections=config.agent.concurrency + 8,
        retries={"mode": "standard", "max_attempts": attempts},
    )


@contextlib.asynccontextmanager
async def open_clients(config: Config, region: str | None = None) -> AsyncIterator[Clients]:
    """Every client s3pull uses, created once. ``region`` overrides the configured one
    (the region instance metadata reported)."""
    session = get_session()
    common: dict[str, Any] = {
        "region_name": region or config.aws.region,
        "endpoint_url": config.aws.endpoint_url,
    }
    # The long poll holds the HTTP request open for up to wait_time_seconds: the read
    # timeout must outlast it or every idle poll would end in a timeout error.
    sqs_timeout = config.queue.wait_time_seconds + 10
    async with (
        session.create_client("s3", config=_client_config(config, 60), **common) as s3,
        # Few SQS attempts: each waits out the long-poll read timeout, and the poll loop
        # backs off (and says so) itself; five would hide an outage for over a minute.
        session.create_client(
            "sqs", config=_client_config(config, sqs_timeout, attempts=2), **common
        ) as sqs,
        session.create_client("sns", config=_client_config(config, 30), **common) as sns,
        session.create_client("ec2", config=_client_config(config, 30), **common) as ec2,
    ):
        yield Clients(s3=s3, sqs=sqs, sns=sns, ec2=ec2)
