"""The lean GetObject (s3http.py) against a real moto server over HTTP: it fetches exactly
the key asked for, answers like the aiobotocore client it stands in for, sends one
request where one will do, and leaves retries to botocore.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from conftest import render_config, wait_until
from faultproxy import FaultProxy, Rule
from faults_conftest import through
from s3pull.aws import error_code, open_clients
from s3pull.config import parse_config
from s3pull.download import Downloaded, IntegrityError, download
from s3pull.emulator import Pipeline
from s3pull.s3http import USER_AGENT

# Keys a URL library would be tempted to normalise, or a shell to split: each must be
# fetched as itself. "a/../b" is not "b" and "a//b" is not "a/b" to S3.
AWKWARD_KEYS = (
    "a/../b",
    "b",
    "a//b",
    "a/b",
    "./c",
    "c",
    "a/./d",
    "a/..",
    "sp ace+plus%25",
    "ü/ñ €",
    "q?x=1#frag",
    "~tilde;semi:colon",
)


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_endpoint) as running:
        yield running


async def lean_client(pipeline: Pipeline, tmp_path: Path) -> Any:
    mirror = {"name": "m", "bucket": pipeline.bucket, "prefix": "", "directory": tmp_path / "m"}
    text = render_config(pipeline, tmp_path / "state", [mirror])
    return open_clients(parse_config(text, tmp_path / "s3pull.toml"), "s3")


@pytest.fixture
async def s3_via_proxy(pipeline: Pipeline, proxy: FaultProxy, tmp_path: Path) -> AsyncIterator[Any]:
    async with await lean_client(through(pipeline, proxy.url), tmp_path) as clients:
        yield clients.s3


async def test_every_key_is_fetched_as_itself_in_one_request(
    s3: Any, pipeline: Pipeline, proxy: FaultProxy, s3_via_proxy: Any
) -> None:
    for index, key in enumerate(AWKWARD_KEYS):
        s3.put_object(Bucket=pipeline.bucket, Key=key, Body=f"{index}:{key}".encode())
    for index, key in enumerate(AWKWARD_KEYS):
        response = await s3_via_proxy.get_object(Bucket=pipeline.bucket, Key=key)
        async with response["Body"] as body:
            assert await body.read() == f"{index}:{key}".encode(), key
        assert proxy.seen("s3", "GetObject", key) == 1, key
    # All of them by the lean path, none by the client.
    assert proxy.user_agents[("s3", "GetObject", USER_AGENT)] == len(AWKWARD_KEYS)


async def test_answers_carry_what_the_client_would_return(
    s3: Any, pipeline: Pipeline, s3_via_proxy: Any
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="k", Body=b"0123456789", ContentType="text/csv")
    lean = await s3_via_proxy.get_object(Bucket=pipeline.bucket, Key="k")
    client = await s3_via_proxy._client.get_object(Bucket=pipeline.bucket, Key="k")
    for response in (lean, client):
        async with response["Body"] as body:
            assert await body.read() == b"0123456789"
    for field in ("ETag", "ContentLength", "LastModified", "ContentType"):
        assert lean[field] == client[field], field

    ranged = await s3_via_proxy.get_object(Bucket=pipeline.bucket, Key="k", Range="bytes=2-4")
    async with ranged["Body"] as body:
        assert await body.read() == b"234"
    assert ranged["ContentRange"] == "bytes 2-4/10"
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206


async def test_final_answers_are_errors_like_the_clients(
    s3: Any, pipeline: Pipeline, proxy: FaultProxy, s3_via_proxy: Any
) -> None:
    etag = s3.put_object(Bucket=pipeline.bucket, Key="k", Body=b"v1")["ETag"]
    cases = {
        "304": {"IfNoneMatch": etag},
        "PreconditionFailed": {"IfMatch": '"0123456789abcdef0123456789abcdef"'},
    }
    for code, condition in cases.items():
        with pytest.raises(ClientError) as raised:
            await s3_via_proxy.get_object(Bucket=pipeline.bucket, Key="k", **condition)
        assert error_code(raised.value) == code
    with pytest.raises(ClientError) as raised:
        await s3_via_proxy.get_object(Bucket=pipeline.bucket, Key="missing")
    assert error_code(raised.value) == "NoSuchKey"
    # Final answers are not asked again.
    assert proxy.user_agents[("s3", "GetObject", USER_AGENT)] == 3
    assert proxy.seen("s3", "GetObject") == 3


async def test_throttling_and_refused_connections_go_through_botocores_retries(
    s3: Any, pipeline: Pipeline, proxy: FaultProxy, s3_via_proxy: Any
) -> None:
    s3.put_object(Bucket=pipeline.bucket, Key="slow", Body=b"eventually")
    s3.put_object(Bucket=pipeline.bucket, Key="refused", Body=b"also")
    proxy.add(Rule("error", "s3", "GetObject", key_prefix="slow", times=3, code="SlowDown"))
    proxy.add(Rule("refuse", "s3", "GetObject", key_prefix="refused", times=2))
    for key, content in (("slow", b"eventually"), ("refused", b"also")):
        response = await s3_via_proxy.get_object(Bucket=pipeline.bucket, Key=key)
        async with response["Body"] as body:
            assert await body.read() == content
    # The lean request, then the client's attempts until one gets through.
    assert proxy.seen("s3", "GetObject", "slow") == 4
    assert proxy.seen("s3", "GetObject", "refused") == 3


def credential_process(tmp_path: Path) -> Path:
    """A credential_process that counts its calls and hands out credentials expiring in a
    minute: botocore must ask again before every request (it refreshes within 10)."""
    script = tmp_path / "credentials.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import datetime, json, pathlib\n"
        f"counter = pathlib.Path({str(tmp_path / 'calls')!r})\n"
        "calls = int(counter.read_text()) + 1 if counter.exists() else 1\n"
        "counter.write_text(str(calls))\n"
        "expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': f'AKIDROTATED{calls}',\n"
        "    'SecretAccessKey': 'secret', 'SessionToken': 'token',\n"
        "    'Expiration': expires.isoformat()}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_credentials_come_from_the_chain_and_are_refreshed(
    s3: Any,
    pipeline: Pipeline,
    proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    profile = tmp_path / "aws-config"
    profile.write_text(f"[profile rotating]\ncredential_process = {credential_process(tmp_path)}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(profile))
    monkeypatch.setenv("AWS_PROFILE", "rotating")
    s3.put_object(Bucket=pipeline.bucket, Key="k", Body=b"signed")
    async with await lean_client(through(pipeline, proxy.url), tmp_path) as clients:
        before = int((tmp_path / "calls").read_text())
        for _ in range(3):
            response = await clients.s3.get_object(Bucket=pipeline.bucket, Key="k")
            async with response["Body"] as body:
                assert await body.read() == b"signed"
    after = int((tmp_path / "calls").read_text())
    assert after >= before + 3
    assert proxy.seen("s3", "GetObject", "k") == 3
    assert proxy.user_agents[("s3", "GetObject", USER_AGENT)] == 3
    # Each GET signed with fresh credentials, handed out after the client was created.
    assert sorted(proxy.access_keys.values()) == [1, 1, 1]
    assert all(int(key.removeprefix("AKIDROTATED")) > before for key in proxy.access_keys)


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA256", "SHA1"])
async def test_where_the_etag_is_no_md5_s3s_checksum_catches_a_corrupt_body(
    s3: Any,
    pipeline: Pipeline,
    proxy: FaultProxy,
    s3_via_proxy: Any,
    tmp_path: Path,
    algorithm: str,
) -> None:
    # SSE-KMS: the ETag is no MD5 of the bytes, so only the checksum S3 stored can tell.
    for key in ("kept", "corrupted"):
        s3.put_object(
            Bucket=pipeline.bucket,
            Key=key,
            Body=b"hello world",
            ChecksumAlgorithm=algorithm,
            ServerSideEncryption="aws:kms",
        )
    root = tmp_path / "out"
    root.mkdir()
    result = await download(s3_via_proxy, pipeline.bucket, "kept", root, ("kept",))
    assert isinstance(result, Downloaded) and (root / "kept").read_bytes() == b"hello world"

    # Same length, other bytes: the size check alone would take it.
    proxy.add(
        Rule("rewrite", "s3", "GetObject", key_prefix="corrupted", old=b"hello", new=b"jello")
    )
    with pytest.raises(IntegrityError, match=f"corrupted: Checksum{algorithm} .* does not match"):
        await download(s3_via_proxy, pipeline.bucket, "corrupted", root, ("corrupted",))
    # Three attempts, each by the lean path, each refused.
    assert proxy.user_agents[("s3", "GetObject", USER_AGENT)] == 1 + 3
    assert sorted(path.name for path in root.iterdir()) == ["kept"]


@pytest.fixture(scope="module")
def checking_moto() -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server that checks every SigV4 signature (after the first few requests,
    which create a user, its access key and a bucket), and that user's credentials."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _accepts(port), what="moto with signature checks")
        anonymous = {"aws_access_key_id": "x", "aws_secret_access_key": "x"}
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **anonymous)
        iam.create_user(UserName="reader")
        policy = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        iam.put_user_policy(
            UserName="reader",
            PolicyName="s3",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [policy]}),
        )
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        yield (
            endpoint,
            {
                "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            },
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


async def test_every_signature_holds_at_a_server_that_checks_them(
    checking_moto: tuple[str, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, credentials = checking_moto
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    writer = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"signed-{uuid.uuid4().hex[:12]}"
    writer.create_bucket(Bucket=bucket)
    keys = [*AWKWARD_KEYS, "tab\\tand\\\\backslash", "*(){}[]!'@$&=,", "long/" + "x" * 900]
    for index, key in enumerate(keys):
        writer.put_object(Bucket=bucket, Key=key, Body=f"{index}".encode())
    unused_queue = f"{endpoint}/123456789012/unused"  # this test sends no SQS request
    pipeline = Pipeline(endpoint, bucket, "", unused_queue, "", 5)
    with FaultProxy(endpoint) as proxy:
        async with await lean_client(through(pipeline, proxy.url), tmp_path) as clients:
            etag = None
            for index, key in enumerate(keys):
                response = await clients.s3.get_object(Bucket=bucket, Key=key)
                async with response["Body"] as body:
                    assert await body.read() == f"{index}".encode(), key
                etag = response["ETag"]
            # Conditions and ranges are signed headers too.
            with pytest.raises(ClientError) as raised:
                await clients.s3.get_object(Bucket=bucket, Key=keys[-1], IfNoneMatch=etag)
            assert error_code(raised.value) == "304"
            ranged = await clients.s3.get_object(Bucket=bucket, Key=keys[0], Range="bytes=0-0")
            async with ranged["Body"] as body:
                assert await body.read() == b"0"
        # Each by the lean path, once: a refused signature would have gone to the client.
        assert proxy.user_agents[("s3", "GetObject", USER_AGENT)] == len(keys) + 2
        assert proxy.seen("s3", "GetObject") == len(keys) + 2
