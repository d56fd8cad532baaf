"""AWS clients, created once per process and injected into every adapter."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import ClientError as HttpError
from botocore.exceptions import BotoCoreError, ClientError

from s3pull.botodata import lean_loader
from s3pull.config import Config
from s3pull.errors import S3PullError
from s3pull.heap import resume_collection
from s3pull.s3http import LeanS3

__all__ = [
    "TRANSIENT_ERRORS",
    "Clients",
    "Forbidden",
    "Service",
    "error_code",
    "is_forbidden",
    "is_gone",
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


Service = Literal["s3", "sqs", "sns", "ec2", "events"]


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: ClientError) -> bool:
    """An S3 object (or key) that does not exist: GET says NoSuchKey, HEAD a bare 404."""
    return error_code(exc) in ("NoSuchKey", "404", "NotFound")


def is_forbidden(exc: ClientError) -> bool:
    """Access denied: GET and listings say AccessDenied, HEAD (no body) a bare 403."""
    return error_code(exc) in ("AccessDenied", "403", "Forbidden")


class Forbidden(S3PullError):
    """S3 refused access to a key, and it cannot be told whether the key exists: an
    error like any other (the message comes back), worded to name the permission."""


async def is_gone(s3: Any, bucket: str, key: str, exc: ClientError) -> bool:
    """Does ``exc``, from a HEAD or GET of ``key``, mean the object does not exist?

    A 404 does. A 403 may: S3 answers 403 rather than 404 for a missing key when the
    role lacks ``s3:ListBucket`` for it (S3 API reference, GetObject and HeadObject,
    "Permissions"), as a role granted it on some prefixes only (an ``s3:prefix``
    condition) does. A listing of exactly that key, which such a role may do, tells:
    absent there, the object is gone. Listed, it exists but may not be read; the listing
    refused too, nobody can tell: both raise ``Forbidden``. False for any other error.
    """
    if is_missing(exc):
        return True
    if not is_forbidden(exc):
        return False
    where = f"s3://{bucket}/{key}"
    try:
        # No other key with this prefix sorts before the key itself: one key is enough.
        listing = await s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except ClientError as denied:
        if is_forbidden(denied):
            raise Forbidden(
                f"{where}: access denied, and so is listing it: without s3:ListBucket on"
                " the key's prefix a deleted object cannot be told from a forbidden one"
                " (grant s3:ListBucket on the prefix)"
            ) from exc
        raise
    if any(item.get("Key") == key for item in listing.get("Contents", ())):
        raise Forbidden(
            f"{where}: access denied to an object that exists (grant s3:GetObject on it)"
        ) from exc
    return True


@dataclass(frozen=True, slots=True)
class Clients:
    """The clients a command asked for; the others are None."""

    s3: Any = None
    sqs: Any = None
    sns: Any = None
    ec2: Any = None
    events: Any = None


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
    # botocore's data for s3pull's services only, as plain dicts: the first client is
    # ready about a quarter sooner, and the clients hold half the memory (botodata.py).
    data_path = session.get_config_variable("data_path")
    session.register_component("data_loader", lean_loader(data_path, get_args(Service)))
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
        if "s3" in clients:
            # GetObject, one per object in a sync, is sent lean (s3http.py); the rest is
            # the client's. Same credentials chain, region, endpoint and pool size.
            settings = _settings(config, "s3")
            lean = LeanS3(
                clients["s3"],
                await session.get_credentials(),
                clients["s3"].meta.region_name,
                connections=settings.max_pool_connections,
                read_timeout=settings.read_timeout,
                ca_bundle=session.get_config_variable("ca_bundle"),
            )
            stack.push_async_callback(lean.close)
            clients["s3"] = lean
        resume_collection()  # start-up's heavy part is over (heap.py)
        yield Clients(**clients)
