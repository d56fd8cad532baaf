"""The lean botocore loader (botodata.py) gives s3pull's services exactly what botocore's
own loader gives them: the same models, the same endpoints in every partition and region."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from botocore.exceptions import BotoCoreError, UnknownServiceError
from botocore.loaders import create_loader
from botocore.regions import EndpointResolver

from s3pull.aws import Service
from s3pull.botodata import CREDENTIAL_SERVICES, lean_loader

SERVICES = sorted(set(get_args(Service)) | CREDENTIAL_SERVICES)


def resolver(loader: Any) -> EndpointResolver:
    endpoints, path = loader.load_data_with_path("endpoints")
    return EndpointResolver(endpoints, uses_builtin_data=loader.is_builtin_path(path))


def outcome(resolver: EndpointResolver, service: str, region: str, **flags: bool) -> object:
    """What resolving gives: the endpoint, or the error (a variant a region lacks)."""
    try:
        return resolver.construct_endpoint(service, region, **flags)
    except BotoCoreError as exc:
        return (type(exc), str(exc))


def undocumented(model: Any) -> Any:
    """``model`` without any documentation, wherever it is."""
    if isinstance(model, dict):
        return {
            key: undocumented(value)
            for key, value in model.items()
            if key not in ("documentation", "documentationUrl")
        }
    if isinstance(model, list):
        return [undocumented(value) for value in model]
    return model


def test_models_are_botocores_own_but_for_documentation() -> None:
    lean, full = lean_loader(None, get_args(Service)), create_loader()
    assert lean.list_available_services("service-2") == SERVICES
    for service in SERVICES:
        # A dict equals the OrderedDict botocore would have made of the same JSON.
        rules = lean.load_service_model(service, "endpoint-rule-set-1")
        assert rules == full.load_service_model(service, "endpoint-rule-set-1")
        model = lean.load_service_model(service, "service-2")
        assert undocumented(model) == undocumented(full.load_service_model(service, "service-2"))
        shapes = model["shapes"].values()
        assert not any("documentation" in shape for shape in shapes)


def test_endpoints_resolve_as_botocores_own_in_every_partition_and_region() -> None:
    full_loader = create_loader()
    lean, full = resolver(lean_loader(None, get_args(Service))), resolver(full_loader)
    partitions = full_loader.load_data("endpoints")["partitions"]
    checked = 0
    for partition in partitions:
        name = partition["partition"]
        for service in SERVICES:
            assert lean.get_available_endpoints(service, name) == full.get_available_endpoints(
                service, name
            )
            # Every region, and the pseudo-regions a service lists (aws-global, fips-...).
            listed = partition["services"].get(service, {}).get("endpoints", {})
            for region in sorted(set(partition["regions"]) | set(listed)):
                for fips in (False, True):
                    for dualstack in (False, True):
                        flags = {"use_dualstack_endpoint": dualstack, "use_fips_endpoint": fips}
                        expected = outcome(full, service, region, **flags)
                        assert outcome(lean, service, region, **flags) == expected, (
                            service,
                            region,
                            flags,
                        )
                        checked += 1
    assert checked > 1000  # every partition's regions were there to compare


def test_other_services_are_unknown_to_it() -> None:
    with pytest.raises(UnknownServiceError):
        lean_loader(None, ["s3"]).load_service_model("dynamodb", "service-2")


def test_search_path_is_botocores_for_the_same_aws_data_path(tmp_path: Any) -> None:
    data_path = f"{tmp_path / 'models'}:~/more"
    expected = create_loader(data_path).search_paths
    assert lean_loader(data_path, ["s3"]).search_paths == expected
