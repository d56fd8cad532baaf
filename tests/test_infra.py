"""infra/: the CloudFormation templates are lint-clean, and s3pull.yaml deploys into moto's
CloudFormation and carries an upload's notification through the topic to a queue.

moto 5.2.5 reaches CREATE_COMPLETE with this template but does not create everything in
it: it skips AWS::SNS::TopicPolicy, AWS::SQS::QueuePolicy and AWS::SNS::Subscription
without error, and ignores the bucket's NotificationConfiguration and the role's
ManagedPolicyArns. The tests first check that moto really left those out (so this note
cannot go stale unnoticed), then apply the first four through the API, built from the
template's own definitions (parsed from the YAML, never copied here by hand), check the
managed policy ARN against moto's catalogue, and only then send an upload through.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
import yaml

from conftest import wait_until
from s3pull.emulator import client, subscribe_queue

INFRA = Path(__file__).resolve().parent.parent / "infra"
TEMPLATE = INFRA / "s3pull.yaml"

# moto warns about each resource type it skips; these three are expected (above), any other
# still shows. (A warning filter is colon-separated, hence "." for "::".)
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Tried to parse AWS..(SNS..TopicPolicy|SQS..QueuePolicy|SNS..Subscription) "
    r"but it's not supported:UserWarning"
)


# -- cfn-lint ----------------------------------------------------------------------------


def cfn_lint() -> str:
    # Never skipped: CI installs cfn-lint with the dev extra, so a missing linter is a broken
    # set-up, not a pass.
    beside_python = Path(sys.executable).with_name("cfn-lint")
    found = str(beside_python) if beside_python.exists() else shutil.which("cfn-lint")
    if found is None:
        pytest.fail(
            "cfn-lint is not installed (it comes with the dev extra: pip install -e '.[dev]')"
        )
    return found


@pytest.mark.parametrize("template", sorted(INFRA.glob("*.yaml")), ids=lambda path: path.name)
def test_template_is_lint_clean(template: Path) -> None:
    result = subprocess.run(
        [cfn_lint(), str(template)], capture_output=True, text=True, timeout=120, check=False
    )
    # Exit 0 means no error and no warning; anything printed is a finding.
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"cfn-lint {template.name} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )


# -- the template as data ----------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    """YAML plus CloudFormation's short forms: ``!Ref X`` -> ``{"Ref": "X"}``,
    ``!Sub s`` -> ``{"Fn::Sub": s}``, ``!GetAtt A.B`` -> ``{"Fn::GetAtt": ["A", "B"]}``."""


def _short_form(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _short_form)


def load_template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)  # CfnLoader is a SafeLoader


NO_VALUE = object()  # AWS::NoValue: the enclosing property or list item disappears


class Stack:
    """A stack deployed into moto, with its template: resolves the template's intrinsic
    functions the way CloudFormation does, from the stack's parameters and resources."""

    def __init__(self, endpoint: str, name: str, parameters: dict[str, str]) -> None:
        self.endpoint = endpoint
        self.name = name
        self.template = load_template()
        cfn = client(endpoint, "cloudformation")
        cfn.create_stack(
            StackName=name,
            TemplateBody=TEMPLATE.read_text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
        self.description = cfn.describe_stacks(StackName=name)["Stacks"][0]
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in self.description["Outputs"]}
        # moto lists the resources it skipped too, without a LogicalResourceId.
        self.physical_ids = {
            resource["LogicalResourceId"]: resource["PhysicalResourceId"]
            for resource in cfn.describe_stack_resources(StackName=name)["StackResources"]
            if "LogicalResourceId" in resource
        }
        self.parameters: dict[str, Any] = {}
        for key, declaration in self.template["Parameters"].items():
            value = parameters.get(key, str(declaration.get("Default", "")))
            is_list = declaration["Type"] == "CommaDelimitedList"
            self.parameters[key] = value.split(",") if is_list else value
        self.pseudo = {
            "AWS::AccountId": client(endpoint, "sts").get_caller_identity()["Account"],
            "AWS::Region": "us-east-1",
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": name,
            "AWS::StackId": self.description["StackId"],
        }

    @property
    def status(self) -> str:
        return str(self.description["StackStatus"])

    def resources(self, resource_type: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The template's resources of one type whose condition holds."""
        for logical_id, resource in self.template["Resources"].items():
            if resource["Type"] != resource_type:
                continue
            if "Condition" in resource and not self.condition(resource["Condition"]):
                continue
            yield logical_id, resource

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(item) for item in value]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((function, argument),) = value.items()
            if function == "Ref" or function.startswith("Fn::") or function == "Condition":
                return self.call(function, argument)
        items = {key: self.resolve(item) for key, item in value.items()}
        return {key: item for key, item in items.items() if item is not NO_VALUE}

    def call(self, function: str, argument: Any) -> Any:
        match function:
            case "Ref":
                return self.ref(argument)
            case "Condition":
                return self.condition(argument)
            case "Fn::GetAtt":
                return self.attribute(*argument)
            case "Fn::Sub":
                text, variables = (argument, {}) if isinstance(argument, str) else argument
                return self.substitute(text, {k: self.resolve(v) for k, v in variables.items()})
            case "Fn::Join":
                return argument[0].join(self.resolve(argument[1]))
            case "Fn::Split":
                return self.resolve(argument[1]).split(argument[0])
            case "Fn::Select":
                return self.resolve(argument[1])[int(self.resolve(argument[0]))]
            case "Fn::If":
                return self.resolve(argument[1] if self.condition(argument[0]) else argument[2])
            case "Fn::Equals":
                return str(self.resolve(argument[0])) == str(self.resolve(argument[1]))
            case "Fn::Not":
                return not self.resolve(argument[0])
            case "Fn::And":
                return all(self.resolve(item) for item in argument)
            case "Fn::Or":
                return any(self.resolve(item) for item in argument)
        raise NotImplementedError(f"{function} is not resolved by this test yet")

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return self.physical_ids[name]

    def attribute(self, logical_id: str, name: str) -> str:
        resource_type = self.template["Resources"][logical_id]["Type"]
        physical_id = self.physical_ids[logical_id]
        match resource_type, name:
            case "AWS::SQS::Queue", "Arn":
                attributes = client(self.endpoint, "sqs").get_queue_attributes(
                    QueueUrl=physical_id, AttributeNames=["QueueArn"]
                )
                return str(attributes["Attributes"]["QueueArn"])
            case "AWS::S3::Bucket", "Arn":
                return f"arn:{self.pseudo['AWS::Partition']}:s3:::{physical_id}"
            case "AWS::SNS::Topic", "TopicArn":
                return physical_id
            case "AWS::Events::Rule", "Arn":
                rule = client(self.endpoint, "events").describe_rule(Name=physical_id)
                return str(rule["Arn"])
        raise NotImplementedError(f"{resource_type}.{name} is not resolved by this test yet")

    def substitute(self, text: str, variables: dict[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):  # ${!Literal} stays ${Literal}
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and name.split(".")[0] in self.template["Resources"]:
                return self.attribute(*name.split(".", 1))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def role_policy(self, role_logical_id: str, policy_name: str) -> dict[str, Any]:
        """The inline policy as moto's CloudFormation rendered it."""
        role = self.physical_ids[role_logical_id]
        document = client(self.endpoint, "iam").get_role_policy(
            RoleName=role, PolicyName=policy_name
        )["PolicyDocument"]
        if isinstance(document, str):
            # moto stores a policy written in a template as Python's repr of the dict, and
            # leaves None where CloudFormation drops an AWS::NoValue list item.
            document = ast.literal_eval(document)
        document["Statement"] = [s for s in document["Statement"] if s is not None]
        return dict(document)


def apply_what_moto_skips(stack: Stack) -> list[str]:
    """Create, through the API, what moto's CloudFormation left out of ``stack``, from the
    template's own definitions; return what was applied.

    The order is the one the template's DependsOn gives CloudFormation: S3 may publish
    before the bucket notifies, the queue policy lets SNS in before the subscription sends.
    """
    s3, sns, sqs = (client(stack.endpoint, s) for s in ("s3", "sns", "sqs"))
    applied = []

    for logical_id, resource in stack.resources("AWS::SNS::TopicPolicy"):
        properties = stack.resolve(resource["Properties"])
        for topic_arn in properties["Topics"]:
            policy = sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"]["Policy"]
            assert "s3.amazonaws.com" not in policy, f"moto now applies {logical_id}: drop this"
            sns.set_topic_attributes(
                TopicArn=topic_arn,
                AttributeName="Policy",
                AttributeValue=json.dumps(properties["PolicyDocument"]),
            )
        applied.append(logical_id)

    for logical_id, resource in stack.resources("AWS::SQS::QueuePolicy"):
        properties = stack.resolve(resource["Properties"])
        for queue_url in properties["Queues"]:
            attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])
            assert "Policy" not in attributes["Attributes"], f"moto now applies {logical_id}"
            sqs.set_queue_attributes(
                QueueUrl=queue_url,
                Attributes={"Policy": json.dumps(properties["PolicyDocument"])},
            )
        applied.append(logical_id)

    for logical_id, resource in stack.resources("AWS::SNS::Subscription"):
        properties = stack.resolve(resource["Properties"])
        unhandled = set(properties) - {"TopicArn", "Protocol", "Endpoint", "RawMessageDelivery"}
        assert not unhandled, f"{logical_id}: teach this test to apply {sorted(unhandled)}"
        topic_arn = properties["TopicArn"]
        existing = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
        assert all(s["Endpoint"] != properties["Endpoint"] for s in existing), (
            f"moto now creates {logical_id}: drop this"
        )
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol=properties["Protocol"],
            Endpoint=properties["Endpoint"],
            Attributes={
                "RawMessageDelivery": str(properties.get("RawMessageDelivery", False)).lower()
            },
        )
        applied.append(logical_id)

    for logical_id, resource in stack.resources("AWS::S3::Bucket"):
        notifications = stack.resolve(resource["Properties"].get("NotificationConfiguration"))
        if not notifications:
            continue
        bucket = stack.physical_ids[logical_id]
        if set(notifications) == {"EventBridgeConfiguration"}:
            assert notifications["EventBridgeConfiguration"] == {"EventBridgeEnabled": True}
            current = s3.get_bucket_notification_configuration(Bucket=bucket)
            assert "EventBridgeConfiguration" not in current, f"moto now applies {logical_id}'s"
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
            )
            applied.append(f"{logical_id}.NotificationConfiguration")
            continue
        assert set(notifications) == {"TopicConfigurations"}, f"{logical_id}: teach this test"
        current = s3.get_bucket_notification_configuration(Bucket=bucket)
        assert "TopicConfigurations" not in current, f"moto now applies {logical_id}'s"
        # CloudFormation's shape (one Event, Topic) -> the API's (Events, TopicArn).
        topic_configurations = []
        for item in notifications["TopicConfigurations"]:
            assert set(item) == {"Event", "Topic"}, f"{logical_id}: teach this test {item}"
            topic_configurations.append({"TopicArn": item["Topic"], "Events": [item["Event"]]})
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={"TopicConfigurations": topic_configurations},
        )
        applied.append(f"{logical_id}.NotificationConfiguration")

    return applied


def check_managed_policies(stack: Stack) -> None:
    """moto ignores a role's ManagedPolicyArns, and its server attaches AWS managed policies
    only when told to load them all (a server-wide setting); so check each ARN against
    moto's catalogue of AWS managed policies instead of attaching it."""
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    catalogue = json.loads(aws_managed_policies_data)
    iam = client(stack.endpoint, "iam")
    for logical_id, resource in stack.resources("AWS::IAM::Role"):
        role = stack.physical_ids[logical_id]
        assert not iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"], (
            f"moto now attaches {logical_id}'s ManagedPolicyArns: attach-check them instead"
        )
        for arn in stack.resolve(resource["Properties"].get("ManagedPolicyArns", [])):
            policy = catalogue.get(arn.rsplit("/", 1)[-1])
            assert policy is not None, f"{logical_id}: no AWS managed policy {arn}"
            assert arn == f"arn:aws:iam::aws:policy{policy['Path']}{arn.rsplit('/', 1)[-1]}"


# -- helpers -----------------------------------------------------------------------------


def receive_s3_record(sqs: Any, queue_url: str, key: str) -> dict[str, Any]:
    """Wait for the raw-delivery S3 notification of ``key``; return its record."""

    def received() -> dict[str, Any] | None:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        for message in messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            body = json.loads(message["Body"])
            # Raw delivery: the body is the S3 event itself, not an SNS envelope.
            assert "Type" not in body and "Message" not in body, f"SNS envelope: {body}"
            if body.get("Event") == "s3:TestEvent":  # sent when the notification is set
                continue
            for record in body["Records"]:
                if unquote_plus(record["s3"]["object"]["key"]) == key:
                    return dict(record)
        return None

    return dict(wait_until(received, timeout=5, what=f"the notification of {key}"))


def queue_subscribed(endpoint: str, topic_arn: str, name: str) -> str:
    """A queue subscribed the way ``s3pull provision`` subscribes one: only the topic may
    send, raw message delivery."""
    sqs = client(endpoint, "sqs")
    queue_url = str(sqs.create_queue(QueueName=name)["QueueUrl"])
    subscribe_queue(sqs, client(endpoint, "sns"), topic_arn, queue_url)
    return queue_url


def statements(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {statement["Sid"]: statement for statement in policy["Statement"]}


OWN_INSTANCE = "${aws:ResourceTag/s3pull:instance-id}"
NEW_QUEUE_INSTANCE = "${aws:RequestTag/s3pull:instance-id}"


def check_least_privilege(stack: Stack, policy: dict[str, dict[str, Any]]) -> None:
    """What the servers' role and the gc policy say (moto enforces neither): a server
    changes, consumes, deletes only queues tagged with its own instance id, creates only
    queues so tagged, never unsubscribes; gc's rights are in a policy of their own."""
    from s3pull.provision import INSTANCE_TAG

    assert OWN_INSTANCE == "${aws:ResourceTag/" + INSTANCE_TAG + "}"  # the agent's tag key
    account, prefix = stack.pseudo["AWS::AccountId"], stack.parameters["QueueNamePrefix"]
    queues = f"arn:aws:sqs:us-east-1:{account}:{prefix}*"
    instance = f"arn:aws:ec2:*:{account}:instance/"
    writes = {
        "sqs:CreateQueue", "sqs:SetQueueAttributes", "sqs:TagQueue", "sqs:UntagQueue",
        "sqs:DeleteQueue", "sqs:PurgeQueue", "sqs:ReceiveMessage", "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility", "sqs:AddPermission", "sqs:RemovePermission",
    }  # fmt: skip

    def actions(statement: dict[str, Any]) -> set[str]:
        action = statement["Action"]
        return {action} if isinstance(action, str) else set(action)

    s3_writes = {
        "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectAcl",
        "s3:PutBucketPolicy", "s3:PutBucketNotification",
    }  # fmt: skip
    results = stack.parameters.get("TriggerResults", "")
    for sid, statement in policy.items():
        granted = actions(statement)
        assert not any("*" in action for action in granted), f"{sid}: wildcard action"
        # The one S3 write a server has: PutObject under the results prefix, nothing else.
        if granted & s3_writes:
            assert sid == "WriteTriggerResults" and granted == {"s3:PutObject"}, sid
            assert statement["Resource"] == f"arn:aws:s3:::{results}*", sid
            assert results.endswith("/"), "a results prefix is a folder"
        assert not granted & {"sns:Unsubscribe", "sns:SetSubscriptionAttributes"}, (
            f"{sid}: IAM cannot narrow {sorted(granted)} to one subscription"
        )
        assert "ec2:DescribeInstances" not in granted, f"{sid}: gc's right, not a server's"
        if statement["Effect"] != "Allow" or not granted & writes:
            continue
        if sid == "ConsumeSharedTriggerQueue":  # competing consumers: receive, never manage
            assert statement["Resource"] == stack.outputs["SharedTriggerQueueArn"]
            assert granted & writes == {
                "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"
            }  # fmt: skip
            continue
        # Every allowed write to a queue is bound to the caller's instance.
        condition = statement["Condition"]["StringLike"]["ec2:SourceInstanceARN"]
        assert statement["Resource"] == queues, sid
        if granted == {"sqs:CreateQueue"} or sid == "TagNewQueuesAsOwn":
            assert condition == instance + NEW_QUEUE_INSTANCE, sid
        else:
            assert condition == instance + OWN_INSTANCE, sid
    assert policy["TagNewQueuesAsOwn"]["Condition"]["Null"] == {
        f"aws:ResourceTag/{INSTANCE_TAG}": "true"
    }
    assert actions(policy["TagNewQueuesAsOwn"]) == {"sqs:TagQueue"}
    assert {"sqs:DeleteQueue", "sqs:ReceiveMessage", "sqs:SetQueueAttributes"} <= actions(
        policy["ManageOwnQueues"]
    )
    assert policy["SubscribeOwnQueues"]["Condition"]["StringLike"] == {"sns:Endpoint": queues}

    # gc: its own managed policy, not attached to the servers' role.
    iam = client(stack.endpoint, "iam")
    gc_arn = stack.outputs["GcPolicyArn"]
    assert gc_arn == stack.physical_ids["S3PullGcPolicy"]
    version = iam.get_policy(PolicyArn=gc_arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=gc_arn, VersionId=version)["PolicyVersion"][
        "Document"
    ]
    if isinstance(document, str):
        document = (
            json.loads(unquote_plus(document))
            if document.startswith("%")
            else (json.loads(document))
        )
    gc = {s["Sid"]: s for s in document["Statement"] if s is not None}
    assert actions(gc["DeleteAgentQueues"]) == {"sqs:DeleteQueue"}
    assert gc["DeleteAgentQueues"]["Resource"] == queues
    assert gc["DeleteAgentQueues"]["Condition"] == {
        "Null": {f"aws:ResourceTag/{INSTANCE_TAG}": "false"}
    }
    assert actions(gc["RemoveDanglingSubscriptions"]) == {
        "sns:ListSubscriptionsByTopic",
        "sns:Unsubscribe",
    }
    assert gc["RemoveDanglingSubscriptions"]["Resource"] == stack.outputs["TopicArn"]
    assert actions(gc["FindInstances"]) == {"ec2:DescribeInstances"}
    role = stack.outputs["InstanceRoleName"]
    attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
    assert gc_arn not in [p["PolicyArn"] for p in attached]
    if stack.condition("CreateSharedTriggerQueue"):
        never = policy["NeverManageSharedQueues"]
        assert never["Effect"] == "Deny"
        assert {"sqs:TagQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes"} <= actions(never)
        assert stack.outputs["SharedTriggerQueueArn"] in never["Resource"]


@pytest.fixture
def name() -> str:
    # A valid stack name and bucket name, fresh for every test.
    return f"s3pull-infra-{uuid.uuid4().hex[:12]}"


# -- deployments -------------------------------------------------------------------------


@pytest.mark.moto_only("deploys the CloudFormation template; LocalStack runs S3, SNS, SQS only")
def test_new_bucket_and_shared_trigger_queue(moto_endpoint: str, name: str) -> None:
    s3, sns, sqs, iam = (client(moto_endpoint, s) for s in ("s3", "sns", "sqs", "iam"))
    stack = Stack(
        moto_endpoint,
        name,
        {
            "BucketName": name,
            "ReadPrefixes": "assets/,incoming/",
            "CreateSharedTriggerQueue": "true",
            "TriggerMaxReceiveCount": "3",
            "TriggerResults": f"{name}/results/",
        },
    )

    assert stack.status == "CREATE_COMPLETE"
    outputs = stack.outputs
    assert outputs["BucketName"] == name
    s3.head_bucket(Bucket=name)
    assert sns.get_topic_attributes(TopicArn=outputs["TopicArn"])["Attributes"]
    profile = iam.get_instance_profile(InstanceProfileName=outputs["InstanceProfileName"])
    roles = profile["InstanceProfile"]["Roles"]
    assert [role["RoleName"] for role in roles] == [outputs["InstanceRoleName"]]
    assert "BucketNotificationConfiguration" not in outputs  # the stack manages them

    queue = sqs.get_queue_attributes(
        QueueUrl=outputs["SharedTriggerQueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    dead_letter = sqs.get_queue_attributes(
        QueueUrl=outputs["SharedTriggerDeadLetterQueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    assert queue["QueueArn"] == outputs["SharedTriggerQueueArn"]
    assert json.loads(queue["RedrivePolicy"]) == {
        "deadLetterTargetArn": dead_letter["QueueArn"],
        "maxReceiveCount": 3,
    }
    assert int(dead_letter["MessageRetentionPeriod"]) > int(queue["MessageRetentionPeriod"])

    # Reads are limited to the prefixes: the GetObject ARNs name the bucket through the
    # role's tag (see the template), the listing is conditioned on s3:prefix.
    policy = statements(stack.role_policy("InstanceRole", "s3pull-agent"))
    tagged = "arn:*:s3:::${aws:PrincipalTag/s3pull-bucket}"
    assert policy["ReadObjects"]["Resource"] == [f"{tagged}/assets/*", f"{tagged}/incoming/*"]
    assert policy["ListPrefixes"]["Condition"] == {
        "StringLike": {"s3:prefix": ["assets/*", "incoming/*"]}
    }
    role_tags = iam.list_role_tags(RoleName=outputs["InstanceRoleName"])["Tags"]
    assert {"Key": "s3pull-bucket", "Value": name} in role_tags
    assert policy["ConsumeSharedTriggerQueue"]["Resource"] == outputs["SharedTriggerQueueArn"]
    assert policy["WriteTriggerResults"]["Resource"] == f"arn:aws:s3:::{name}/results/*"
    check_least_privilege(stack, policy)

    assert apply_what_moto_skips(stack) == [
        "TopicPolicy",
        "SharedTriggerQueuePolicy",
        "SharedTriggerSubscription",
        "Bucket.NotificationConfiguration",
    ]
    check_managed_policies(stack)

    # moto delivers whatever the policies say, so check what they say: only this bucket of
    # this account may publish; only this topic may send to the queue.
    account = stack.pseudo["AWS::AccountId"]
    topic_policy = json.loads(
        sns.get_topic_attributes(TopicArn=outputs["TopicArn"])["Attributes"]["Policy"]
    )
    assert statements(topic_policy)["S3PublishesBucketEvents"]["Condition"] == {
        "ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{name}"},
        "StringEquals": {"aws:SourceAccount": account},
    }
    queue_policy = json.loads(
        sqs.get_queue_attributes(
            QueueUrl=outputs["SharedTriggerQueueUrl"], AttributeNames=["Policy"]
        )["Attributes"]["Policy"]
    )
    assert statements(queue_policy)["TopicDeliversBucketEvents"]["Condition"] == {
        "ArnEquals": {"aws:SourceArn": outputs["TopicArn"]}
    }
    notified = s3.get_bucket_notification_configuration(Bucket=name)["TopicConfigurations"]
    assert sorted(event for item in notified for event in item["Events"]) == [
        "s3:LifecycleExpiration:*",
        "s3:ObjectCreated:*",
        "s3:ObjectRemoved:*",
        "s3:ObjectRestore:Completed",
    ]
    assert {item["TopicArn"] for item in notified} == {outputs["TopicArn"]}

    s3.put_object(Bucket=name, Key="incoming/batch-1/_READY", Body=b"")
    record = receive_s3_record(sqs, outputs["SharedTriggerQueueUrl"], "incoming/batch-1/_READY")
    assert record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["bucket"]["name"] == name


@pytest.mark.moto_only("deploys the CloudFormation template; LocalStack runs S3, SNS, SQS only")
def test_existing_bucket(moto_endpoint: str, name: str) -> None:
    s3, sqs = client(moto_endpoint, "s3"), client(moto_endpoint, "sqs")
    s3.create_bucket(Bucket=name)  # the bucket that was there before s3pull
    stack = Stack(moto_endpoint, name, {"BucketName": name, "CreateBucket": "false"})

    assert stack.status == "CREATE_COMPLETE"
    assert "Bucket" not in stack.physical_ids
    outputs = stack.outputs
    assert outputs["BucketName"] == name
    assert "SharedTriggerQueueUrl" not in outputs

    # Empty ReadPrefixes: the whole bucket, and no condition on the listing.
    policy = statements(stack.role_policy("InstanceRole", "s3pull-agent"))
    assert policy["ReadObjects"]["Resource"] == ["arn:*:s3:::${aws:PrincipalTag/s3pull-bucket}/*"]
    assert "Condition" not in policy["ListPrefixes"]
    assert "ConsumeSharedTriggerQueue" not in policy
    assert "RestoreArchivedObjects" not in policy  # RestoreArchived=false
    assert "CheckEventBridgeTargets" not in policy  # EventSource=notification
    assert "WriteTriggerResults" not in policy  # no results configured: no write at all
    check_least_privilege(stack, policy)

    assert apply_what_moto_skips(stack) == ["TopicPolicy"]
    # What infra/README.md tells the operator to run on an existing bucket:
    # aws s3api put-bucket-notification-configuration with the stack's output.
    s3.put_bucket_notification_configuration(
        Bucket=name,
        NotificationConfiguration=json.loads(outputs["BucketNotificationConfiguration"]),
    )
    events = s3.get_bucket_notification_configuration(Bucket=name)["TopicConfigurations"]
    assert events[0]["TopicArn"] == outputs["TopicArn"]
    assert sorted(events[0]["Events"]) == [
        "s3:LifecycleExpiration:*",
        "s3:ObjectCreated:*",
        "s3:ObjectRemoved:*",
        "s3:ObjectRestore:Completed",
    ]

    queue_url = queue_subscribed(moto_endpoint, outputs["TopicArn"], f"s3pull-i-{name[-12:]}")
    s3.put_object(Bucket=name, Key="assets/logo.png", Body=b"png")
    record = receive_s3_record(sqs, queue_url, "assets/logo.png")
    assert record["eventName"].startswith("ObjectCreated:")
    s3.delete_object(Bucket=name, Key="assets/logo.png")
    record = receive_s3_record(sqs, queue_url, "assets/logo.png")
    assert record["eventName"].startswith("ObjectRemoved:")


@pytest.mark.moto_only("deploys the CloudFormation template; LocalStack runs S3, SNS, SQS only")
def test_existing_bucket_sending_to_eventbridge(moto_endpoint: str, name: str) -> None:
    s3, sns, sqs = (client(moto_endpoint, s) for s in ("s3", "sns", "sqs"))
    events = client(moto_endpoint, "events")
    s3.create_bucket(Bucket=name)
    # The bucket already sends to EventBridge, for other consumers: left as it is.
    s3.put_bucket_notification_configuration(
        Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    stack = Stack(
        moto_endpoint,
        name,
        {
            "BucketName": name,
            "CreateBucket": "false",
            "EventSource": "eventbridge",
            "RestoreArchived": "true",
        },
    )

    assert stack.status == "CREATE_COMPLETE"
    outputs = stack.outputs
    assert json.loads(outputs["BucketNotificationConfiguration"]) == {
        "EventBridgeConfiguration": {}
    }
    rule_arn = outputs["EventBridgeRuleArn"]
    rule = events.describe_rule(Name=stack.physical_ids["BucketEventsRule"])
    assert rule["Arn"] == rule_arn and rule["State"] == "ENABLED"
    assert json.loads(rule["EventPattern"]) == {
        "source": ["aws.s3"],
        "detail-type": ["Object Created", "Object Deleted", "Object Restore Completed"],
        "detail": {"bucket": {"name": [name]}},
    }
    targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert [target["Arn"] for target in targets] == [outputs["TopicArn"]]

    policy = statements(stack.role_policy("InstanceRole", "s3pull-agent"))
    assert policy["CheckEventBridgeTargets"]["Resource"] == rule_arn
    # archived = "restore" may restore what it may read, nothing else.
    assert policy["RestoreArchivedObjects"]["Action"] == "s3:RestoreObject"
    assert policy["RestoreArchivedObjects"]["Resource"] == policy["ReadObjects"]["Resource"]
    check_least_privilege(stack, policy)
    assert apply_what_moto_skips(stack) == ["TopicPolicy"]
    # Only this stack's rule may publish; S3 itself no longer needs to.
    topic_policy = statements(
        json.loads(sns.get_topic_attributes(TopicArn=outputs["TopicArn"])["Attributes"]["Policy"])
    )
    assert set(topic_policy) == {"EventBridgePublishesBucketEvents"}
    statement = topic_policy["EventBridgePublishesBucketEvents"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": rule_arn}}

    # moto's rules deliver to SQS, not to SNS targets: publish what the rule would (AWS's
    # shape) and see it reach a server's queue as it is, raw.
    queue_url = queue_subscribed(moto_endpoint, outputs["TopicArn"], f"s3pull-i-{name[-12:]}")
    body = (Path(__file__).parent / "events" / "aws-eventbridge-object-created.json").read_text()
    sns.publish(TopicArn=outputs["TopicArn"], Message=body)
    received = wait_until(
        lambda: sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages"),
        timeout=5,
        what="the event in the queue",
    )
    assert json.loads(received[0]["Body"]) == json.loads(body)


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("", True),
        ("acme-uploads/results/", True),
        ("acme-uploads/runs/2026/", True),
        ("acme-uploads/", False),  # the bucket's root: any server could overwrite all of it
        ("acme-uploads/results", False),
        ("acme-uploads/res*/", False),
    ],
)
def test_trigger_results_must_be_a_folder_of_its_own(value: str, allowed: bool) -> None:
    pattern = load_template()["Parameters"]["TriggerResults"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, value)) is allowed
