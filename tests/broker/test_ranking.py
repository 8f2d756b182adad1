"""Ranking rules: node split, priority lists, fallback, filters, caps, exclusions."""

from __future__ import annotations

import pytest

from broker.diagnostics import InvalidRequest
from broker.ranking import RankRequest, Rule, rank, split_gpus
from shapes.catalog import Catalog, ShapeFilter
from shapes.model import Provisioning
from tests.conftest import make_shape


@pytest.mark.parametrize(
    ("gpus", "per_node", "expected"),
    [
        (16, 8, (2, 8)),
        (16, 4, (4, 4)),
        (16, 1, (16, 1)),
        (8, 8, (1, 8)),
        (1, 8, (1, 1)),
        (12, 8, (2, 6)),  # ceil(12/8)=2 divides 12
        (10, 4, (5, 2)),  # ceil(10/4)=3 does not divide 10 -> 5 nodes of 2
        (7, 4, (7, 1)),  # prime: one process per node
        (7, 8, (1, 7)),
        (48, 8, (6, 8)),
        (72, 8, (9, 8)),
    ],
)
def test_split_gpus(gpus: int, per_node: int, expected: tuple[int, int]) -> None:
    assert split_gpus(gpus, per_node) == expected


def test_split_rejects_nonpositive() -> None:
    with pytest.raises(ValueError):
        split_gpus(0, 8)


def ids(ranking) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.shape.id for p in ranking.plans]


def test_no_priority_orders_by_price_per_hour(small_catalog: Catalog) -> None:
    r = rank(RankRequest(gpus=8), small_catalog)
    prices = [p.price_per_hour for p in r.plans]
    assert prices == sorted(prices)
    assert len(r.plans) == len(small_catalog)
    assert not r.priority_used
    # 8 x L4 on 1-GPU nodes: 8 nodes at 0.8048 = 6.4384/h; the 2-GPU A100 node: 4 x 7 = 28
    first = r.plans[0]
    assert first.shape.instance_type == "g6.xlarge"
    assert (first.nodes, first.procs_per_node) == (8, 1)
    assert first.price_per_hour == pytest.approx(8 * 0.8048)


def test_price_per_hour_is_nodes_times_node_price(small_catalog: Catalog) -> None:
    for plan in rank(RankRequest(gpus=16), small_catalog).plans:
        assert plan.price_per_hour == pytest.approx(plan.nodes * plan.shape.price_per_node_hour)
        assert plan.nodes * plan.procs_per_node == 16


def test_ties_broken_by_fewer_nodes_then_id() -> None:
    cat = Catalog.of(
        [
            make_shape("b.big", gpus=8, price=8.0),  # 1 node, 8/h
            make_shape("a.small", gpus=1, price=1.0),  # 8 nodes, 8/h
            make_shape("c.big", gpus=8, price=8.0),  # 1 node, 8/h
            make_shape("A.big", gpus=8, price=8.0, region="eu-west-1"),
        ]
    )
    r = rank(RankRequest(gpus=8), cat)
    assert ids(r) == [
        "aws:eu-west-1:A.big:on-demand",
        "aws:us-east-1:b.big:on-demand",
        "aws:us-east-1:c.big:on-demand",
        "aws:us-east-1:a.small:on-demand",
    ]


def test_priority_list_kept_in_given_order_not_price(small_catalog: Catalog) -> None:
    prio = (
        "gcp:us-central1:a3-highgpu-8g:on-demand",  # most expensive first
        "AWS:us-east-1:P5.48XLARGE:SPOT",  # case-insensitive
        "aws:us-east-1:g6.xlarge:on-demand",
    )
    r = rank(RankRequest(gpus=16, priority=prio), small_catalog)
    assert r.priority_used
    assert ids(r) == [
        "gcp:us-central1:a3-highgpu-8g:on-demand",
        "aws:us-east-1:p5.48xlarge:spot",
        "aws:us-east-1:g6.xlarge:on-demand",
    ]
    assert r.warnings == []


def test_priority_unknown_and_duplicate_ids_warn_and_are_dropped(small_catalog: Catalog) -> None:
    prio = (
        "aws:us-east-1:p5.48xlarge:spot",
        "aws:us-east-1:p5.48xlarge:SPOT",
        "aws:us-east-1:p5.48xlarg:spot",
        "gcp-desired-shape",
    )
    r = rank(RankRequest(gpus=8, priority=prio), small_catalog)
    assert ids(r) == ["aws:us-east-1:p5.48xlarge:spot"]
    fields = [w.field for w in r.warnings]
    assert fields == ["priority[1]", "priority[2]", "priority[3]"]
    assert "listed twice" in r.warnings[0].message
    assert "did you mean aws:us-east-1:p5.48xlarge:spot" in r.warnings[1].message
    assert "not a shape id" in r.warnings[2].message


@pytest.mark.parametrize("prio", [(), ("nope:nope:nope:spot", "x")])
def test_priority_naming_no_known_shape_falls_back_to_all(
    small_catalog: Catalog, prio: tuple[str, ...]
) -> None:
    r = rank(RankRequest(gpus=8, priority=prio), small_catalog)
    assert not r.priority_used
    assert len(r.plans) == len(small_catalog)
    assert r.warnings[-1].field == "priority"
    assert "names no known shape" in r.warnings[-1].message


def test_priority_field_name_is_used_in_warnings(small_catalog: Catalog) -> None:
    req = RankRequest(gpus=8, priority=("zzz",), priority_field="burst_shape_priority_list")
    r = rank(req, small_catalog)
    assert r.warnings[0].field == "burst_shape_priority_list[0]"


@pytest.mark.parametrize(
    ("flt", "expected_gpus"),
    [
        (ShapeFilter(gpus=("h100",)), {"H100"}),
        (ShapeFilter(gpus=("A100",)), {"A100-40GB", "A100-80GB"}),
        (ShapeFilter(gpus=("a100-80gb",)), {"A100-80GB"}),
        (ShapeFilter(gpus=("L4", "H100")), {"L4", "H100"}),
    ],
)
def test_gpu_filter(small_catalog: Catalog, flt: ShapeFilter, expected_gpus: set[str]) -> None:
    r = rank(RankRequest(gpus=8, filter=flt), small_catalog)
    assert r.plans
    assert {p.shape.gpu for p in r.plans} == expected_gpus


def test_provider_region_and_market_filters(small_catalog: Catalog) -> None:
    r = rank(RankRequest(gpus=8, filter=ShapeFilter(providers=("GCP",))), small_catalog)
    assert {p.shape.provider for p in r.plans} == {"gcp"}
    r = rank(RankRequest(gpus=8, filter=ShapeFilter(regions=("EASTUS",))), small_catalog)
    assert {p.shape.region for p in r.plans} == {"eastus"}
    r = rank(RankRequest(gpus=8, filter=ShapeFilter(provisioning=Provisioning.SPOT)), small_catalog)
    assert {p.shape.provisioning for p in r.plans} == {Provisioning.SPOT}
    assert len(r.plans) == 2


def test_max_price_caps_whole_plan_not_node(small_catalog: Catalog) -> None:
    # 16 GPUs of spot H100 = 2 nodes x 30 = 60/h: one node is under 50, the plan is not.
    r = rank(
        RankRequest(gpus=16, max_price_per_hour=50.0, filter=ShapeFilter(gpus=("H100",))),
        small_catalog,
        explain=True,
    )
    assert r.plans == []
    by_rule = {e.shape_id: e.rule for e in r.excluded}
    h100 = [s.id for s in small_catalog.shapes if s.gpu == "H100"]
    assert {by_rule[i] for i in h100} == {Rule.MAX_PRICE}
    assert set(by_rule.values()) == {Rule.MAX_PRICE, Rule.GPU}
    spot = next(e for e in r.excluded if e.shape_id == "aws:us-east-1:p5.48xlarge:spot")
    assert "$60.00/h for 2 node(s)" in spot.reason
    r = rank(RankRequest(gpus=16, max_price_per_hour=60.0), small_catalog)
    assert all(p.price_per_hour <= 60.0 for p in r.plans)
    assert "aws:us-east-1:p5.48xlarge:spot" in ids(r)


def test_exclusions_reported_for_named_shapes_without_explain(small_catalog: Catalog) -> None:
    prio = ("aws:us-east-1:p5.48xlarge:spot", "aws:us-east-1:g6.xlarge:on-demand")
    req = RankRequest(gpus=8, priority=prio, filter=ShapeFilter(gpus=("L4",)))
    r = rank(req, small_catalog)
    assert ids(r) == ["aws:us-east-1:g6.xlarge:on-demand"]
    assert [(e.shape_id, e.rule) for e in r.excluded] == [
        ("aws:us-east-1:p5.48xlarge:spot", Rule.GPU)
    ]
    assert r.excluded[0].reason == "GPU is H100, not L4"


def test_exclusions_only_with_explain_when_no_priority(small_catalog: Catalog) -> None:
    req = RankRequest(gpus=8, filter=ShapeFilter(providers=("azure",)))
    assert rank(req, small_catalog).excluded == []
    explained = rank(req, small_catalog, explain=True)
    assert len(explained.excluded) == len(small_catalog) - 1
    assert {e.rule for e in explained.excluded} == {Rule.PROVIDER}


def test_unavailable_shapes_are_excluded_with_reason(small_catalog: Catalog) -> None:
    blocked = {"aws:us-east-1:g6.xlarge:on-demand": "stocked out in every zone until 12:05"}
    r = rank(RankRequest(gpus=8), small_catalog, unavailable=blocked, explain=True)
    assert "aws:us-east-1:g6.xlarge:on-demand" not in ids(r)
    assert [(e.rule, e.reason) for e in r.excluded] == [
        (Rule.UNAVAILABLE, "stocked out in every zone until 12:05")
    ]


@pytest.mark.parametrize("gpus", [0, -1, 73, 100])
def test_gpus_out_of_range_is_an_error(small_catalog: Catalog, gpus: int) -> None:
    with pytest.raises(InvalidRequest) as exc:
        rank(RankRequest(gpus=gpus), small_catalog)
    assert exc.value.errors[0].field == "gpus"
    assert "between 1 and 72" in exc.value.errors[0].message


def test_burst_cap(small_catalog: Catalog) -> None:
    assert rank(RankRequest(gpus=48), small_catalog).plans
    with pytest.raises(InvalidRequest, match="limited to 48 GPUs"):
        rank(RankRequest(gpus=49), small_catalog)
    with pytest.raises(InvalidRequest, match="limited to 16 GPUs"):
        rank(RankRequest(gpus=17, burst_max_gpus=16), small_catalog)


def test_nonpositive_price_cap_is_an_error(small_catalog: Catalog) -> None:
    with pytest.raises(InvalidRequest) as exc:
        rank(RankRequest(gpus=8, max_price_per_hour=0), small_catalog)
    assert exc.value.errors[0].field == "max_price_per_hour"


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"gpus": "16"}, "gpus", 'must be an integer, got a string ("16")'),
        ({"gpus": True}, "gpus", "must be an integer, got a boolean (true)"),
        ({"gpus": 16.0}, "gpus", "must be an integer, got a float (16.0)"),
        ({"gpus": 8, "priority": "aws:us-east-1:p5.48xlarge:spot"}, "priority", "list of strings"),
        ({"gpus": 8, "priority": ("ok", 3)}, "priority", "item 1 must be a string"),
        ({"gpus": 8, "max_price_per_hour": "50"}, "max_price_per_hour", "must be a number"),
        ({"gpus": 8, "max_price_per_hour": False}, "max_price_per_hour", "must be a number"),
        ({"gpus": 8, "burst_max_gpus": "48"}, "burst_max_gpus", "must be an integer"),
        ({"gpus": 8, "strict_priority": 1}, "strict_priority", "must be true or false"),
        ({"gpus": 8, "filter": {"gpus": ["H100"]}}, "filter", "must be a ShapeFilter"),
    ],
)
def test_rank_request_types_are_strict(
    kwargs: dict[str, object], field: str, fragment: str
) -> None:
    """As a launch file refuses gpus = "16", so does the Python API."""
    with pytest.raises(InvalidRequest) as info:
        RankRequest(**kwargs)  # type: ignore[arg-type]
    assert [e.field for e in info.value.errors] == [field]
    assert fragment in info.value.errors[0].message


def test_rank_request_json_round_trip() -> None:
    req = RankRequest(
        gpus=16,
        priority=["aws:us-east-1:p5.48xlarge:spot"],  # type: ignore[arg-type]
        filter=ShapeFilter(gpus=("H100",), provisioning=Provisioning.SPOT),
        max_price_per_hour=99.5,
        strict_priority=True,
    )
    assert req.priority == ("aws:us-east-1:p5.48xlarge:spot",)
    assert RankRequest.from_json_dict(req.to_json_dict()) == req
    old = {k: v for k, v in req.to_json_dict().items() if k != "strict_priority"}
    assert RankRequest.from_json_dict(old).strict_priority is False  # rows stored before it


@pytest.mark.parametrize("cap", [float("inf"), float("nan"), -5.0])
def test_price_cap_must_be_finite_and_positive(small_catalog: Catalog, cap: float) -> None:
    with pytest.raises(InvalidRequest) as exc:
        rank(RankRequest(gpus=8, max_price_per_hour=cap), small_catalog)
    assert exc.value.errors[0].field == "max_price_per_hour"


def test_fallback_says_so_with_did_you_mean(small_catalog: Catalog) -> None:
    r = rank(RankRequest(gpus=8, priority=("aws:us-east-1:p5.48xlarg:spot",)), small_catalog)
    assert not r.priority_used and len(r.plans) == len(small_catalog)
    assert [w.field for w in r.warnings] == ["priority[0]", "priority"]
    assert "did you mean aws:us-east-1:p5.48xlarge:spot?" in r.warnings[0].message
    assert "trying every shape" in r.warnings[1].message


@pytest.mark.parametrize("prio", [(), ("aws:us-east-1:p5.48xlarg:spot",)])
def test_strict_priority_refuses_instead_of_falling_back(
    small_catalog: Catalog, prio: tuple[str, ...]
) -> None:
    req = RankRequest(gpus=8, priority=prio, strict_priority=True)
    with pytest.raises(InvalidRequest) as info:
        rank(req, small_catalog)
    assert [e.field for e in info.value.errors] == ["priority"]
    assert "strict priority" in info.value.errors[0].message
    assert [w.field for w in info.value.warnings] == [f"priority[{i}]" for i in range(len(prio))]


def test_strict_priority_keeps_a_list_that_names_known_shapes(small_catalog: Catalog) -> None:
    prio = ("nope", "aws:us-east-1:g6.xlarge:on-demand")
    r = rank(RankRequest(gpus=8, priority=prio, strict_priority=True), small_catalog)
    assert r.priority_used and ids(r) == ["aws:us-east-1:g6.xlarge:on-demand"]
    assert rank(RankRequest(gpus=8, strict_priority=True), small_catalog).plans  # no list
