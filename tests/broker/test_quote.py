"""Quotes and their JSON document: hours, exact money, limits, warnings, request storage."""

from __future__ import annotations

import json
import math

import pytest

from broker.diagnostics import Diagnostic, InvalidRequest
from broker.quote import QuoteRequest, quote
from broker.ranking import RankRequest
from broker.views import quote_document, quote_json
from shapes.catalog import Catalog, ShapeFilter
from tests.conftest import make_shape


def dumps(doc: object) -> str:
    return json.dumps(doc, allow_nan=False)  # what a JSON reader accepts


@pytest.mark.parametrize("hours", [math.inf, math.nan, 0, -1.0, "2", True])
def test_hours_must_be_a_finite_positive_number(hours: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        QuoteRequest(rank=RankRequest(gpus=8), hours=hours)  # type: ignore[arg-type]
    assert [e.field for e in info.value.errors] == ["hours"]


def test_money_in_json_is_exact() -> None:
    """6 nodes x 0.05786 is 0.34716/h: no rounding to 4 decimals (only tables round)."""
    cat = Catalog.of([make_shape("g.1", gpus=1, price=0.05786)])
    q = quote(QuoteRequest(rank=RankRequest(gpus=6), hours=2.5), cat)
    plan = json.loads(dumps(quote_document(q)))["plans"][0]
    assert plan["nodes"] == 6
    assert plan["price_per_node_hour"] == 0.05786
    assert plan["price_per_hour"] == 6 * 0.05786
    assert plan["estimated_cost"] == 6 * 0.05786 * 2.5


@pytest.mark.parametrize(("limit", "shown"), [(None, 7), (0, 7), (2, 2), (100, 7)])
def test_limit_none_or_zero_shows_every_plan(
    small_catalog: Catalog, limit: int | None, shown: int
) -> None:
    doc = quote_document(quote(QuoteRequest(rank=RankRequest(gpus=8)), small_catalog), limit=limit)
    assert len(doc["plans"]) == shown and doc["plans_total"] == 7
    assert [p["rank"] for p in doc["plans"]] == list(range(1, shown + 1))


def test_negative_limit_is_refused(small_catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="limit"):
        quote_document(quote(QuoteRequest(rank=RankRequest(gpus=8)), small_catalog), limit=-1)


def test_fallback_warning_is_in_the_json(small_catalog: Catalog) -> None:
    req = QuoteRequest(rank=RankRequest(gpus=8, priority=("aws:us-east-1:g6.xlarg:on-demand",)))
    doc = json.loads(dumps(quote_document(quote(req, small_catalog))))
    assert doc["request"]["priority_used"] is False
    assert doc["request"]["strict_priority"] is False
    messages = {w["field"]: w["message"] for w in doc["warnings"]}
    assert "did you mean aws:us-east-1:g6.xlarge:on-demand?" in messages["priority[0]"]
    assert "trying every shape" in messages["priority"]
    assert len(doc["plans"]) == len(small_catalog)


def test_quote_request_json_round_trip() -> None:
    req = QuoteRequest(
        rank=RankRequest(gpus=16, filter=ShapeFilter(providers=("aws",)), strict_priority=True),
        hours=3.0,
        launch_file="x.isc",
        experiment_name="exp",
        warnings=(Diagnostic(field="gpu", message="unknown key, ignored", line=3),),
    )
    doc = json.loads(dumps(req.to_json_dict()))
    assert QuoteRequest.from_json_dict(doc) == req
    with pytest.raises(InvalidRequest):
        QuoteRequest.from_json_dict({**doc, "hours": "inf"})


def test_diagnostic_types_are_checked() -> None:
    with pytest.raises(ValueError, match="line must be an integer"):
        Diagnostic(field="gpus", message="m", line="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="message must be a string"):
        Diagnostic(field="gpus", message=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [None, 0, 1, 3])
def test_quote_json_is_the_document_as_json_dumps_writes_it(
    small_catalog: Catalog, limit: int | None
) -> None:
    """The fast writer (for 100k plans) prints exactly the bytes of json.dumps(indent=2)."""
    shapes = [*small_catalog.shapes, make_shape("z.1", zones=(), price=0.05786)]
    q = quote(QuoteRequest(rank=RankRequest(gpus=8), hours=2.5), Catalog.of(shapes))
    assert quote_json(q, limit=limit) == json.dumps(quote_document(q, limit=limit), indent=2)
    none = quote(QuoteRequest(rank=RankRequest(gpus=8, max_price_per_hour=0.01)), small_catalog)
    assert quote_json(none) == json.dumps(quote_document(none), indent=2)
