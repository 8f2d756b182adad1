"""Property tests of the ranking (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.ranking import RankRequest, rank, split_gpus
from shapes.catalog import Catalog
from tests.conftest import make_shape

gpu_counts = st.integers(min_value=1, max_value=72)
per_node = st.sampled_from([1, 2, 4, 8, 16])


@given(gpus=gpu_counts, g=per_node)
def test_split_multiplies_back_and_is_minimal(gpus: int, g: int) -> None:
    nodes, procs = split_gpus(gpus, g)
    assert nodes * procs == gpus
    assert procs <= g
    # smallest such n: no smaller n >= ceil(G/g) divides G
    assert all(gpus % n for n in range(-(-gpus // g), nodes))


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    n = draw(st.integers(min_value=1, max_value=30))
    shapes = []
    for i in range(n):
        shapes.append(
            make_shape(
                f"type{i}.x",
                gpus=draw(per_node),
                price=draw(st.sampled_from([0.5, 1.0, 2.0, 2.5, 4.0, 8.0, 10.0, 32.77])),
                region=draw(st.sampled_from(["us-east-1", "us-west-2"])),
            )
        )
    return Catalog.of(shapes)


@settings(max_examples=200, deadline=None)
@given(cat=catalogs(), gpus=st.integers(min_value=1, max_value=48))
def test_without_priority_order_is_price_then_nodes_then_id(cat: Catalog, gpus: int) -> None:
    plans = rank(RankRequest(gpus=gpus), cat).plans
    assert len(plans) == len(cat)
    keys = [(p.price_per_hour, p.nodes, p.shape.key) for p in plans]
    assert keys == sorted(keys)
    for p in plans:
        assert p.nodes * p.procs_per_node == gpus


@settings(max_examples=200, deadline=None)
@given(cat=catalogs(), gpus=st.integers(min_value=1, max_value=48), data=st.data())
def test_priority_order_is_kept(cat: Catalog, gpus: int, data: st.DataObject) -> None:
    ids = [s.id for s in cat.shapes]
    prio = data.draw(st.lists(st.sampled_from([*ids, "aws:nowhere:none:spot"]), max_size=12))
    r = rank(RankRequest(gpus=gpus, priority=tuple(prio)), cat)
    known = [p for p in prio if p in ids]
    expected = list(dict.fromkeys(known))  # first occurrence, in order
    if expected:
        assert [p.shape.id for p in r.plans] == expected
    else:
        assert len(r.plans) == len(cat)  # fell back to every shape
