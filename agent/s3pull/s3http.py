"""GetObject on a bare aiohttp session, signed with botocore's SigV4: the hot path's one call.

A full sync is one GET per object, and botocore's generic request pipeline (event hooks,
endpoint rules, serialisation, parsing) cost about 60% of the agent's CPU per object
(bench/README.md, "What the profiler says"). ``LeanS3`` sends GetObject itself: the URL
prefix of each bucket comes from the client's own endpoint rules (resolved once per bucket
by presigning), the request is signed with ``botocore.auth.S3SigV4Auth`` using the
session's credentials (frozen per request, so a refreshed role is picked up), and the
response is handed back in the shape the aiobotocore client returns.

Only the answers that are final are taken from the lean request: 200/206 and 304, and the
4xx whose meaning no retry changes (missing, denied, archived, precondition). Everything
else (5xx, SlowDown, a reset before the headers, a region redirect, clock skew, an expired
token) goes again through the aiobotocore client, whose retries, backoff and redirects
apply unchanged. Every other S3 operation is the aiobotocore client's.
"""

from __future__ import annotations

import ssl
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError
from botocore.httpsession import get_cert_path
from yarl import URL

__all__ = ["USER_AGENT", "LeanS3"]

# Error codes S3 gives the same way however often it is asked: the answer stands.
FINAL_ERROR_CODES: Final = frozenset(
    {"NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidObjectState", "PreconditionFailed"}
)
FINAL_STATUSES: Final = frozenset({304, 404, 412})
# A bucket in another region than the client's: botocore follows S3 there (and remembers
# the region); the lean path leaves that bucket to it from then on.
REGION_ERRORS: Final = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed"})
# Request parameter -> header, for the parameters the agent's GETs use.
CONDITIONS: Final = {"IfNoneMatch": "If-None-Match", "IfMatch": "If-Match", "Range": "Range"}
# Response header -> response key, as botocore names them.
RESPONSE_HEADERS: Final = {
    "etag": "ETag",
    "content-range": "ContentRange",
    "content-type": "ContentType",
    "x-amz-version-id": "VersionId",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-customer-algorithm": "SSECustomerAlgorithm",
    "x-amz-storage-class": "StorageClass",
    "x-amz-restore": "Restore",
    "x-amz-checksum-crc32": "ChecksumCRC32",
    "x-amz-checksum-crc32c": "ChecksumCRC32C",
    "x-amz-checksum-crc64nvme": "ChecksumCRC64NVME",
    "x-amz-checksum-sha1": "ChecksumSHA1",
    "x-amz-checksum-sha256": "ChecksumSHA256",
    "x-amz-checksum-type": "ChecksumType",
}
PROBE_KEY: Final = "s3pull-probe"
# Says in S3's access logs (and CloudTrail) which requests took the lean path.
USER_AGENT: Final = f"s3pull-lean-get aiohttp/{aiohttp.__version__}"
ERROR_BODY_LIMIT: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Prefix:
    url: str  # scheme, host and path up to the key, ending in "/"
    proxy: str | None
    region: str  # the signing region botocore chose for the bucket


class LeanBody:
    """The response body, read the way download.py and trigger.py read botocore's."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aenter__(self) -> LeanBody:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        # Released, not closed, when read to the end: the connection is reused.
        self._response.release()

    async def read(self, amount: int = -1) -> bytes:
        return await self._response.content.read(amount)

    async def iter_chunks(self, chunk_size: int) -> AsyncIterator[bytes]:
        async for chunk in self._response.content.iter_chunked(chunk_size):
            yield chunk


class LeanS3:
    """An aiobotocore S3 client whose ``get_object`` is sent lean; any other attribute is
    the client's own."""

    def __init__(
        self,
        client: Any,
        credentials: Any,
        region: str,
        connections: int,
        read_timeout: float,
        ca_bundle: str | None,
    ) -> None:
        self._client = client
        self._credentials = credentials
        self._region = region
        self._prefixes: dict[str, _Prefix] = {}
        # Buckets left to the client: a region redirect answered, or signed otherwise
        # than plain SigV4 for s3 (S3 Express directory buckets: CreateSession).
        self._elsewhere: set[str] = set()
        context = ssl.create_default_context(cafile=ca_bundle or get_cert_path(True))
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, ssl=context),
            timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=read_timeout),
            # Not trust_env: it reads the proxy variables and ~/.netrc (in a thread) for
            # every request. The proxy is looked up once per bucket instead (_prefix).
            trust_env=False,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "Content-Type"),
            headers={"User-Agent": USER_AGENT},
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def close(self) -> None:
        await self._http.close()

    async def get_object(self, **params: Any) -> dict[str, Any]:
        """GetObject with ``Bucket``, ``Key`` and optionally ``IfNoneMatch``, ``IfMatch``
        and ``Range``; raises ``ClientError`` like the client does. Other parameters
        (SSE-C keys, versions, checksum mode) take the client's own path."""
        if (
            self._credentials is None
            or set(params) - {"Bucket", "Key", *CONDITIONS}
            or not isinstance(params.get("Key"), str)
            or params["Bucket"] in self._elsewhere
            or (prefix := await self._prefix(params["Bucket"])) is None
        ):
            return await self._by_client(params)
        try:
            response = await self._send(params, prefix)
        except (aiohttp.ClientError, TimeoutError):
            # Before any byte of the body: the client's retries decide, with backoff.
            return await self._by_client(params)
        if response.status in (200, 206):
            if "Content-Length" in response.headers and "Last-Modified" in response.headers:
                return _as_botocore(response)
            # Not what S3 sends (a proxy re-chunking the body?): the client's parser decides.
            response.release()
            return await self._by_client(params)
        try:
            error = await _error_of(response)
        except (aiohttp.ClientError, TimeoutError):
            return await self._by_client(params)  # cut off while reading the error
        code = error.response["Error"]["Code"]
        if response.status in FINAL_STATUSES or code in FINAL_ERROR_CODES:
            raise error
        if response.status in (301, 307) or code in REGION_ERRORS:
            self._elsewhere.add(params["Bucket"])
        return await self._by_client(params)

    async def _by_client(self, params: dict[str, Any]) -> dict[str, Any]:
        response: dict[str, Any] = await self._client.get_object(**params)
        return response

    async def _send(self, params: dict[str, Any], prefix: _Prefix) -> aiohttp.ClientResponse:
        url = prefix.url + quote(params["Key"], safe="/~")
        headers = {header: params[name] for name, header in CONDITIONS.items() if name in params}
        # As the client asks by default: S3 sends the checksum it stored at upload, which
        # download.py verifies where the ETag is no MD5 (SSE-KMS, multipart).
        headers["x-amz-checksum-mode"] = "ENABLED"
        frozen = await self._credentials.get_frozen_credentials()
        request = AWSRequest(method="GET", url=url, headers=headers)
        S3SigV4Auth(frozen, "s3", prefix.region).add_auth(request)
        # encoded=True: the key's path is sent as signed. yarl would otherwise resolve "."
        # and ".." segments, fetching (and signing for) another key than the one asked.
        return await self._http.get(
            URL(url, encoded=True),
            headers=dict(request.headers.items()),
            allow_redirects=False,
            proxy=prefix.proxy,
        )

    async def _prefix(self, bucket: str) -> _Prefix | None:
        """The URL every key of ``bucket`` is appended to, as the client's endpoint rules
        make it (virtual-hosted or path style, FIPS, dualstack, a custom endpoint), and
        the region they sign for: read off one presigned URL, once per bucket. With the
        proxy botocore would use for it (HTTP_PROXY, HTTPS_PROXY, NO_PROXY). None for a
        bucket the client must sign otherwise than with plain SigV4 for s3."""
        if bucket in self._elsewhere:
            return None
        if bucket not in self._prefixes:
            presigned = await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": PROBE_KEY}
            )
            parts = urlsplit(presigned)
            query = parse_qs(parts.query)
            # A SigV4 presigned URL names its scope (AKID/date/region/service/aws4_request);
            # botocore presigns S3 with SigV2 where it may, and then the client's region is
            # the one its requests are signed for.
            credential = query.get("X-Amz-Credential", [""])[0]
            scope = credential.split("/") if credential else ["", "", self._region, "s3"]
            if (
                not parts.path.endswith("/" + PROBE_KEY)
                or len(scope) < 4
                or scope[3] != "s3"
                or "X-Amz-S3session-Token" in query
                or bucket.endswith("--x-s3")
            ):
                self._elsewhere.add(bucket)
                return None
            url = urlunsplit((parts.scheme, parts.netloc, parts.path[: -len(PROBE_KEY)], "", ""))
            proxy = None
            if parts.hostname and not proxy_bypass(parts.hostname):
                proxy = getproxies().get(parts.scheme)
                if proxy and "://" not in proxy:
                    proxy = "http://" + proxy  # "proxy:3128", as botocore reads it
            self._prefixes[bucket] = _Prefix(url, proxy, scope[2])
        return self._prefixes[bucket]


def _as_botocore(response: aiohttp.ClientResponse) -> dict[str, Any]:
    headers = response.headers
    result: dict[str, Any] = {
        "Body": LeanBody(response),
        "ContentLength": int(headers["Content-Length"]),
        "LastModified": parsedate_to_datetime(headers["Last-Modified"]),
        "ResponseMetadata": {"HTTPStatusCode": response.status, "HTTPHeaders": dict(headers)},
    }
    for header, name in RESPONSE_HEADERS.items():
        if header in headers:
            result[name] = headers[header]
    return result


async def _error_of(response: aiohttp.ClientResponse) -> ClientError:
    """The ``ClientError`` botocore would raise: S3's XML error code, or the bare status
    when there is no body (304, HEAD-like answers)."""
    async with response:
        # S3's error documents are a few hundred bytes; never hold more of an answer.
        body = await response.content.read(ERROR_BODY_LIMIT)
    code, message = str(response.status), response.reason or ""
    if body:
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            pass
        else:
            code = root.findtext("Code") or code
            message = root.findtext("Message") or message
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {
                "HTTPStatusCode": response.status,
                "HTTPHeaders": dict(response.headers),
            },
        },
        "GetObject",
    )
