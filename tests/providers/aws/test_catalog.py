"""The live AWS catalog document against moto: real GPU instance types, AZ-id zones, spot
prices, the Price List API (faked with a before-call hook: moto has none) and its fallback."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from providers.aws.catalog import build_catalog_document, on_demand_offer, on_demand_price
from providers.aws.config import AwsConfig
from providers.config import BrokerConfig
from providers.errors import AuthError
from shapes.catalog import BUNDLED_DIR, load_bundled_catalog, parse_catalog_file
from shapes.gpus import CANONICAL_GPUS
from shapes.model import Provisioning
from shapes.sanity import check_document
from tests.providers.aws.conftest import (
    REGIONS,
    error_response,
    new_session,
    stash_api_params,
)

TODAY = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BUNDLED = load_bundled_catalog()
AZ_ID = re.compile(r"^(use1|usw2)-az\d$")


PUBLISHED = "2026-11-01T00:00:00Z"  # the offer's publicationDate
BLOCK_USD = "0.0000000000"  # what a Capacity Block row costs in the Price List


def price_item(
    instance_type: str,
    region: str,
    usd: str,
    usage: str = "BoxUsage",
    sku: str = "SKU1",
    *,
    published: str | None = PUBLISHED,
    effective: str = "2026-10-20T00:00:00Z",
    **attributes: str,
) -> str:
    """One GetProducts PriceList entry, as AWS sends it: a JSON string. ``attributes``
    override the product's (``marketoption="CapacityBlock"``, ``capacitystatus=...``)."""
    prefix = {"us-east-1": "", "us-west-2": "USW2-"}[region]
    term = f"{sku}.JRTCKXETXF"
    market = attributes.get("marketoption", "OnDemand")
    kind = "Capacity Block" if market == "CapacityBlock" else "On Demand"
    item: dict[str, Any] = {
        "product": {
            "productFamily": "Compute Instance",
            "attributes": {
                "instanceType": instance_type,
                "regionCode": region,
                "location": {"us-east-1": "US East (N. Virginia)", "us-west-2": "US West (Oregon)"}[
                    region
                ],
                "operatingSystem": "Linux",
                "tenancy": "Shared",
                "preInstalledSw": "NA",
                "licenseModel": "No License required",
                "capacitystatus": "Used",
                "marketoption": "OnDemand",
                "usagetype": f"{prefix}{usage}:{instance_type}",
                "operation": "RunInstances",
                **attributes,
            },
            "sku": sku,
        },
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                term: {
                    "priceDimensions": {
                        f"{term}.6YS6EN2CT7": {
                            "unit": "Hrs",
                            "endRange": "Inf",
                            "beginRange": "0",
                            "description": f"${usd} per {kind} Linux {instance_type} Instance Hour",
                            "pricePerUnit": {"USD": usd},
                            "appliesTo": [],
                        }
                    },
                    "sku": sku,
                    "offerTermCode": "JRTCKXETXF",
                    "effectiveDate": effective,
                    "termAttributes": {},
                }
            },
            "Reserved": {
                f"{sku}.4NA7Y494T4": {
                    "priceDimensions": {
                        "x": {"unit": "Hrs", "pricePerUnit": {"USD": "0.0100000000"}}
                    },
                    "termAttributes": {
                        "LeaseContractLength": "1yr",
                        "PurchaseOption": "No Upfront",
                    },
                }
            },
        },
        "version": "20261101000000",
    }
    if published is not None:
        item["publicationDate"] = published
    return json.dumps(item)


def fake_price(instance_type: str) -> str:
    """A made-up but stable price per type, so the test can tell it came from the hook."""
    return f"{1 + sum(map(ord, instance_type)) % 97:.4f}000000"


class PriceListHook:
    """Answers GetProducts like the Price List API; optional errors first."""

    def __init__(self, errors: list[str] | None = None) -> None:
        self.errors = list(errors or [])
        self.calls: list[dict[str, str]] = []

    def __call__(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
        filters = {f["Field"]: f["Value"] for f in context["api_params"]["Filters"]}
        self.calls.append(filters)
        if self.errors:
            return error_response(params["url"], self.errors.pop(0))
        assert context["api_params"]["ServiceCode"] == "AmazonEC2"
        assert all(f["Type"] == "TERM_MATCH" for f in context["api_params"]["Filters"])
        name, region = filters["instanceType"], filters["regionCode"]
        parsed = {
            "FormatVersion": "aws_v1",
            "PriceList": [  # the on-demand row, and rows that must never be taken for it
                price_item(name, region, BLOCK_USD, sku="CB", marketoption="CapacityBlock",
                           operation="RunInstances:CB"),
                price_item(name, region, "0.5000000000", sku="UNUSED",
                           usage="UnusedBox", capacitystatus="UnusedCapacityReservation"),
                price_item(name, region, fake_price(name)),
            ],
            "ResponseMetadata": {"HTTPStatusCode": 200},
        }  # fmt: skip
        return AWSResponse(params["url"], 200, {}, None), parsed


def session_with_pricing(hook: PriceListHook) -> Any:
    session = new_session()
    session.events.register("before-parameter-build.pricing", stash_api_params)
    session.events.register("before-call.pricing.GetProducts", hook)
    return session


def write(doc: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "aws.json"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


# -- the price list parser -------------------------------------------------------------------


def test_on_demand_price_reads_the_json_strings() -> None:
    items = [
        price_item("p5.48xlarge", "us-west-2", "60.0000000000", usage="SomethingElse", sku="A"),
        price_item("p5.48xlarge", "us-west-2", "55.0400000000", sku="B"),
        price_item("p5.48xlarge", "us-west-2", "0.0000000000", sku="C"),
    ]
    assert on_demand_price(items) == 55.04
    assert on_demand_price(items[:1]) is None  # not a BoxUsage product: not an instance hour
    assert on_demand_price(items[2:]) is None
    assert on_demand_price([]) is None
    assert on_demand_price([json.loads(items[1])]) == 55.04  # already decoded


@pytest.mark.parametrize(
    "attributes",
    [
        {"marketoption": "CapacityBlock", "operation": "RunInstances:CB"},  # a Capacity Block
        {"capacitystatus": "UnusedCapacityReservation", "usagetype": "UnusedBox:p5.48xlarge"},
        {"capacitystatus": "AllocatedCapacityReservation"},
        {"operatingSystem": "Windows", "operation": "RunInstances:0002"},
        {"tenancy": "Dedicated", "usagetype": "DedicatedUsage:p5.48xlarge"},
        {"preInstalledSw": "SQL Std", "operation": "RunInstances:0004"},
        {"usagetype": "Reservation:p5.48xlarge"},
    ],
)
def test_rows_that_are_not_plain_on_demand_never_count(attributes: dict[str, str]) -> None:
    plain = price_item("p5.48xlarge", "us-east-1", "55.0400000000")
    other = price_item("p5.48xlarge", "us-east-1", "20.0000000000", sku="X", **attributes)
    assert on_demand_price([other, plain]) == 55.04
    assert on_demand_price([other]) is None


def test_an_offer_is_dated_by_its_publication_date() -> None:
    plain = price_item("p5.48xlarge", "us-east-1", "55.0400000000")
    assert on_demand_offer([plain]) == (55.04, date(2026, 11, 1))
    undated = price_item("p5.48xlarge", "us-east-1", "55.0400000000", published=None)
    assert on_demand_offer([undated]) == (55.04, date(2026, 10, 20))  # the term's effectiveDate
    # a Reserved term of the same product is never read, however cheap
    assert on_demand_offer([plain])[0] == 55.04  # type: ignore[index]


# -- against moto ----------------------------------------------------------------------------


def test_document_from_moto_is_a_valid_catalog_file(mock_aws: None, tmp_path: Path) -> None:
    config = AwsConfig(regions=REGIONS)
    doc = build_catalog_document(new_session(), config, bundled=BUNDLED, today=TODAY, now=NOW)

    bundled_doc = json.loads((BUNDLED_DIR / "gcp.json").read_text())  # one format for all
    assert list(doc) == list(bundled_doc)  # exactly the bundled documents' format
    assert (doc["provider"], doc["currency"]) == ("aws", "USD")
    assert doc["retrieved"] == "2026-11-22" and doc["spot_as_of"] == "2026-11-22"
    # on-demand came from the bundled catalog (moto has no Price List API): its date
    aws_source = next(s for s in BUNDLED.sources if s.provider == "aws")
    bundled_date = aws_source.prices_as_of or aws_source.retrieved
    assert bundled_date is not None and doc["prices_as_of"] == bundled_date.isoformat()
    assert check_document(doc) == []
    for api in ("DescribeInstanceTypes", "DescribeSpotPriceHistory", "Price List API"):
        assert api in doc["price_source"]
    assert "us-east-1, us-west-2" in doc["price_source"]

    source, shapes = parse_catalog_file(write(doc, tmp_path), bundled=False)
    assert source.provider == "aws" and source.shapes == len(shapes) > 100
    assert source.prices_as_of == bundled_date

    types = doc["instance_types"]
    expected = {
        "p5.48xlarge": ("H100", 8, 80, 192),
        "p4d.24xlarge": ("A100-40GB", 8, 40, 96),
        "p4de.24xlarge": ("A100-80GB", 8, 80, 96),
        "g5.12xlarge": ("A10G", 4, 24, 48),
        "g6e.xlarge": ("L40S", 1, 48, 4),
        "g4dn.xlarge": ("T4", 1, 16, 4),
    }
    for name, (gpu, gpus, memory, vcpus) in expected.items():
        spec = types[name]
        assert (spec["gpu"], spec["gpus"], spec["gpu_memory_gib"], spec["vcpus"]) == (
            gpu,
            gpus,
            memory,
            vcpus,
        ), name
    assert types["p5.48xlarge"]["memory_gib"] == 2048.0
    assert {s.gpu for s in shapes} <= CANONICAL_GPUS
    assert {s.region for s in shapes} == set(REGIONS)
    for shape in shapes:
        assert shape.zones and all(AZ_ID.match(z) for z in shape.zones), shape.id
        if shape.zone_prices:
            assert set(shape.zone_prices) <= set(shape.zones)
    p5_zones = types["p5.48xlarge"]["regions"]["us-west-2"]["zones"]
    assert p5_zones == ["usw2-az1", "usw2-az2", "usw2-az3", "usw2-az4"]

    # moto has no Price List API: on-demand comes from the bundled catalog, and says so
    assert "Price List API failed" in doc["notes"]
    assert "bundled catalog" in doc["notes"] and "bundled catalog" in doc["price_source"]
    old = BUNDLED.get("aws:us-east-1:p5.48xlarge:on-demand")
    assert old is not None
    assert types["p5.48xlarge"]["regions"]["us-east-1"]["on_demand"] == old.price_per_node_hour
    # types the bundled catalog does not price are spot-only (moto's spot price), noted
    assert "on_demand" not in types["g5.2xlarge"]["regions"]["us-east-1"]
    assert "Spot only" in doc["notes"]
    spot = [s for s in shapes if s.provisioning is Provisioning.SPOT]
    assert spot and all(s.zone_prices for s in spot)

    # GPUs the broker does not know (or fractional ones) are skipped, and noted
    assert "g5g.xlarge" not in types and "g6f.large" not in types
    for word in ("T4g", "fractional"):
        assert word in doc["notes"]
    assert (types["p6-b200.48xlarge"]["gpu"], types["p6-b200.48xlarge"]["gpus"]) == ("B200", 8)


def test_price_list_api_prices_are_used_when_it_answers(mock_aws: None) -> None:
    hook = PriceListHook()
    config = AwsConfig(regions=("us-west-2",))
    doc = build_catalog_document(
        session_with_pricing(hook), config, bundled=BUNDLED, today=TODAY, now=NOW
    )
    types = doc["instance_types"]
    assert len(hook.calls) == len(types)
    assert {c["regionCode"] for c in hook.calls} == {"us-west-2"}
    assert all(
        (
            c["marketoption"],
            c["operatingSystem"],
            c["tenancy"],
            c["preInstalledSw"],
            c["capacitystatus"],
        )
        == ("OnDemand", "Linux", "Shared", "NA", "Used")
        for c in hook.calls
    )
    for name, spec in types.items():  # never the Capacity Block's $0 nor the reservation's
        assert spec["regions"]["us-west-2"]["on_demand"] == float(fake_price(name))
        assert "prices_as_of" not in spec["regions"]["us-west-2"]  # the file's date
    assert "failed" not in doc["notes"] and "bundled" not in doc["price_source"]
    assert doc["prices_as_of"] == PUBLISHED[:10] and doc["spot_as_of"] == "2026-11-22"
    # (the hook's made-up prices are not the clouds' ratios: only the spot rule applies)
    assert [p for p in check_document(doc) if p.rule == "spot-below-on-demand"] == []


def test_spot_at_the_on_demand_cap_is_left_out_and_noted(mock_aws: None) -> None:
    session = session_with_pricing(PriceListHook())
    capped: list[str] = []

    def cap_p5(parsed: dict[str, Any], **_: Any) -> None:
        for row in parsed.get("SpotPriceHistory", []):
            if row["InstanceType"] == "p5.48xlarge" and not capped:
                row["SpotPrice"] = fake_price("p5.48xlarge")  # exactly on-demand
                capped.append(row.get("AvailabilityZoneId") or row["AvailabilityZone"])

    session.events.register("after-call.ec2.DescribeSpotPriceHistory", cap_p5)
    doc = build_catalog_document(
        session, AwsConfig(regions=("us-west-2",)), bundled=BUNDLED, today=TODAY, now=NOW
    )
    assert capped
    entry = doc["instance_types"]["p5.48xlarge"]["regions"]["us-west-2"]
    assert all(price < entry["on_demand"] for price in entry.get("spot", {}).values())
    assert "not below on-demand" in doc["notes"] and "p5.48xlarge/us-west-2" in doc["notes"]
    assert [p for p in check_document(doc) if p.rule == "spot-below-on-demand"] == []


def test_throttled_price_list_is_retried(mock_aws: None) -> None:
    hook = PriceListHook(errors=["ThrottlingException"])
    slept: list[float] = []
    doc = build_catalog_document(
        session_with_pricing(hook),
        AwsConfig(regions=("us-west-2",)),
        bundled=None,
        today=TODAY,
        now=NOW,
        sleep=slept.append,
    )
    assert slept == [1.0]
    assert hook.calls[0] == hook.calls[1]  # the same question again
    p5 = doc["instance_types"]["p5.48xlarge"]["regions"]["us-west-2"]
    assert p5["on_demand"] == float(fake_price("p5.48xlarge"))


def test_a_type_without_any_price_is_left_out(mock_aws: None) -> None:
    """No Price List API, no bundled catalog, and no spot price: nothing to sell."""
    session = new_session()

    def no_spot_prices(parsed: dict[str, Any], **_: Any) -> None:
        parsed["SpotPriceHistory"] = []

    session.events.register("after-call.ec2.DescribeSpotPriceHistory", no_spot_prices)
    made: list[tuple[str, str]] = []

    def factory(service: str, region: str) -> Any:
        made.append((service, region))
        return session.client(service, region_name=region)

    doc = build_catalog_document(
        factory, AwsConfig(regions=("us-west-2",)), bundled=None, today=TODAY, now=NOW
    )
    assert doc["instance_types"] == {}
    assert "Left out, no price at all" in doc["notes"]
    assert ("pricing", "us-east-1") in made and ("ec2", "us-west-2") in made


def test_ec2_errors_are_classified(mock_aws: None) -> None:
    session = new_session()

    def refuse(params: dict[str, Any], **_: Any) -> Any:
        return error_response(params["url"], "UnauthorizedOperation")

    session.events.register("before-call.ec2.DescribeInstanceTypes", refuse)
    config = AwsConfig(regions=("us-west-2",))
    with pytest.raises(AuthError):
        build_catalog_document(session, config, bundled=None, today=TODAY)


def test_refresh_through_the_registry_uses_the_default_session(mock_aws: None) -> None:
    from providers.registry import refresh_document

    config = BrokerConfig.enabling(AwsConfig(regions=("us-west-2",)))
    doc = refresh_document("aws", config=config, bundled=BUNDLED, today=TODAY)
    assert doc["provider"] == "aws" and doc["instance_types"]
