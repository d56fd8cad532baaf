"""botocore's data files (service models, endpoints), loaded for s3pull's services only.

botocore's own loader, measured on the agent's S3 and SQS clients (bench/README.md, "What
the profiler says about the agent"):
- it walks every service directory it ships (over 400, two stats each) to list the
  services it knows, once per kind of file asked for: about 60 ms of each first client;
- it makes an OrderedDict of every JSON object: twice the parse time of a plain dict, and
  about 4 MB more held by the two clients for as long as they live;
- the endpoints table it keeps for the life of the session describes every service of
  every partition (300 of them, 7 MB as OrderedDicts); a client needs its own entry.
This loader knows only the services s3pull creates clients for, and those the credential
chain may create: the same files, the same search path (``AWS_DATA_PATH`` included), plain
dicts (ordered since Python 3.7), and the endpoints table cut to those services.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable
from typing import Any, Final

from botocore.exceptions import DataNotFoundError
from botocore.loaders import JSONFileLoader, Loader, create_loader, instance_cache

__all__ = ["CREDENTIAL_SERVICES", "lean_loader"]

# The clients botocore's credential providers create from the same session: STS (assume
# role, web identity), SSO and SSO-OIDC (IAM Identity Center profiles), Sign-In
# (`aws login` profiles). A service left out here would be unknown to that chain.
CREDENTIAL_SERVICES: Final = frozenset({"sts", "sso", "sso-oidc", "signin"})


class _PlainJSONFiles(JSONFileLoader):  # type: ignore[misc]  # botocore is untyped
    """botocore's JSON files as plain dicts; the endpoints table with ``services`` only."""

    def __init__(self, services: frozenset[str]) -> None:
        self._services = services

    def load_file(self, file_path: str) -> Any:
        for suffix in (".json", ".json.gz"):  # botocore's order
            path = file_path + suffix
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as file:
                payload = file.read()
            if suffix == ".json.gz":
                payload = gzip.decompress(payload)
            data = json.loads(payload.decode("utf-8"))
            kind = os.path.basename(file_path)
            if kind == "endpoints":
                for partition in data.get("partitions", ()):
                    everything = partition.get("services", {})
                    partition["services"] = {
                        name: entry for name, entry in everything.items() if name in self._services
                    }
            elif kind == "service-2":
                _drop_documentation(data)
            return data
        return None


def _drop_documentation(model: dict[str, Any]) -> None:
    """A service model without its documentation (40% of S3's model): only the docstrings
    botocore builds on demand read it, and nothing in s3pull asks for them."""
    model.pop("documentation", None)
    for operation in model.get("operations", {}).values():
        operation.pop("documentation", None)
        operation.pop("documentationUrl", None)
        for reference in (operation.get("input"), operation.get("output")):
            if reference is not None:
                reference.pop("documentation", None)
        for error in operation.get("errors", ()):
            error.pop("documentation", None)
    for shape in model.get("shapes", {}).values():
        shape.pop("documentation", None)
        for member in shape.get("members", {}).values():
            member.pop("documentation", None)


class _ServicesLoader(Loader):  # type: ignore[misc]  # botocore is untyped
    """A botocore ``Loader`` that knows ``services`` only."""

    def __init__(self, services: frozenset[str], search_paths: list[str]) -> None:
        super().__init__(
            extra_search_paths=search_paths,
            file_loader=_PlainJSONFiles(services),
            include_default_search_paths=False,
        )
        self._services = services

    @instance_cache  # type: ignore[untyped-decorator]
    def list_available_services(self, type_name: str) -> list[str]:
        # Asks only about the services kept; the answer botocore would give, limited to them.
        found = []
        for service in sorted(self._services):
            try:
                self.list_api_versions(service, type_name)
            except DataNotFoundError:
                continue
            found.append(service)
        return found


def lean_loader(data_path: str | None, services: Iterable[str]) -> Any:
    """A loader for a session's ``data_loader`` component, knowing ``services`` and the
    credential chain's. ``data_path`` is the session's ``data_path`` setting
    (``AWS_DATA_PATH``): the search path is the one botocore would build from it."""
    kept = frozenset(services) | CREDENTIAL_SERVICES
    return _ServicesLoader(kept, list(create_loader(data_path).search_paths))
