"""Catalog loading and validation, the local directory, and filter verdicts (per shape vs
columns)."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapes import catalog as catalog_mod
from shapes.catalog import (
    BUNDLED_DIR,
    Catalog,
    CatalogError,
    ShapeFilter,
    load_bundled_catalog,
    load_catalog,
    parse_catalog_file,
)
from shapes.model import Provisioning
from tests.conftest import make_shape

MINI = {
    "provider": "aws",
    "currency": "USD",
    "prices_as_of": "2026-11-01",
    "spot_as_of": "2026-11-01",
    "retrieved": "2026-11-02",
    "price_source": "test fixture",
    "notes": "",
    "instance_types": {
        "g6.xlarge": {
            "gpu": "L4",
            "gpus": 1,
            "gpu_memory_gib": 24,
            "vcpus": 4,
            "memory_gib": 16,
            "regions": {
                "us-east-1": {
                    "zones": ["use1-az1", "use1-az2", "use1-az4"],
                    "on_demand": 0.8048,
                    "spot": {"use1-az1": 0.31, "use1-az2": 0.45},
                }
            },
        }
    },
}


def write(tmp_path: Path, doc: object, name: str = "aws.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_parse_file_expands_markets_and_keeps_zone_prices(tmp_path: Path) -> None:
    source, shapes = parse_catalog_file(write(tmp_path, MINI), bundled=False)
    assert source.shapes == 2 and source.price_source == "test fixture"
    by_market = {s.provisioning: s for s in shapes}
    od, spot = by_market[Provisioning.ON_DEMAND], by_market[Provisioning.SPOT]
    assert od.price_per_node_hour == 0.8048 and od.zone_prices is None
    # AWS spot varies by zone: quoted at the cheapest zone's price (tried first), up to the top
    assert spot.price_per_node_hour == 0.31 and spot.price_per_node_hour_max == 0.45
    assert spot.zone_prices == {"use1-az1": 0.31, "use1-az2": 0.45}
    assert spot.zones == ("use1-az1", "use1-az2", "use1-az4")


REGION = ("instance_types", "g6.xlarge", "regions", "us-east-1")


def _at(doc: dict, path: tuple[str, ...]) -> dict:  # type: ignore[type-arg]
    for key in path:
        doc = doc[key]
    return doc


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        (lambda d: d.pop("instance_types"), "missing 'instance_types'"),
        (lambda d: d.update(provider="gcp"), "is 'gcp', but the file is named aws.json"),
        (lambda d: _at(d, REGION[:2]).update(gpu="L4-24GB"), "instance_types.g6.xlarge"),
        (lambda d: _at(d, REGION[:2]).update(gpus="1"), "gpus_per_node must be an integer"),
        (lambda d: _at(d, REGION[:2]).update(gpus=True), "gpus_per_node must be an integer"),
        (
            lambda d: _at(d, REGION).update(on_demand=-1),
            "aws:us-east-1:g6.xlarge:on-demand: must be > 0",
        ),
        (
            lambda d: _at(d, REGION).update(on_demand=0),
            "aws:us-east-1:g6.xlarge:on-demand: must be > 0",
        ),
        (
            lambda d: _at(d, REGION).update(on_demand="0.8"),
            "aws:us-east-1:g6.xlarge:on-demand: must be a number",
        ),
        (
            lambda d: _at(d, REGION)["spot"].update({"use1-az1": -0.31}),
            "aws:us-east-1:g6.xlarge:spot: zone use1-az1: must be > 0",
        ),
        (
            lambda d: _at(d, REGION)["spot"].update({"use9-az9": 0.31}),
            "aws:us-east-1:g6.xlarge:spot: prices zones not in zones",
        ),
        (lambda d: _at(d, REGION).update(zones="use1-az1"), "zones: must be a list of strings"),
        (lambda d: d.update(prices_as_of="yesterday"), "prices_as_of"),
    ],
)
def test_malformed_catalog_names_the_file_and_the_entry(  # type: ignore[no-untyped-def]
    tmp_path: Path, breakage, where: str
) -> None:
    doc = json.loads(json.dumps(MINI))
    breakage(doc)
    path = write(tmp_path, doc)
    with pytest.raises(CatalogError, match="malformed catalog") as info:
        parse_catalog_file(path, bundled=False)
    assert str(path) in str(info.value) and where in str(info.value), str(info.value)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("key", ["on_demand", "spot"])
def test_nan_and_infinite_prices_are_refused(tmp_path: Path, constant: str, key: str) -> None:
    """Python's json reads NaN and Infinity; a catalog must not (they would reach --json
    output, which would then not be JSON)."""
    doc = json.loads(json.dumps(MINI))
    _at(doc, REGION)[key] = 1.25
    text = json.dumps(doc).replace("1.25", constant)
    path = tmp_path / "aws.json"
    path.write_text(text)
    with pytest.raises(CatalogError, match=f"{path}.*{constant}.*not a number"):
        parse_catalog_file(path, bundled=False)
    with pytest.raises(CatalogError, match=re.escape(str(path))):
        load_catalog(tmp_path)  # a refreshed file is read the same way


def test_huge_number_is_an_infinite_price(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(MINI))
    _at(doc, REGION)["on_demand"] = 7.0
    path = tmp_path / "aws.json"
    path.write_text(json.dumps(doc).replace("7.0", "1e999"))
    with pytest.raises(CatalogError, match="on-demand: must be > 0 and finite, got inf"):
        parse_catalog_file(path, bundled=False)


def test_override_dir_replaces_one_provider(tmp_path: Path) -> None:
    write(tmp_path, MINI)
    cat = load_catalog(tmp_path)
    aws = [s for s in cat.shapes if s.provider == "aws"]
    assert {s.instance_type for s in aws} == {"g6.xlarge"}
    assert any(s.provider == "gcp" for s in cat.shapes)  # others still bundled
    src = {s.provider: s for s in cat.sources}
    assert not src["aws"].bundled and src["gcp"].bundled
    assert src["aws"].path == str(tmp_path / "aws.json")


def test_no_local_dir_means_bundled_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """shapes reads no environment variable: the caller passes the local directory."""
    write(tmp_path, MINI)
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(tmp_path))
    assert all(s.bundled for s in load_catalog(None).sources)
    assert load_catalog(None) is load_bundled_catalog()


def test_a_new_cloud_is_a_data_file(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(MINI))
    doc["provider"] = "lambda"
    write(tmp_path, doc, name="lambda.json")
    cat = load_catalog(tmp_path)
    assert cat.providers == ("aws", "azure", "gcp", "lambda")
    assert cat.get("lambda:us-east-1:g6.xlarge:spot") is not None


def test_a_file_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    write(tmp_path, MINI)
    assert load_catalog(tmp_path).get("aws:us-east-1:g6.xlarge:on-demand") is not None
    doc = json.loads(json.dumps(MINI))
    _at(doc, REGION).update(on_demand=0.9, zones=["use1-az1", "use1-az2", "use1-az4", "x"])
    write(tmp_path, doc)
    shape = load_catalog(tmp_path).get("aws:us-east-1:g6.xlarge:on-demand")
    assert shape is not None and shape.price_per_node_hour == 0.9


def test_catalog_as_of_is_unknown_if_any_source_is() -> None:
    cat = load_catalog(BUNDLED_DIR / "does-not-exist")
    assert all(s.bundled for s in cat.sources)
    stamps = [s.prices_as_of for s in cat.sources]
    if None in stamps:
        assert cat.as_of is None
        assert "price date unknown" in cat.describe_age()


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(CatalogError, match="duplicate shape id"):
        Catalog.of([make_shape("x.1"), make_shape("X.1")])


def test_catalog_is_sorted_and_looked_up_case_insensitively() -> None:
    cat = Catalog.of([make_shape("b.1"), make_shape("a.1")])
    assert [s.instance_type for s in cat.shapes] == ["a.1", "b.1"]
    assert cat.get("AWS:US-EAST-1:B.1:ON-DEMAND") is cat.shapes[1]
    assert cat.get("aws:us-east-1:c.1:on-demand") is None


filters = st.builds(
    ShapeFilter,
    gpus=st.lists(st.sampled_from(["H100", "A100", "a100-80gb", "L4", "T4"]), max_size=2).map(
        tuple
    ),
    providers=st.lists(st.sampled_from(["aws", "GCP", "azure"]), max_size=2).map(tuple),
    regions=st.lists(st.sampled_from(["us-east-1", "US-CENTRAL1", "eastus"]), max_size=2).map(
        tuple
    ),
    provisioning=st.sampled_from([None, Provisioning.SPOT, Provisioning.ON_DEMAND]),
)


@settings(max_examples=100, deadline=None)
@given(flt=filters)
def test_columnar_select_agrees_with_per_shape_reject(flt: ShapeFilter) -> None:
    cat = load_catalog()
    kept = flt.select(cat.columns)
    assert kept == [i for i, s in enumerate(cat.shapes) if flt.reject(s) is None]


def test_a_refreshed_file_shows_its_date_in_the_quote_header(tmp_path: Path) -> None:
    write(tmp_path, MINI)  # a refreshed aws.json, dated, beside the bundled gcp/azure
    age = load_catalog(tmp_path).describe_age(today=date(2026, 11, 11))
    assert age.startswith("prices as of aws 2026-11-01 (10 days, refreshed), azure 2026-08-22")
    assert "gcp 2026-07-30 (104 days, " in age
    assert age.endswith("older than 90 days: gcp")  # aws 10 days, azure 81
    assert "unknown" not in age and "sanity" not in age


def test_the_age_phrase_counts_days_and_calls_out_old_prices(tmp_path: Path) -> None:
    write(tmp_path, MINI)
    catalog = load_catalog(tmp_path)
    aws = next(s for s in catalog.sources if s.provider == "aws")
    assert aws.age_days(date(2026, 11, 11)) == 10 and not aws.is_stale(date(2026, 11, 11))
    assert aws.age_days(date(2027, 1, 30)) == 90 and not aws.is_stale(date(2027, 1, 30))
    assert aws.is_stale(date(2027, 1, 31))  # 91 days
    assert "older than 90 days: aws, azure, gcp" in catalog.describe_age(today=date(2027, 1, 31))
    assert aws.spot_as_of == date(2026, 11, 1)


def test_a_refreshed_file_that_fails_a_sanity_check_loads_and_says_so(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(MINI))
    doc["instance_types"]["g6.xlarge"]["regions"]["us-east-1"]["spot"]["use1-az2"] = 0.9
    write(tmp_path, doc)
    catalog = load_catalog(tmp_path)  # a warning, never a crash
    aws = next(s for s in catalog.sources if s.provider == "aws")
    assert aws.problems == (
        "aws/g6.xlarge/us-east-1/use1-az2: spot in use1-az2 $0.9/h is not below on-demand "
        "$0.8048/h [spot-below-on-demand]",
    )
    assert "sanity problems in aws (1): see broker catalog check" in catalog.describe_age()
    assert catalog.get("aws:us-east-1:g6.xlarge:spot") is not None  # prices used as they are
    # The next process reads the compiled sidecar: the problems are in it too.
    assert (tmp_path / ".aws.json.compiled").exists()
    catalog_mod._CACHE.clear()
    again = next(s for s in load_catalog(tmp_path).sources if s.provider == "aws")
    assert again.problems == aws.problems


@pytest.mark.parametrize("as_of", [None, "missing"])
def test_a_bundled_file_without_a_price_date_is_refused(tmp_path: Path, as_of: object) -> None:
    doc = json.loads(json.dumps(MINI))
    if as_of == "missing":
        del doc["prices_as_of"]
    else:
        doc["prices_as_of"] = as_of
    path = write(tmp_path, doc)
    with pytest.raises(CatalogError, match="prices_as_of: a bundled file must say when"):
        parse_catalog_file(path, bundled=True)
    source, _ = parse_catalog_file(path, bundled=False)  # a refreshed one: date unknown
    assert source.prices_as_of is None


def test_bundled_files_count_their_undated_prices_by_shape() -> None:
    catalog = load_bundled_catalog()
    for source in catalog.sources:  # the header's count is the shapes marked * in a quote
        marked = sum(1 for s in catalog.shapes if s.provider == source.provider and s.undated)
        assert source.undated == marked, source.provider
    by_provider = {s.provider: s for s in catalog.sources}
    assert by_provider["gcp"].undated > 0 and by_provider["gcp"].problems == ()
    azure = by_provider["azure"]
    assert f"{azure.undated} of {azure.shapes} prices undated" in catalog.describe_age()
