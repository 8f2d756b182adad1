"""shapes.sanity: every rule passes on the bundled data and catches a bad row."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from shapes import sanity
from shapes.catalog import BUNDLED_DIR
from shapes.sanity import SanityProblem, check_document, family, format_problems

BUNDLED = sorted(p.stem for p in BUNDLED_DIR.glob("*.json"))


def bundled(provider: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((BUNDLED_DIR / f"{provider}.json").read_text())
    return doc


def good() -> dict[str, Any]:
    """A small file that passes every rule: one family, two sizes, two regions."""
    return {
        "provider": "aws",
        "prices_as_of": "2026-10-01",
        "spot_as_of": "2026-11-20",
        "price_source": "test",
        "instance_types": {
            "g5.xlarge": {
                "gpu": "A10G",
                "gpus": 1,
                "regions": {
                    "us-east-1": {
                        "zones": ["use1-az1", "use1-az2"],
                        "on_demand": 1.006,
                        "spot": {"use1-az1": 0.4, "use1-az2": 0.45},
                    },
                    "eu-west-1": {"zones": ["euw1-az1"], "on_demand": 1.258, "spot": 0.5},
                },
            },
            "g5.12xlarge": {
                "gpu": "A10G",
                "gpus": 4,
                "regions": {
                    "us-east-1": {"zones": ["use1-az1"], "on_demand": 5.672},
                    "eu-west-1": {"zones": ["euw1-az1"], "on_demand": 6.302},
                },
            },
        },
    }


def rules(problems: list[SanityProblem]) -> set[tuple[str, str]]:
    return {(p.rule, p.where) for p in problems}


def test_the_good_document_passes() -> None:
    assert check_document(good()) == []


@pytest.mark.parametrize("provider", BUNDLED)
@pytest.mark.parametrize("rule", sanity.RULES)
def test_each_rule_passes_on_the_bundled_data(provider: str, rule: str) -> None:
    problems = [p for p in check_document(bundled(provider)) if p.rule == rule]
    assert problems == [], format_problems(problems)


def test_the_bundled_data_has_rows_each_rule_reads() -> None:
    """The rules above are not vacuous: the bundled data has spot prices, single- and
    multi-GPU sizes of one family in one region, and types in several regions."""
    doc = bundled("aws")
    types = doc["instance_types"]
    assert any("spot" in e for t in types.values() for e in t["regions"].values())
    assert {types["g5.xlarge"]["gpus"], types["g5.48xlarge"]["gpus"]} == {1, 8}
    assert len(types["g5.48xlarge"]["regions"]) >= 3


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1.0", True, None])
def test_price_rule_catches_a_bad_on_demand_or_spot(bad: object) -> None:
    doc = good()
    doc["instance_types"]["g5.12xlarge"]["regions"]["eu-west-1"]["spot"] = bad
    doc["instance_types"]["g5.xlarge"]["regions"]["eu-west-1"]["on_demand"] = bad
    problems = check_document(doc)
    if bad is None:  # a missing price is no price, not a bad one
        assert problems == []
        return
    assert ("price", "aws/g5.12xlarge/eu-west-1") in rules(problems)
    assert ("price", "aws/g5.xlarge/eu-west-1") in rules(problems)


def test_price_rule_names_the_zone() -> None:
    doc = good()
    doc["instance_types"]["g5.xlarge"]["regions"]["us-east-1"]["spot"]["use1-az2"] = 0
    assert rules(check_document(doc)) == {("price", "aws/g5.xlarge/us-east-1/use1-az2")}


@pytest.mark.parametrize("spot", [1.006, 1.5])
def test_spot_at_or_above_on_demand_is_flagged_per_zone(spot: float) -> None:
    doc = good()
    doc["instance_types"]["g5.xlarge"]["regions"]["us-east-1"]["spot"]["use1-az1"] = spot
    problems = check_document(doc)
    assert rules(problems) == {("spot-below-on-demand", "aws/g5.xlarge/us-east-1/use1-az1")}
    assert "not below on-demand $1.006/h" in problems[0].message


def test_spot_rule_for_one_regional_spot_price() -> None:
    doc = good()
    doc["instance_types"]["g5.xlarge"]["regions"]["eu-west-1"]["spot"] = 2.0
    assert rules(check_document(doc)) == {("spot-below-on-demand", "aws/g5.xlarge/eu-west-1")}


@pytest.mark.parametrize(
    ("price", "caught"), [(1.006 * 4 * 0.8, True), (1.006 * 4 * 0.95, False), (9.0, False)]
)
def test_per_gpu_ratio_against_the_single_gpu_size(price: float, caught: bool) -> None:
    doc = good()
    doc["instance_types"]["g5.12xlarge"]["regions"]["us-east-1"]["on_demand"] = price
    got = rules(check_document(doc))
    assert (("per-gpu-ratio", "aws/g5.12xlarge/us-east-1") in got) is caught


def test_per_gpu_ratio_above_the_maximum() -> None:
    doc = good()
    price = 1.006 * 4 * (sanity.PER_GPU_RATIO_MAX + 0.1)
    doc["instance_types"]["g5.12xlarge"]["regions"]["us-east-1"]["on_demand"] = price
    problems = [p for p in check_document(doc) if p.rule == "per-gpu-ratio"]
    assert [p.where for p in problems] == ["aws/g5.12xlarge/us-east-1"]
    assert "g5.xlarge" in problems[0].message


def test_cross_region_catches_the_gcp_2x_error() -> None:
    """a3-highgpu-8g in us-central1 at half its us-east4 price (the old catalog's fault)."""
    doc = bundled("gcp")
    regions = doc["instance_types"]["a3-highgpu-8g"]["regions"]
    cheapest = min(e["on_demand"] for e in regions.values())
    regions["us-central1"]["on_demand"] = cheapest / 2.0
    regions["us-central1"].pop("spot", None)
    got = rules(check_document(doc))
    flagged = {w for r, w in got if r == "cross-region"}
    assert flagged and all(w.startswith("gcp/a3-highgpu-8g/") for w in flagged)
    assert "gcp/a3-highgpu-8g/us-central1" not in flagged  # the cheapest is the reference


def test_cross_region_within_the_ratio_passes() -> None:
    doc = good()
    doc["instance_types"]["g5.xlarge"]["regions"]["eu-west-1"]["on_demand"] = 1.006 * 1.7
    assert check_document(doc) == []
    doc["instance_types"]["g5.xlarge"]["regions"]["eu-west-1"]["on_demand"] = 1.006 * 1.8
    got = {(r, w) for r, w in rules(check_document(doc)) if r == "cross-region"}
    assert got == {("cross-region", "aws/g5.xlarge/eu-west-1")}


def test_undated_markets_need_no_spot_date_but_must_be_markets() -> None:
    doc = good()
    del doc["spot_as_of"]
    assert rules(check_document(doc)) == {("dated", "aws")}
    for spec in doc["instance_types"].values():
        for entry in spec["regions"].values():
            if "spot" in entry:
                entry["undated"] = ["spot"]
    assert check_document(doc) == []
    doc["instance_types"]["g5.xlarge"]["regions"]["us-east-1"]["undated"] = ["weekly"]
    assert rules(check_document(doc)) == {("dated", "aws/g5.xlarge/us-east-1"), ("dated", "aws")}


@pytest.mark.parametrize("value", [None, "", "2026-13-01", "yesterday", 20261001])
def test_dated_rule(value: object) -> None:
    doc = good()
    doc["prices_as_of"] = value
    assert rules(check_document(doc)) == {("dated", "aws")}
    doc = good()
    doc["spot_as_of"] = value
    assert rules(check_document(doc)) == {("dated", "aws")}
    doc = good()
    doc["instance_types"]["g5.xlarge"]["regions"]["us-east-1"]["prices_as_of"] = value
    assert rules(check_document(doc)) == {("dated", "aws/g5.xlarge/us-east-1")}


def test_no_spot_needs_no_spot_date() -> None:
    doc = good()
    del doc["spot_as_of"]
    for spec in doc["instance_types"].values():
        for entry in spec["regions"].values():
            entry.pop("spot", None)
    assert check_document(doc) == []


def test_a_malformed_document_is_skipped_not_raised() -> None:
    doc: dict[str, Any] = copy.deepcopy(good())
    doc["instance_types"]["x"] = "not an object"
    doc["instance_types"]["g5.xlarge"]["regions"]["zz"] = []
    assert check_document(doc) == []
    assert rules(check_document({"instance_types": []})) == {("dated", "?")}


@pytest.mark.parametrize(
    ("provider", "instance_type", "expected"),
    [
        ("aws", "g5.12xlarge", "g5"),
        ("aws", "p5en.48xlarge", "p5en"),
        ("gcp", "a2-highgpu-8g", "a2-highgpu"),
        ("gcp", "g2-standard-48", "g2-standard"),
        ("gcp", "n1-standard-8+t4x1", "n1+t4"),
        ("azure", "Standard_NC24ads_A100_v4", "NC_A100_v4"),
        ("azure", "Standard_NC6s_v3", "NC_v3"),
        ("azure", "Standard_ND96isr_H100_v5", "ND_H100_v5"),
    ],
)
def test_family(provider: str, instance_type: str, expected: str) -> None:
    assert family(provider, instance_type) == expected


def test_format_problems_one_line_each_sorted() -> None:
    problems = [
        SanityProblem("price", "aws/b/r", "bad"),
        SanityProblem("dated", "aws", "no date"),
    ]
    assert format_problems(problems) == "aws: no date [dated]\naws/b/r: bad [price]"
    assert problems[0].to_json_dict() == {"rule": "price", "where": "aws/b/r", "message": "bad"}
