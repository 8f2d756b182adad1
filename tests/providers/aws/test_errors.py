"""EC2 error codes -> typed errors: every row of the table, the fallbacks, transport errors,
and the ClientError shape read from real boto3 calls against moto."""

from __future__ import annotations

import uuid
from typing import Any
from xml.sax.saxutils import escape

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError, create_parser

from providers.aws.errors import (
    ERROR_TABLE,
    PREFIX_TABLE,
    RegionConfigError,
    classify,
    error_code,
    lookup,
)
from providers.base import TAG_ATTEMPT, TAG_BROKER, TAG_CLUSTER, LaunchRequest
from providers.errors import (
    AuthError,
    CallTimeoutError,
    CapacityError,
    InvalidLaunchError,
    NotConfiguredError,
    NotOfferedError,
    ProviderError,
    QuotaError,
    Reach,
    ThrottledError,
    TransientError,
    UnrecognizedError,
)
from tests.providers.aws.conftest import STATUS, AwsWorld, inject, raw_client

# Every row of the table with the words EC2 really sends: (code, HTTP status, message,
# class, reach). Sources: EC2's error code reference and public issue threads of other
# provisioning tools (ParallelCluster, Karpenter, Terraform AWS provider, OpenShift Hive,
# Cloud9/Auto Scaling troubleshooting pages) that quote the cloud's answer verbatim.
REAL: list[tuple[str, int, str, type[ProviderError], Reach]] = [
    ("InsufficientInstanceCapacity", 500,
     "We currently do not have sufficient p4d.24xlarge capacity in the Availability Zone you "
     "requested (us-west-2b). Our system will be working on provisioning additional "
     "capacity. You can currently get p4d.24xlarge capacity by not specifying an "
     "Availability Zone in your request or choosing us-west-2a, us-west-2c.",
     CapacityError, Reach.ZONE),
    ("InsufficientHostCapacity", 500,
     "There is no available capacity for the requested instance type.", CapacityError,
     Reach.ZONE),
    ("InsufficientCapacityOnHost", 500,
     "There is not enough capacity on the Dedicated Host to launch or start the instance.",
     CapacityError, Reach.ZONE),
    ("InsufficientReservedInstanceCapacity", 500,
     "Insufficient capacity for reserved instances.", CapacityError, Reach.ZONE),
    ("InsufficientCapacity", 500,
     "There is not enough capacity to fulfill your import instance request.", CapacityError,
     Reach.ZONE),
    ("UnfulfillableCapacity", 400,
     "Unable to fulfill capacity due to your request configuration. Please adjust your "
     "request and try again.", CapacityError, Reach.ZONE),
    ("InsufficientFreeAddressesInSubnet", 400,
     "The specified subnet does not have enough free addresses to satisfy the request.",
     CapacityError, Reach.ZONE),
    ("InsufficientAddressCapacity", 500,
     "Not enough available addresses to satisfy your minimum request.", CapacityError,
     Reach.ZONE),
    ("SpotMaxPriceTooLow", 400,
     "Your Spot request price of 0.001 is lower than the minimum required Spot request "
     "fulfillment price of 0.0031.", CapacityError, Reach.ZONE),
    ("Unsupported", 400,
     "Your requested instance type (m5.large) is not supported in your requested "
     "Availability Zone (us-east-1e). Please retry your request by not specifying an "
     "Availability Zone or choosing us-east-1a, us-east-1b, us-east-1c, us-east-1d, "
     "us-east-1f.", NotOfferedError, Reach.ZONE),
    ("Unsupported", 400,
     "The requested configuration is currently not supported. Please check the "
     "documentation for supported configurations.", RegionConfigError, Reach.REGION),
    ("MaxSpotInstanceCountExceeded", 400, "Max spot instance count exceeded", QuotaError,
     Reach.REGION),
    ("VcpuLimitExceeded", 400,
     "You have requested more vCPU capacity than your current vCPU limit of 0 allows for "
     "the instance bucket that the specified instance type belongs to. Please visit "
     "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.",
     QuotaError, Reach.REGION),
    ("InstanceLimitExceeded", 400,
     "Your quota allows for 0 more running instance(s). You requested at least 2",
     QuotaError, Reach.REGION),
    ("VolumeLimitExceeded", 400,
     "You have exceeded your maximum gp3 storage limit of 50 TiB in this region. Please "
     "contact AWS Support to request an Elastic Block Store service limit increase.",
     QuotaError, Reach.REGION),
    ("OptInRequired", 401,
     "You are not subscribed to this service. Please go to http://aws.amazon.com to "
     "subscribe.", RegionConfigError, Reach.REGION),
    ("PendingVerification", 400,
     "Your request for accessing resources in this region is being validated, and you will "
     "not be able to launch additional resources in this region until the validation is "
     "complete. We will notify you by email once your request has been validated. While "
     "normally resolved within minutes, please allow up to 4 hours for this process to "
     "complete.", RegionConfigError, Reach.REGION),
    ("RequestLimitExceeded", 503, "Request limit exceeded.", ThrottledError, Reach.CALL),
    ("Throttling", 400, "Rate exceeded", ThrottledError, Reach.CALL),
    ("ThrottlingException", 400, "Rate exceeded", ThrottledError, Reach.CALL),
    ("EC2ThrottledException", 503, "Rate exceeded", ThrottledError, Reach.CALL),
    ("RequestThrottled", 503, "Request throttled", ThrottledError, Reach.CALL),
    ("InternalError", 500, "An internal error has occurred", TransientError, Reach.CALL),
    ("InternalFailure", 500,
     "The request processing has failed because of an unknown error, exception or failure.",
     TransientError, Reach.CALL),
    ("InternalErrorException", 500, "An internal error occurred.", TransientError, Reach.CALL),
    ("Unavailable", 503, "The server is overloaded and can't handle the request.",
     TransientError, Reach.CALL),
    ("ServiceUnavailable", 503, "The request has failed due to a temporary failure of the "
     "server.", TransientError, Reach.CALL),
    ("RequestTimeout", 408, "The request timed out.", CallTimeoutError, Reach.CALL),
    ("UnauthorizedOperation", 403,
     "You are not authorized to perform this operation. Encoded authorization failure "
     "message: 4tr1cA...", AuthError, Reach.PROVIDER),
    ("AuthFailure", 401,
     "AWS was not able to validate the provided access credentials", AuthError,
     Reach.PROVIDER),
    ("Blocked", 403,
     "This account is currently blocked and not recognized as a valid account. Please "
     "contact aws-verification@amazon.com if you have questions.", AuthError, Reach.PROVIDER),
    ("ExpiredToken", 400, "The security token included in the request is expired", AuthError,
     Reach.PROVIDER),
    ("InvalidClientTokenId", 403,
     "The security token included in the request is invalid.", AuthError, Reach.PROVIDER),
    ("SignatureDoesNotMatch", 403,
     "The request signature we calculated does not match the signature you provided. Check "
     "your AWS Secret Access Key and signing method.", AuthError, Reach.PROVIDER),
    ("AccessDenied", 403, "User: arn:aws:iam::123456789012:user/ci is not authorized to "
     "perform: sts:GetCallerIdentity", AuthError, Reach.PROVIDER),
    ("AccessDeniedException", 400, "User: arn:aws:iam::123456789012:user/ci is not "
     "authorized to perform: ssm:GetParameter", AuthError, Reach.PROVIDER),
    ("InvalidSubnetID.NotFound", 400, "The subnet ID 'subnet-0a1b2c3d' does not exist",
     RegionConfigError, Reach.REGION),
    ("InvalidGroup.NotFound", 400, "The security group 'sg-0a1b2c3d' does not exist",
     RegionConfigError, Reach.REGION),
    ("InvalidKeyPair.NotFound", 400, "The key pair 'burst' does not exist",
     RegionConfigError, Reach.REGION),
    ("ParameterNotFound", 400, "Parameter /aws/service/deeplearning/ami/x86_64/base not "
     "found.", RegionConfigError, Reach.REGION),
    ("InvalidParameterValue", 400,
     "Enhanced networking with the Elastic Network Adapter (ENA) is required for the "
     "'p4d.24xlarge' instance type. Ensure that you are using an AMI that is enabled for "
     "ENA.", RegionConfigError, Reach.REGION),
    ("InvalidParameterCombination", 400,
     "The architecture 'x86_64' of the specified instance type does not match the "
     "architecture 'arm64' of the specified AMI. Specify an instance type and an AMI that "
     "have matching architectures, and try again.", RegionConfigError, Reach.REGION),
    ("MissingParameter", 400, "The request must contain the parameter ImageId",
     InvalidLaunchError, Reach.REQUEST),
    ("UnknownParameter", 400, "The parameter Foo is not recognized", InvalidLaunchError,
     Reach.REQUEST),
    ("IdempotentParameterMismatch", 400,
     "Arguments on this idempotent request are inconsistent with arguments used in previous "
     "request(s).", InvalidLaunchError, Reach.REQUEST),
]  # fmt: skip


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


def ec2_error_xml(code: str, message: str) -> bytes:
    """EC2's error body, as the Query API sends it."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        "</Error></Errors><RequestID>5a6bd3d3-6d0e-4e30-9c1c-3a2ad9b1a6f2</RequestID></Response>"
    ).encode()


def launch_request(aws: AwsWorld) -> LaunchRequest:
    """One g5.xlarge in usw2-az1: one RunInstances call, no placement group."""
    shape = aws.catalog.get("aws:us-west-2:g5.xlarge:on-demand")
    assert shape is not None
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    return LaunchRequest(
        shape=shape,
        zone="usw2-az1",
        count=1,
        token=f"tok-{uuid.uuid4().hex}",
        tags={TAG_BROKER: "test", TAG_CLUSTER: cluster, TAG_ATTEMPT: "c1-a1"},
    )


def test_every_row_has_a_test_with_the_clouds_words() -> None:
    assert {row[0] for row in REAL} == set(ERROR_TABLE)


@pytest.mark.parametrize(
    ("code", "status", "message", "cls", "reach"),
    REAL,
    ids=[f"{r[0]}-{r[3].__name__}" for r in REAL],
)
def test_error_table_row_through_the_adapter(
    aws: AwsWorld,
    code: str,
    status: int,
    message: str,
    cls: type[ProviderError],
    reach: Reach,
) -> None:
    """EC2's XML answer, parsed by botocore's own EC2 parser, raised by the real client
    (a before-call hook answers before moto sees the call: nothing is created behind the
    error), classified by the adapter."""
    provider = aws.provider()
    client = provider.client("us-west-2")
    sent: list[str] = []

    def answer(params: dict[str, Any], model: Any, **_: Any) -> tuple[AWSResponse, Any]:
        sent.append(params["url"])
        body = ec2_error_xml(code, message)
        parsed = create_parser("ec2").parse(
            {"body": body, "headers": {}, "status_code": status}, model.output_shape
        )
        return AWSResponse(params["url"], status, {}, None), parsed

    client.meta.events.register("before-call.ec2.RunInstances", answer)
    with pytest.raises(ProviderError) as caught:
        provider.launch(launch_request(aws), timeout=60)

    err = caught.value
    assert (type(err), err.reach, err.code, err.provider) == (cls, reach, code, "aws")
    assert " ".join(message.split())[:60] in err.message  # the cloud's words are kept
    assert len(sent) == 1  # one call: botocore never retries, tenacity is the broker's
    assert aws.instances() == []


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_every_row_of_the_table_wins_over_the_http_status(code: str) -> None:
    """Whatever class a row names, classify gives exactly it, for any status."""
    words = next(m for c, _, m, _, _ in REAL if c == code)
    for status in (400, 401, 403, 500, 503):
        assert type(classify(client_error(code, status, words))) is ERROR_TABLE[code] or (
            code == "Unsupported"  # its message names the zone
        )


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


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, UnrecognizedError),
        (404, UnrecognizedError),
        (409, UnrecognizedError),
        (401, AuthError),
        (403, AuthError),
        (429, ThrottledError),
    ],
)
def test_unknown_code_gets_the_default_of_its_status_family(status: int, cls: type) -> None:
    """Never a failed request: a 4xx nobody knows moves on to the next region, loudly."""
    err = classify(client_error("SomethingBrandNew", status, "what EC2 said"))
    assert type(err) is cls and err.code == "SomethingBrandNew"
    if cls is UnrecognizedError:
        assert err.reach is Reach.REGION
        assert "unrecognized aws error SomethingBrandNew (HTTP" in err.message
        assert "what EC2 said" in err.message


def test_no_code_at_all_keeps_the_status_as_code() -> None:
    err = classify(client_error(None, 503, message=""))
    assert type(err) is TransientError and err.code == "503"
    assert "HTTP 503" in err.message


def test_the_message_decides_only_for_unsupported() -> None:
    """Words that look like another scope never move a code that is not Unsupported."""
    misleading = "not supported in your requested Availability Zone; vCPU limit; throttled"
    assert type(classify(client_error("AuthFailure", 401, misleading))) is AuthError
    assert type(classify(client_error("Throttling", 400, misleading))) is ThrottledError
    assert type(classify(client_error("InsufficientInstanceCapacity", 500, misleading))) is (
        CapacityError
    )
    assert type(classify(client_error("Whatever", 400, misleading))) is UnrecognizedError


def test_unsupported_naming_the_zone_says_so() -> None:
    words = next(m for c, _, m, cls, _ in REAL if c == "Unsupported" and cls is NotOfferedError)
    err = classify(client_error("Unsupported", 400, words))
    assert err.message.startswith("RunInstances: instance type not offered in this avail")


def test_opt_in_required_says_region_not_enabled() -> None:
    err = classify(client_error("OptInRequired", 401, "You are not subscribed to this service."))
    assert "region not enabled" in err.message
    assert "You are not subscribed" in err.message
    assert type(err) is RegionConfigError and err.reason == "NotConfigured"  # not a quota


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
    assert type(classify(missing.value)) is InvalidLaunchError  # an id of ours, by prefix
