"""Each quoted plan says how old its price is (issue 13 §1): ``prices_as_of``,
``price_age_days`` and ``undated`` in ``broker quote --json``; the text quote marks undated
prices ``*`` and says once which plans' prices are over 90 days old; ``broker shapes``
likewise."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import pytest

from broker.cli import main
from broker.cli.render import UNDATED_NOTE, price_date_notes, quote_table, shapes_table
from broker.quote import QuoteRequest, quote
from broker.ranking import RankRequest
from broker.views import plan_document, quote_document, quote_json, shape_document
from shapes.catalog import Catalog, ShapeFilter, load_bundled_catalog
from shapes.model import Provisioning
from tests.conftest import make_shape

OLD = date(2026, 1, 21)
NEW = date(2026, 7, 20)
TODAY = date(2026, 8, 1)  # NEW is 12 days old, OLD 192


def small_dated() -> Catalog:
    return Catalog.of(
        [
            make_shape("p5.48xlarge", gpu="H100", price=50.0, prices_as_of=NEW),
            make_shape("p5.48xlarge", gpu="H100", price=51.0, region="us-east-2", prices_as_of=OLD),
            make_shape("p5.48xlarge", gpu="H100", price=20.0, provisioning="spot", undated=True),
            make_shape(
                "p5.48xlarge",
                gpu="H100",
                price=52.0,
                region="us-west-2",
                prices_as_of=OLD,
            ),
        ]
    )


def plans_by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["shape_id"]: p for p in doc["plans"]}


def test_plan_document_dates_from_an_injected_today() -> None:
    q = quote(QuoteRequest(rank=RankRequest(gpus=8)), small_dated())
    plans = plans_by_id(json.loads(quote_json(q, today=TODAY)))
    assert plans == plans_by_id(quote_document(q, today=TODAY))  # the same document
    new = plans["aws:us-east-1:p5.48xlarge:on-demand"]
    assert (new["prices_as_of"], new["price_age_days"], new["undated"]) == ("2026-07-20", 12, False)
    old = plans["aws:us-east-2:p5.48xlarge:on-demand"]
    assert (old["prices_as_of"], old["price_age_days"], old["undated"]) == (
        "2026-01-21",
        192,
        False,
    )
    carried = plans["aws:us-east-1:p5.48xlarge:spot"]
    assert (carried["prices_as_of"], carried["price_age_days"], carried["undated"]) == (
        None,
        None,
        True,
    )
    later = quote_document(q, today=TODAY + timedelta(days=10))
    assert plans_by_id(later)["aws:us-east-2:p5.48xlarge:on-demand"]["price_age_days"] == 202
    # one plan alone, as the HTTP API may build it
    one = plan_document(q, 1, q.plans[0], TODAY)
    assert one["price_age_days"] == q.plans[0].shape.age_days(TODAY)


def test_bundled_aws_plans_carry_their_region_dates() -> None:
    """us-east-2's on-demand price is dated by its region entry, us-east-1's by the file."""
    catalog = load_bundled_catalog()
    req = RankRequest(
        gpus=16,
        filter=ShapeFilter(gpus=("H100",), providers=("aws",), regions=("us-east-1", "us-east-2")),
    )
    doc = quote_document(quote(QuoteRequest(rank=req), catalog), today=TODAY)
    plans = plans_by_id(doc)
    east1 = plans["aws:us-east-1:p5.48xlarge:on-demand"]
    east2 = plans["aws:us-east-2:p5.48xlarge:on-demand"]
    assert east1["prices_as_of"] == "2026-07-20" and east1["price_age_days"] == 12
    assert east2["prices_as_of"] == "2026-01-21" and east2["price_age_days"] == 192
    spot = plans["aws:us-east-2:p5.48xlarge:spot"]  # every AWS spot price is carried
    assert spot["prices_as_of"] is None and spot["undated"] is True
    assert spot["price_age_days"] is None
    # the header's per-provider dates stay
    sources = {s["provider"]: s for s in doc["catalog"]["sources"]}
    assert sources["aws"]["prices_as_of"] == "2026-07-20"


def test_text_quote_marks_undated_and_old_prices() -> None:
    q = quote(QuoteRequest(rank=RankRequest(gpus=8)), small_dated())
    text = quote_table(q.plans, 1.0, today=TODAY)
    lines = text.splitlines()
    rows = {line.split()[1]: line for line in lines[1 : 1 + len(q.plans)]}
    assert "$20.00*" in rows["aws:us-east-1:p5.48xlarge:spot"]
    assert "*" not in rows["aws:us-east-1:p5.48xlarge:on-demand"]
    assert lines.count(UNDATED_NOTE) == 1
    ranks = {p.shape.id: i for i, p in enumerate(q.plans, start=1)}
    stale = [line for line in lines if "over 90 days old" in line]
    assert len(stale) == 1  # said once, not on each plan's line
    old_ranks = sorted(ranks[f"aws:{r}:p5.48xlarge:on-demand"] for r in ("us-east-2", "us-west-2"))
    assert old_ranks == [3, 4]  # cheapest first: spot 20, 50, 51, 52
    assert stale[0] == "price over 90 days old: plans 3-4 as of 2026-01-21 (192 days)"
    # nothing old, nothing undated: no footnote
    fresh = quote(
        QuoteRequest(rank=RankRequest(gpus=8, filter=ShapeFilter(regions=("us-east-1",)))),
        small_dated(),
    )
    dated_only = [p for p in fresh.plans if not p.shape.undated]
    assert [p.shape.prices_as_of for p in dated_only] == [NEW]
    assert len(quote_table(dated_only, 1.0, today=TODAY).splitlines()) == 2  # header, 1 plan
    # "today" moved on: the us-east-1 price is old too, with its own age
    later = quote_table(q.plans, 1.0, today=NEW + timedelta(days=91)).splitlines()
    note = next(line for line in later if "over 90 days old" in line)
    assert note == (
        "price over 90 days old: plans 3-4 as of 2026-01-21 (271 days); "
        "2 as of 2026-07-20 (91 days)"
    )


def test_price_date_notes_count_unnamed_rows() -> None:
    shapes = [
        make_shape(prices_as_of=OLD),
        make_shape("g6.xlarge", gpu="L4", gpus=1, prices_as_of=OLD),
    ]
    assert price_date_notes((("", s) for s in shapes), "shape", TODAY) == [
        "price over 90 days old: 2 shapes as of 2026-01-21 (192 days)"
    ]
    table, notes = shapes_table([*shapes, make_shape(undated=True, region="us-east-2")], TODAY)
    assert "$10.00*" in table and notes[0] == UNDATED_NOTE and len(notes) == 2
    assert shape_document(shapes[0], TODAY)["price_age_days"] == 192


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_quote_json_carries_each_plans_date(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "quote", "--gpus", "16", "--gpu", "H100", "--json", "--limit", "0")
    assert code == 0
    plans = json.loads(out)["plans"]
    catalog = load_bundled_catalog()
    today = date.today()
    for plan in plans:
        shape = catalog.get(plan["shape_id"])
        assert shape is not None
        assert plan["undated"] is shape.undated
        if shape.undated:
            assert plan["prices_as_of"] is None and plan["price_age_days"] is None
        else:
            assert shape.prices_as_of is not None
            assert plan["prices_as_of"] == shape.prices_as_of.isoformat()
            assert plan["price_age_days"] == (today - shape.prices_as_of).days
    assert {p["undated"] for p in plans} == {True, False}  # both kinds are quoted
    by_id = plans_by_id({"plans": plans})
    assert by_id["aws:us-east-2:p5.48xlarge:on-demand"]["prices_as_of"] == "2026-01-21"
    assert by_id["aws:us-east-1:p5.48xlarge:on-demand"]["prices_as_of"] == "2026-07-20"


def test_cli_quote_text_footnotes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "quote", "--gpus", "16", "--gpu", "H100", "--provider", "aws", "--spot"
    )
    assert code == 0
    lines = out.splitlines()
    plan_lines = [line for line in lines if line.split()[:1] and line.split()[0].isdigit()]
    assert plan_lines and all("*" in line for line in plan_lines)  # AWS spot: all carried
    assert lines.count(UNDATED_NOTE) == 1
    assert "prices as of aws 2026-07-20" in lines[0]  # the header's provider line stays


def test_cli_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "shapes", "--provider", "aws", "--region", "us-east-2")
    assert code == 0
    rows = out.splitlines()[1:]
    spot = [r for r in rows if r.split()[0].endswith(":spot")]
    assert spot and all("*" in r for r in spot)
    assert UNDATED_NOTE in err.splitlines()
    code, out, _ = run(
        capsys, "shapes", "--provider", "aws", "--region", "us-east-2", "--on-demand", "--json"
    )
    docs = json.loads(out)
    assert docs and all(d["prices_as_of"] == "2026-01-21" for d in docs)
    assert all(d["price_age_days"] == (date.today() - OLD).days for d in docs)
    assert {d["provisioning"] for d in docs} == {Provisioning.ON_DEMAND.value}
