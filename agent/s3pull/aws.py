"""AWS clients, created once per process and injected into every adapter."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import ClientError as HttpError
from botocore.exceptions import BotoCoreError, ClientError

from s3pull.config import Config

__all__ = [
    "TRANSIENT_ERRORS",
    "Clients",
    "Service",
    "error_code",
    "is_missing",
    "open_clients",
]

# Errors worth backing off and retrying in-process: the network, the endpoint, throttling
# that outlasted botocore's own retries.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    BotoCoreError,
    ClientError,
    HttpError,
    OSError,
    TimeoutError,
)


Service = Literal["s3", "sqs", "sns", "ec2"]


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: ClientError) -> bool:
    """An S3 object (or key) that does not exist: GET says NoSuchKey, HEAD a bare 404."""
    return error_code(exc) in ("NoSuchKey", "404", "NotFound")


@dataclass(frozen=True, slots=True)
class Clients:
    """The clients a command asked for; the others are None."""

    s3: Any = None
    sqs: Any = None
    sns: Any = None
    ec2: Any = None


def _client_config(config: Config, read_timeout: int, attempts: int = 5) -> AioConfig:
    return AioConfig(
        connect_timeout=10,
        read_timeout=read_timeout,
        # One connection per parallel transfer, plus room for SQS calls beside them.
        max_pool_connections=config.agent.concurrency + 8,
        retries={"mode": "standard", "max_attempts": attempts},
    )


def _settings(config: Config, service: Service) -> AioConfig:
    if service == "sqs":
        # The long poll holds the request open for up to wait_time_seconds: the read
        # timeout must outlast it. Few attempts: each can wait out that timeout, and the
        # poll loop backs off (and says so) itself; five hid an outage for over a minute.
        return _client_config(config, config.queue.wait_time_seconds + 10, attempts=2)
    return _client_config(config, 60 if service == "s3" else 30)


@contextlib.asynccontextmanager
async def open_clients(
    config: Config, *services: Service, region: str | None = None
) -> AsyncIterator[Clients]:
    """The clients for ``services``, created once. Only what a command uses is created:
    each client costs start-up time and about 10 MB. ``region`` overrides the configured
    one (the region instance metadata reported)."""
    session = get_session()
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            service: await stack.enter_async_context(
                session.create_client(
                    service,
                    region_name=region or config.aws.region,
                    endpoint_url=config.aws.endpoint_url,
                    config=_settings(config, service),
                )
            )
            for service in services
        }
        yield Clients(**clients)
