"""Spot quotes that match where the gang lands: a shape whose price varies by zone is
quoted at the zone the provisioner tries first (the cheapest one not blocked), shows the
range across its zones, and a price cap skips only the zones above it."""

from __future__ import annotations

import time
from pathlib import Path

from broker.api import Broker
from broker.quote import QuoteRequest
from broker.ranking import RankRequest, Rule, offer, order_zones, rank
from broker.scopes import BlockScope
from shapes.catalog import Catalog
from shapes.model import Provisioning, Shape

SPOT = Shape(
    provider="aws",
    region="us-east-1",
    instance_type="g5.12xlarge",
    gpu="A10G",
    gpus_per_node=4,
    gpu_memory_gib=24,
    vcpus=48,
    memory_gib=192,
    provisioning=Provisioning.SPOT,
    price_per_node_hour=1.0,
    zones=("use1-az1", "use1-az2", "use1-az4", "use1-az6"),
    zone_prices={"use1-az1": 3.0, "use1-az2": 1.0, "use1-az4": 2.0},  # az6: no price of its own
)
ON_DEMAND = Shape(
    provider="aws",
    region="us-east-2",
    instance_type="g5.12xlarge",
    gpu="A10G",
    gpus_per_node=4,
    gpu_memory_gib=24,
    vcpus=48,
    memory_gib=192,
    provisioning=Provisioning.ON_DEMAND,
    price_per_node_hour=1.5,
    zones=("use2-az1",),
)
CATALOG = Catalog.of([SPOT, ON_DEMAND])


def test_a_zone_priced_shape_is_quoted_at_its_cheapest_zone_with_the_range() -> None:
    plans = list(rank(RankRequest(gpus=8), CATALOG).plans)  # 2 nodes
    assert [p.shape.id for p in plans] == [SPOT.id, ON_DEMAND.id]
    spot = plans[0]
    assert spot.price_per_hour == 2.0 and spot.price_per_hour_max == 6.0
    assert order_zones(spot.shape) == ["use1-az2", "use1-az4", "use1-az1", "use1-az6"]
    assert spot.price_in_zone("use1-az4") == 4.0
    assert spot.price_in_zone("use1-az6") == 6.0  # unknown: the top of the range
    assert plans[1].price_per_hour == plans[1].price_per_hour_max == 3.0


def test_blocked_zones_reprice_the_shape_at_the_cheapest_zone_left() -> None:
    blocked = {SPOT.key: frozenset({"use1-az2"})}
    ranking = rank(RankRequest(gpus=8), CATALOG, blocked_zones=blocked)
    plans = list(ranking.plans)
    assert [p.shape.id for p in plans] == [ON_DEMAND.id, SPOT.id]  # 2 x 2.0 > 2 x 1.5
    spot = plans[1]
    assert spot.price_per_hour == 4.0 and spot.price_per_hour_max == 6.0
    assert "use1-az2" not in spot.shape.zones
    assert order_zones(spot.shape) == ["use1-az4", "use1-az1", "use1-az6"]


def test_a_price_cap_skips_only_the_zones_above_it() -> None:
    ranking = rank(RankRequest(gpus=8, max_price_per_hour=4.5), CATALOG, explain=True)
    spot = next(p for p in ranking.plans if p.shape.id == SPOT.id)
    assert spot.price_per_hour == 2.0 and spot.price_per_hour_max == 4.0
    assert order_zones(spot.shape) == ["use1-az2", "use1-az4"]  # az1 (6.0) and unpriced az6 out
    assert spot.shape.id == SPOT.id  # the same shape, offered in fewer zones


def test_a_cap_below_every_open_zone_excludes_the_shape_with_the_cheapest_open_price() -> None:
    request = RankRequest(gpus=8, max_price_per_hour=3.5)
    blocked = {SPOT.key: frozenset({"use1-az2"})}
    ranking = rank(request, CATALOG, blocked_zones=blocked, explain=True)
    assert [p.shape.id for p in ranking.plans] == [ON_DEMAND.id]
    why = next(e for e in ranking.excluded if e.shape_id == SPOT.id)
    assert why.rule is Rule.MAX_PRICE and why.price_per_hour == 4.0
    assert "cheapest open zone" in why.reason


def test_the_priority_path_offers_the_same_zones() -> None:
    request = RankRequest(gpus=8, priority=(SPOT.id,), max_price_per_hour=4.5)
    (plan,) = rank(request, CATALOG).plans
    assert plan.price_per_hour == 2.0 and order_zones(plan.shape) == ["use1-az2", "use1-az4"]


def test_offer_leaves_one_price_shapes_alone_and_says_none_when_nothing_is_left() -> None:
    assert offer(ON_DEMAND, 2, 0.5) is ON_DEMAND  # the cap applies to it whole, elsewhere
    assert offer(SPOT, 1, None) is SPOT
    assert offer(SPOT, 1, 0.5) is None
    every = frozenset(SPOT.zone_prices or ())
    assert offer(SPOT, 1, None, every) is None


def test_the_broker_quotes_around_a_blocked_zone_and_records_the_zone_it_landed_in(
    tmp_path: Path,
) -> None:
    broker = Broker(state_dir=tmp_path, backend="sim", catalog=CATALOG, sleep=lambda _s: None)
    now = time.time()
    broker.store.block(
        BlockScope.zone_of("sim", SPOT, "use1-az2"), reason="stockout", until=now + 600, now=now
    )
    request = QuoteRequest(rank=RankRequest(gpus=8, priority=(SPOT.id,)))
    (plan,) = broker.quote(request).plans
    assert plan.price_per_hour == 4.0  # use1-az4, the cheapest zone left
    cluster = broker.provision(request)
    assert cluster.zone == "use1-az4"
    assert cluster.price_per_hour == 4.0


def test_the_quote_document_shows_the_range_and_each_zones_price() -> None:
    from broker.quote import quote
    from broker.views import quote_document

    doc = quote_document(quote(QuoteRequest(rank=RankRequest(gpus=8)), CATALOG))
    spot = next(p for p in doc["plans"] if p["shape_id"] == SPOT.id)
    assert spot["price_per_hour"] == 2.0 and spot["price_per_hour_max"] == 6.0
    assert spot["zones"] == ["use1-az2", "use1-az4", "use1-az1", "use1-az6"]
    assert spot["zone_prices_per_hour"] == [2.0, 4.0, 6.0, 6.0]
    od = next(p for p in doc["plans"] if p["shape_id"] == ON_DEMAND.id)
    assert od["zone_prices_per_hour"] is None and od["price_per_hour_max"] == 3.0
