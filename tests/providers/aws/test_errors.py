"""EC2 error codes -> typed errors: every row of the table, the fallbacks, transport errors,
and the ClientError shape read from real boto3 calls against moto."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

from providers.aws.errors import (
    ERROR_TABLE,
    PREFIX_TABLE,
    RegionConfigError,
    classify,
    error_code,
    lookup,
)
from providers.errors import (
    AuthError,
    CallTimeoutError,
    CapacityError,
    InvalidLaunchError,
    NotConfiguredError,
    ProviderError,
    QuotaError,
    Reach,
    ThrottledError,
    TransientError,
)
from tests.providers.aws.conftest import STATUS, AwsWorld, inject, raw_client

# What the provisioner must do on the errors EC2 documents, as cases (not a copy of the
# table): the code, the class, and how far the failure reaches (what the broker tries next).
CASES: list[tuple[str, type[ProviderError], Reach]] = [
    ("InsufficientInstanceCapacity", CapacityError, Reach.ZONE),  # a stockout: next zone
    ("Unsupported", CapacityError, Reach.ZONE),  # the type is not offered in this AZ
    ("InsufficientFreeAddressesInSubnet", CapacityError, Reach.ZONE),
    ("VcpuLimitExceeded", QuotaError, Reach.REGION),  # the regional family quota
    ("MaxSpotInstanceCountExceeded", QuotaError, Reach.REGION),
    ("OptInRequired", QuotaError, Reach.REGION),  # a region the account has not enabled
    ("RequestLimitExceeded", ThrottledError, Reach.CALL),  # EC2's throttling: back off
    ("ThrottlingException", ThrottledError, Reach.CALL),  # SSM's and Pricing's
    ("InternalError", TransientError, Reach.CALL),
    ("ServiceUnavailable", TransientError, Reach.CALL),
    ("RequestTimeout", CallTimeoutError, Reach.CALL),
    ("AuthFailure", AuthError, Reach.PROVIDER),  # bad credentials: skip AWS
    ("UnauthorizedOperation", AuthError, Reach.PROVIDER),  # a policy without ec2:RunInstances
    ("ExpiredToken", AuthError, Reach.PROVIDER),
    ("InvalidSubnetID.NotFound", RegionConfigError, Reach.REGION),  # config names a bad subnet
    ("ParameterNotFound", RegionConfigError, Reach.REGION),  # no SSM image in this region
    ("InvalidAMIID.NotFound", RegionConfigError, Reach.REGION),  # by prefix
    ("InvalidAMIID.Malformed", RegionConfigError, Reach.REGION),
    ("InvalidParameterValue", InvalidLaunchError, Reach.REQUEST),
    ("InvalidParameterDependency", InvalidLaunchError, Reach.REQUEST),  # by prefix
    ("IdempotentParameterMismatch", InvalidLaunchError, Reach.REQUEST),
]


def client_error(
    code: str | None,
    status: int = 400,
    message: str = "the cloud's message",
    headers: dict[str, str] | None = None,
    operation: str = "RunInstances",
) -> ClientError:
    error: dict[str, Any] = {"Message": message}
    if code is not None:
        error["Code"] = code
    return ClientError(
        {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
        },
        operation,
    )


@pytest.mark.parametrize(("code", "cls", "reach"), CASES, ids=[c[0] for c in CASES])
def test_documented_codes(code: str, cls: type[ProviderError], reach: Reach) -> None:
    for status in (400, STATUS.get(code, 400), 500, 503):  # the code wins over the status
        err = classify(client_error(code, status))
        assert (type(err), err.reach, err.code, err.provider) == (cls, reach, code, "aws")
        assert "the cloud's message" in err.message


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_every_row_of_the_table_wins_over_the_http_status(code: str) -> None:
    """Whatever class a row names, classify gives exactly it, for any status."""
    for status in (400, 401, 403, 500, 503):
        assert type(classify(client_error(code, status))) is ERROR_TABLE[code]


@pytest.mark.parametrize(("prefix", "cls"), PREFIX_TABLE)
def test_prefix_rows_match_a_family_of_codes(prefix: str, cls: type[ProviderError]) -> None:
    code = prefix + "SomethingNew"
    assert code not in ERROR_TABLE
    assert lookup(code) is cls and type(classify(client_error(code))) is cls
    assert lookup("X" + code) is None  # a prefix, not a substring


def test_region_config_error_is_region_scoped_not_a_quota() -> None:
    err = classify(client_error("InvalidAMIID.NotFound"))
    assert err.reach is Reach.REGION and err.reason == "NotConfigured"
    assert not isinstance(err, QuotaError)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_unknown_code_with_5xx_is_transient(status: int) -> None:
    err = classify(client_error("SomethingBrandNew", status))
    assert type(err) is TransientError
    assert (err.reach, err.code) == (Reach.CALL, "SomethingBrandNew")


@pytest.mark.parametrize("status", [400, 403, 404, 409])
def test_unknown_code_otherwise_is_an_invalid_request_keeping_the_code(status: int) -> None:
    err = classify(client_error("SomethingBrandNew", status))
    assert type(err) is InvalidLaunchError
    assert (err.reach, err.code) == (Reach.REQUEST, "SomethingBrandNew")


def test_no_code_at_all_keeps_the_status_as_code() -> None:
    err = classify(client_error(None, 503, message=""))
    assert type(err) is TransientError and err.code == "503"
    assert "HTTP 503" in err.message


def test_message_text_is_never_used_to_classify() -> None:
    misleading = "insufficient capacity; vCPU limit exceeded; throttled; internal error"
    assert type(classify(client_error("AuthFailure", 401, misleading))) is AuthError
    assert type(classify(client_error("Throttling", 400, misleading))) is ThrottledError
    assert type(classify(client_error("Whatever", 400, misleading))) is InvalidLaunchError


def test_opt_in_required_says_region_not_enabled() -> None:
    err = classify(client_error("OptInRequired", 401, "You are not subscribed to this service."))
    assert "region not enabled" in err.message
    assert "You are not subscribed" in err.message


def test_message_names_the_operation_and_redacts_access_key_ids() -> None:
    err = classify(
        client_error("AuthFailure", 401, "key AKIAIOSFODNN7EXAMPLE was refused", operation="X")
    )
    assert err.message.startswith("X: ")
    assert "AKIAIOSFODNN7EXAMPLE" not in err.message and "<access-key-id>" in err.message


def test_retry_after_header_is_kept() -> None:
    err = classify(client_error("Throttling", 429, headers={"retry-after": "7"}))
    assert err.retry_after == 7.0
    assert classify(client_error("Throttling", 429)).retry_after is None


@pytest.mark.parametrize(
    ("exc", "cls", "reach"),
    [
        (EndpointConnectionError(endpoint_url="https://ec2.x"), TransientError, Reach.CALL),
        (ConnectTimeoutError(endpoint_url="https://ec2.x"), CallTimeoutError, Reach.CALL),
        (ReadTimeoutError(endpoint_url="https://ec2.x"), CallTimeoutError, Reach.CALL),
        (
            ConnectionClosedError(endpoint_url="https://ec2.x"),
            TransientError,
            Reach.CALL,
        ),
        (ResponseParserError("invalid XML received: <html>500</html>"), TransientError, Reach.CALL),
        (NoCredentialsError(), AuthError, Reach.PROVIDER),
        (ParamValidationError(report="MinCount is missing"), InvalidLaunchError, Reach.REQUEST),
        (ValueError("a bug"), InvalidLaunchError, Reach.REQUEST),
    ],
)
def test_transport_and_other_errors(exc: Exception, cls: type[ProviderError], reach: Reach) -> None:
    err = classify(exc)
    assert type(err) is cls
    assert err.reach is reach
    assert err.code == type(exc).__name__
    assert err.provider == "aws"


def test_no_region_is_not_configured() -> None:
    from botocore.exceptions import NoRegionError

    err = classify(NoRegionError())
    assert type(err) is NotConfiguredError and err.reach is Reach.PROVIDER


def test_a_provider_error_passes_through() -> None:
    original = CapacityError("x", code="InsufficientInstanceCapacity", provider="aws")
    assert classify(original) is original


def test_error_code_reads_only_client_errors() -> None:
    assert error_code(client_error("InvalidInstanceID.NotFound")) == "InvalidInstanceID.NotFound"
    assert error_code(ValueError("InvalidInstanceID.NotFound")) is None


# -- the real ClientError shape, raised by boto3 against moto --------------------------------

THROUGH_BOTO3 = [
    ("InsufficientInstanceCapacity", CapacityError, Reach.ZONE),
    ("VcpuLimitExceeded", QuotaError, Reach.REGION),
    ("RequestLimitExceeded", ThrottledError, Reach.CALL),
    ("InternalError", TransientError, Reach.CALL),
    ("UnauthorizedOperation", AuthError, Reach.PROVIDER),
    ("InvalidAMIID.NotFound", RegionConfigError, Reach.REGION),
    ("IdempotentParameterMismatch", InvalidLaunchError, Reach.REQUEST),
]


@pytest.mark.parametrize(("code", "cls", "reach"), THROUGH_BOTO3)
def test_injected_error_through_boto3(
    aws: AwsWorld, code: str, cls: type[ProviderError], reach: Reach
) -> None:
    ec2 = raw_client("us-east-1")
    injection = inject(ec2, "RunInstances", [code])
    with pytest.raises(ClientError) as caught:
        ec2.run_instances(
            ImageId=aws.images["us-east-1"],
            InstanceType="p5.48xlarge",
            MinCount=2,
            MaxCount=2,
            ClientToken="errors-test",
        )
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == STATUS.get(code, 400)
    err = classify(caught.value)
    assert (type(err), err.reach, err.code) == (cls, reach, code)
    assert err.message.startswith("RunInstances: injected")
    assert injection.calls == 1
    assert aws.instances() == []  # the hook answered before moto created anything


def test_unknown_code_with_5xx_through_boto3(aws: AwsWorld) -> None:
    ec2 = raw_client("us-west-2")
    inject(ec2, "DescribeInstances", ["BrandNewFailure"], status=502)
    with pytest.raises(ClientError) as caught:
        ec2.describe_instances()
    err = classify(caught.value)
    assert (type(err), err.code) == (TransientError, "BrandNewFailure")


def test_moto_native_errors_are_read_the_same_way(aws: AwsWorld) -> None:
    """Errors moto itself answers with (an XML body, as EC2 does), not injected ones."""
    ec2 = raw_client("us-east-1")
    with pytest.raises(ClientError) as caught:
        ec2.run_instances(
            ImageId=aws.images["us-east-1"],
            InstanceType="g5.xlarge",
            MinCount=1,
            MaxCount=1,
            SubnetId="subnet-0000000000000000",
        )
    err = classify(caught.value)
    assert (type(err), err.reach, err.code) == (
        RegionConfigError,
        Reach.REGION,
        "InvalidSubnetID.NotFound",
    )
    with pytest.raises(ClientError) as missing:
        ec2.terminate_instances(InstanceIds=["i-0123456789abcdef0"])
    assert error_code(missing.value) == "InvalidInstanceID.NotFound"
    assert type(classify(missing.value)) is InvalidLaunchError
