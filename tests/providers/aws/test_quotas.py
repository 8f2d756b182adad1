"""AwsProvider.quotas against moto: Service Quotas GetServiceQuota per GPU family and market,
minus the vCPUs the account already runs (DescribeInstances, through moto).

moto 5.2 implements Service Quotas for the ``vpc`` service only: for ``ec2`` it answers
NoSuchResourceException, which the first test takes as it comes (every quota unknown, a
warning each, never an exception). The others answer GetServiceQuota with a before-call hook
(the response shaped like AWS's, as the AWS CLI reference shows it) and let moto answer every
EC2 call, so the usage is what moto really runs."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from providers.aws.adapter import AwsProvider
from providers.base import TAG_CLUSTER, QuotaSource
from providers.quotas import AWS_QUOTAS, QuotaReading, QuotaReport, needs, shortfalls
from tests.providers.aws.conftest import REGIONS, AwsWorld, error_response, stash_params

REGION = REGIONS[0]
NAMES = {q.code: q.name for q in AWS_QUOTAS}


class ServiceQuotas:
    """GetServiceQuota answered from ``values`` (code -> vCPUs); a code not there goes on to
    moto. ``refuse`` answers every call with that error code instead."""

    def __init__(self, values: dict[str, float], refuse: str | None = None) -> None:
        self.values = values
        self.refuse = refuse
        self.asked: list[dict[str, Any]] = []

    def install(self, provider: AwsProvider, region: str = REGION) -> None:
        client = provider._client("service-quotas", region)
        stash_params(client)
        client.meta.events.register("before-call.service-quotas.GetServiceQuota", self.hook)

    def hook(
        self, params: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> tuple[AWSResponse, Any] | None:
        api = context["api_params"]
        self.asked.append(api)
        if self.refuse is not None:
            return error_response(params["url"], self.refuse, 400)
        code = api["QuotaCode"]
        if code not in self.values:
            return None
        quota = {
            "ServiceCode": "ec2",
            "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:aws:servicequotas:{REGION}:123456789012:ec2/{code}",
            "QuotaCode": code,
            "QuotaName": NAMES[code],
            "Value": self.values[code],
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
        }
        body = {"Quota": quota, "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}}}
        return AWSResponse(params["url"], 200, {}, None), body


def run(aws: AwsWorld, instance_type: str, count: int, *, spot: bool = False) -> None:
    """Instances started outside the broker's launch (they count against quota all the same)."""
    extra: dict[str, Any] = {}
    if spot:
        extra["InstanceMarketOptions"] = {"MarketType": "spot"}
    aws.raw(REGION).run_instances(
        ImageId=aws.images[REGION],
        InstanceType=instance_type,
        MinCount=count,
        MaxCount=count,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": TAG_CLUSTER, "Value": "other"}]}
        ],
        **extra,
    )


def by_code(report: QuotaReport) -> dict[str, QuotaReading]:
    return {r.bucket: r for r in report.readings}


def test_the_adapter_is_a_quota_source(aws: AwsWorld) -> None:
    assert isinstance(aws.provider(), QuotaSource)


def test_moto_answers_no_ec2_quota_each_is_a_warning_not_an_error(aws: AwsWorld) -> None:
    report = aws.provider().quotas(REGION)
    assert report.readings == ()
    assert len(report.warnings) == len(AWS_QUOTAS)
    for quota, warning in zip(AWS_QUOTAS, report.warnings, strict=True):
        assert warning.startswith(f"{quota.code} ({quota.name}) could not be read")
        assert "NoSuchResourceException" in warning


def test_limits_minus_the_vcpus_running_per_family_and_market(aws: AwsWorld) -> None:
    run(aws, "p5.48xlarge", 2)  # on-demand P: 2 x 192
    run(aws, "p4d.24xlarge", 1, spot=True)  # old P spot: 96
    run(aws, "g5.xlarge", 3, spot=True)  # G spot: 3 x 4
    run(aws, "m5.large", 1)  # standard: no GPU quota
    provider = aws.provider()
    quotas = ServiceQuotas(
        {"L-417A185B": 768, "L-DB2E81BA": 64, "L-C4BD4855": 192, "L-7212CCBC": 96, "L-3819A6DF": 8}
    )
    quotas.install(provider)
    report = provider.quotas(REGION)
    assert report.warnings == ()
    assert [a["ServiceCode"] for a in quotas.asked] == ["ec2"] * len(AWS_QUOTAS)
    found = by_code(report)
    assert {c: (r.limit, r.usage) for c, r in found.items()} == {
        "L-417A185B": (768.0, 384.0),
        "L-DB2E81BA": (64.0, 0.0),
        "L-C4BD4855": (192.0, 0.0),
        "L-7212CCBC": (96.0, 96.0),
        "L-3819A6DF": (8.0, 12.0),
    }
    assert found["L-417A185B"].market == "on-demand" and found["L-C4BD4855"].market == "spot"
    assert found["L-3819A6DF"].free == 0.0  # over the limit (raised since): nothing free

    p5 = aws.catalog.get("aws:us-east-1:p5.48xlarge:on-demand")
    assert p5 is not None
    assert shortfalls(needs("aws", p5, 2), report.readings) == []  # 384 of 384 free
    short = shortfalls(needs("aws", p5, 3), report.readings)
    assert [s.reading.bucket for s in short] == ["L-417A185B"]
    assert "needs 576 vCPU, 384 free (limit 768, in use 384)" in short[0].describe()
    p4d_spot = aws.catalog.get("aws:us-east-1:p4d.24xlarge:spot")
    assert p4d_spot is not None  # the P4 spot quota is full; P5 spot's is not
    short = shortfalls(needs("aws", p4d_spot, 1), report.readings)
    assert [s.reading.bucket for s in short] == ["L-7212CCBC"]
    p5_spot = aws.catalog.get("aws:us-east-1:p5.48xlarge:spot")
    assert p5_spot is not None
    assert shortfalls(needs("aws", p5_spot, 1), report.readings) == []


def test_a_quota_moto_cannot_answer_stays_unknown_beside_the_answered_ones(aws: AwsWorld) -> None:
    provider = aws.provider()
    ServiceQuotas({"L-417A185B": 384}).install(provider)
    report = provider.quotas(REGION)
    assert set(by_code(report)) == {"L-417A185B"}
    assert len(report.warnings) == len(AWS_QUOTAS) - 1


@pytest.mark.parametrize("code", ["AccessDeniedException"])
def test_a_missing_permission_is_one_warning_and_stops_asking(aws: AwsWorld, code: str) -> None:
    provider = aws.provider()
    quotas = ServiceQuotas({}, refuse=code)
    quotas.install(provider)
    report = provider.quotas(REGION)
    assert report.readings == ()
    assert len(quotas.asked) == 1
    (warning,) = report.warnings
    assert "permission missing" in warning and "servicequotas:GetServiceQuota" in warning


def test_instances_that_cannot_be_listed_make_the_region_unknown(aws: AwsWorld) -> None:
    provider = aws.provider()
    client = provider.client(REGION)

    def refuse(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, Any]:
        return error_response(params["url"], "UnauthorizedOperation")

    client.meta.events.register("before-call.ec2.DescribeInstances", refuse)
    report = provider.quotas(REGION)
    assert report.readings == ()
    (warning,) = report.warnings
    assert warning.startswith(f"running instances in {REGION} could not be listed")
    assert "permission missing" in warning
