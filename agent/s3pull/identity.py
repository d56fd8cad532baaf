"""Who and where this server is: instance id and region from IMDSv2, overridable.

IMDSv2 is a token PUT, then GETs carrying the token. The endpoint honours the same
environment variables as the AWS SDKs (``AWS_EC2_METADATA_SERVICE_ENDPOINT``,
``AWS_EC2_METADATA_DISABLED``), which is also how tests point it at a local stand-in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp

from s3pull.config import Config

__all__ = [
    "Identity",
    "InstanceMetadata",
    "MetadataUnavailable",
    "resolve_identity",
    "resolve_region",
]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT: Final = "http://169.254.169.254"
TOKEN_TTL_SECONDS: Final = 21600
TIMEOUT_SECONDS: Final = 2.0


class MetadataUnavailable(Exception):
    """Instance metadata could not be reached (not on EC2, disabled, or hop limit)."""


@dataclass(frozen=True, slots=True)
class Identity:
    instance_id: str
    region: str | None
    from_metadata: bool  # whether IMDS answered: only then is lifecycle state worth polling


class InstanceMetadata:
    """A minimal IMDSv2 client."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.endpoint = environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", DEFAULT_ENDPOINT)
        self.endpoint = self.endpoint.rstrip("/")
        self.disabled = environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
        self._token: str | None = None

    async def get(self, path: str) -> str | None:
        """The value at ``/latest/meta-data/<path>``, or None when it does not exist."""
        if self.disabled:
            raise MetadataUnavailable("instance metadata is disabled (AWS_EC2_METADATA_DISABLED)")
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                if self._token is None:
                    async with session.put(
                        f"{self.endpoint}/latest/api/token",
                        headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
                    ) as response:
                        response.raise_for_status()
                        self._token = await response.text()
                async with session.get(
                    f"{self.endpoint}/latest/meta-data/{path}",
                    headers={"X-aws-ec2-metadata-token": self._token},
                ) as response:
                    if response.status == 404:
                        return None
                    if response.status == 401:  # token expired: fetch a new one next time
                        self._token = None
                    response.raise_for_status()
                    return (await response.text()).strip()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MetadataUnavailable(f"instance metadata at {self.endpoint}: {exc}") from exc

    async def lifecycle_state(self) -> str | None:
        """The Auto Scaling target lifecycle state (``InService``, ``Terminated``...), or
        None when the instance is not in an Auto Scaling group."""
        return await self.get("autoscaling/target-lifecycle-state")


async def resolve_identity(config: Config, metadata: InstanceMetadata) -> Identity:
    """Instance id and region: the configuration wins, instance metadata fills the gaps.

    Raises ``MetadataUnavailable`` when something is missing and IMDS cannot supply it.
    """
    instance_id = config.agent.instance_id
    region = config.aws.region
    if instance_id and region:
        return Identity(instance_id, region, from_metadata=False)
    if not instance_id:
        instance_id = await metadata.get("instance-id") or ""
        if not instance_id:
            raise MetadataUnavailable("instance metadata has no instance-id")
    if not region:
        region = await metadata.get("placement/region")
    return Identity(instance_id, region, from_metadata=True)


async def resolve_region(config: Config, metadata: InstanceMetadata) -> str:
    """The region every client uses: ``[aws] region``, then AWS_REGION / AWS_DEFAULT_REGION
    (config.py folds those in), then instance metadata; with a topic, the topic's own
    region last (not on EC2: the best guess there is).

    Raises ``MetadataUnavailable`` when none of them can tell.
    """
    if config.aws.region:
        return config.aws.region
    try:
        region = await metadata.get("placement/region")
    except MetadataUnavailable:
        if config.queue.topic_region is None:
            raise
        return config.queue.topic_region
    if region:
        return region
    if config.queue.topic_region is not None:
        return config.queue.topic_region
    raise MetadataUnavailable("instance metadata has no placement/region")
