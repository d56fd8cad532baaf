"""The fleet verbs: ``provision``, ``deprovision`` and ``gc``, as an operator runs them."""

from __future__ import annotations

from datetime import timedelta

from s3pull.aws import open_clients
from s3pull.config import Config
from s3pull.errors import ConfigError
from s3pull.identity import Identity
from s3pull.provision import (
    DEAD_LETTER_SUFFIX,
    OwnQueue,
    dangling_subscriptions,
    deprovision,
    find_orphans,
)

__all__ = ["deprovision_command", "gc_command", "provision_command", "require_topic"]


def require_topic(config: Config, verb: str) -> str:
    if config.queue.topic_arn is None:
        raise ConfigError(
            str(config.path),
            "queue.topic_arn",
            f"`s3pull {verb}` manages per-server queues fed by a topic;"
            " this configuration uses a fixed queue.url",
        )
    return config.queue.topic_arn


async def provision_command(config: Config, identity: Identity) -> int:
    require_topic(config, "provision")
    async with open_clients(config, "sqs", "sns", region=identity.region) as clients:
        own = OwnQueue(clients.sqs, clients.sns, config.queue, identity.instance_id)
        print(await own.ensure())
    return 0


async def deprovision_command(config: Config, identity: Identity) -> int:
    require_topic(config, "deprovision")
    async with open_clients(config, "sqs", "sns", region=identity.region) as clients:
        own = OwnQueue(clients.sqs, clients.sns, config.queue, identity.instance_id)
        removed = await own.remove()
    assert removed is not None  # require_topic: a provisioned queue
    # Each part as found: a second deprovision must not claim to remove what was gone.
    if removed.subscriptions is None:
        print("subscription: not allowed to unsubscribe; left for `s3pull gc`")
    elif removed.subscriptions:
        print(f"subscription of queue {own.name}: removed")
    else:
        print(f"subscription of queue {own.name}: already gone")
    for name, gone in (
        (own.name, removed.queue),
        (own.name + DEAD_LETTER_SUFFIX, removed.dead_letter_queue),
    ):
        print(f"queue {name}: {'removed' if gone else 'already gone'}")
    return 0


async def gc_command(
    config: Config, region: str | None, stale_after: timedelta, dry_run: bool
) -> int:
    topic_arn = require_topic(config, "gc")
    name_prefix = config.queue.name.split("{instance_id}", 1)[0]
    async with open_clients(config, "sqs", "sns", "ec2", region=region) as clients:
        orphans = await find_orphans(
            clients.sqs, clients.ec2, name_prefix=name_prefix, stale_after=stale_after
        )
        for orphan in orphans:
            verb = "would remove" if dry_run else "removing"
            print(f"{verb} {orphan.queue_name} (instance {orphan.instance_id}: {orphan.reason})")
            if not dry_run:
                await deprovision(
                    clients.sqs, clients.sns, topic_arn=topic_arn, queue_name=orphan.queue_name
                )
        dangling = await dangling_subscriptions(clients.sqs, clients.sns, topic_arn, name_prefix)
        for subscription_arn in dangling:
            verb = "would unsubscribe" if dry_run else "unsubscribing"
            print(f"{verb} {subscription_arn} (its queue no longer exists)")
            if not dry_run:
                await clients.sns.unsubscribe(SubscriptionArn=subscription_arn)
        if not orphans and not dangling:
            print("nothing to remove")
    return 0
