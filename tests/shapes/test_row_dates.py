"""Each shape's own price date (issue 13 §1): on-demand from its region entry's
``prices_as_of`` else its file's, spot from ``spot_as_of`` (entry, else file), and a market
the entry lists as ``undated`` (or that no date covers) undated; the parsed and the compiled
loader agree on every shape's date."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

import shapes.catalog as catalog_mod
from shapes.catalog import (
    BUNDLED_DIR,
    ShapeList,
    load_bundled_catalog,
    load_catalog,
    parse_catalog_file,
)
from shapes.errors import CatalogError
from shapes.model import STALE_DAYS, Shape, day_code, day_of
from tests.conftest import make_shape

DATED: dict[str, Any] = {
    "provider": "aws",
    "prices_as_of": "2026-07-20",
    "spot_as_of": "2026-07-25",
    "retrieved": "2026-08-01",
    "price_source": "test fixture",
    "instance_types": {
        "p5.48xlarge": {
            "gpu": "H100",
            "gpus": 8,
            "gpu_memory_gib": 80,
            "vcpus": 192,
            "memory_gib": 2048,
            "regions": {
                # the file's dates
                "us-east-1": {
                    "zones": ["use1-az1", "use1-az2"],
                    "on_demand": 55.04,
                    "spot": {"use1-az1": 30.0, "use1-az2": 31.5},
                },
                # its own on-demand date (older); spot the file's
                "us-east-2": {
                    "zones": ["use2-az1"],
                    "on_demand": 55.04,
                    "prices_as_of": "2026-01-21",
                    "spot": 28.75,
                },
                # its own spot date; on-demand carried, undated
                "us-west-2": {
                    "zones": ["usw2-az1"],
                    "on_demand": 60.0,
                    "spot": 29.0,
                    "spot_as_of": "2026-06-30",
                    "undated": ["on_demand"],
                },
                # spot carried, undated (even though the file has a spot date)
                "eu-west-2": {
                    "zones": ["euw2-az1"],
                    "on_demand": 71.552,
                    "prices_as_of": "2026-01-21",
                    "spot": {"euw2-az1": 43.0},
                    "undated": ["spot"],
                },
            },
        }
    },
}

EXPECTED = {
    "aws:us-east-1:p5.48xlarge:on-demand": (date(2026, 7, 20), False),
    "aws:us-east-1:p5.48xlarge:spot": (date(2026, 7, 25), False),
    "aws:us-east-2:p5.48xlarge:on-demand": (date(2026, 1, 21), False),
    "aws:us-east-2:p5.48xlarge:spot": (date(2026, 7, 25), False),
    "aws:us-west-2:p5.48xlarge:on-demand": (None, True),
    "aws:us-west-2:p5.48xlarge:spot": (date(2026, 6, 30), False),
    "aws:eu-west-2:p5.48xlarge:on-demand": (date(2026, 1, 21), False),
    "aws:eu-west-2:p5.48xlarge:spot": (None, True),
}


@pytest.fixture(autouse=True)
def _fresh_process_cache() -> Iterator[None]:
    """Each load below reads the files (as a new process would)."""
    catalog_mod._CACHE.clear()
    yield
    catalog_mod._CACHE.clear()


def write(directory: Path, doc: object, name: str = "aws.json") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps(doc))
    return path


def dates(shapes: Any) -> dict[str, tuple[date | None, bool]]:
    return {s.id: (s.prices_as_of, s.undated) for s in shapes}


def test_each_shape_carries_its_own_date(tmp_path: Path) -> None:
    _, parsed = parse_catalog_file(write(tmp_path, DATED), bundled=False)
    assert dates(parsed) == EXPECTED


def test_compiled_loader_keeps_the_dates(tmp_path: Path) -> None:
    local, cache = tmp_path / "catalog", tmp_path / "cache"
    write(local, DATED)
    first = load_catalog(local, cache_dir=cache)  # parses, writes the sidecar
    catalog_mod._CACHE.clear()
    second = load_catalog(local, cache_dir=cache)  # from the sidecar
    assert isinstance(second.shapes, ShapeList)
    aws = {k: v for k, v in dates(second.shapes).items() if k.startswith("aws:")}
    assert aws == EXPECTED
    # one at a time (ShapeList._make) as well as all at once (__iter__)
    catalog_mod._CACHE.clear()
    third = load_catalog(local, cache_dir=cache)
    for shape_id, expected in EXPECTED.items():
        shape = third.get(shape_id)
        assert shape is not None and (shape.prices_as_of, shape.undated) == expected
    assert list(first.shapes) == list(second.shapes)


def test_no_spot_date_anywhere_means_undated(tmp_path: Path) -> None:
    """A refreshed file that gives spot no date: its spot prices are undated, never dated
    by the on-demand date."""
    doc = json.loads(json.dumps(DATED))
    del doc["spot_as_of"]
    _, parsed = parse_catalog_file(write(tmp_path, doc), bundled=False)
    got = dates(parsed)
    assert got["aws:us-east-1:p5.48xlarge:spot"] == (None, True)
    assert got["aws:us-west-2:p5.48xlarge:spot"] == (date(2026, 6, 30), False)  # its own
    assert got["aws:us-east-1:p5.48xlarge:on-demand"] == (date(2026, 7, 20), False)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("undated", ["weekly"], r"us-east-1:p5.48xlarge: undated: must list"),
        ("undated", "spot", r"us-east-1:p5.48xlarge: undated: must list"),
        ("prices_as_of", "20 Jan 2026", r"us-east-1:p5.48xlarge: prices_as_of: must be a date"),
        ("spot_as_of", 20260120, r"us-east-1:p5.48xlarge: spot_as_of"),
    ],
)
def test_a_bad_row_date_is_refused_naming_the_row(
    tmp_path: Path, key: str, value: object, match: str
) -> None:
    doc = json.loads(json.dumps(DATED))
    doc["instance_types"]["p5.48xlarge"]["regions"]["us-east-1"][key] = value
    with pytest.raises(CatalogError, match=match):
        parse_catalog_file(write(tmp_path, doc), bundled=False)


def _oracle(path: Path) -> dict[str, tuple[date | None, bool]]:
    """Every shape's date as the data file says it, read here without the loader."""
    doc = json.loads(path.read_text())
    provider = doc["provider"]
    file_od = doc.get("prices_as_of")
    file_spot = doc.get("spot_as_of")
    out: dict[str, tuple[date | None, bool]] = {}
    for type_, spec in doc["instance_types"].items():
        for region, entry in spec["regions"].items():
            marks = entry.get("undated", [])
            for market, key, as_of in (
                ("on-demand", "on_demand", entry.get("prices_as_of", file_od)),
                ("spot", "spot", entry.get("spot_as_of", file_spot)),
            ):
                if entry.get(key) is None or entry.get(key) == {}:
                    continue
                day = None if key in marks or as_of is None else date.fromisoformat(as_of)
                out[f"{provider}:{region}:{type_}:{market}"] = (day, day is None)
    return out


def test_bundled_dates_as_the_files_say(tmp_path: Path) -> None:
    """Both loaders, every shape of every bundled file, against the files themselves."""
    expected: dict[str, tuple[date | None, bool]] = {}
    for path in sorted(BUNDLED_DIR.glob("*.json")):
        expected.update(_oracle(path))
    parsed = load_bundled_catalog(cache_dir=tmp_path)  # parsed, sidecars written
    assert not isinstance(parsed.shapes, ShapeList) or all(
        s is not None
        for s in parsed.shapes._items  # every one built by the parse
    )
    catalog_mod._CACHE.clear()
    compiled = load_bundled_catalog(cache_dir=tmp_path)
    assert isinstance(compiled.shapes, ShapeList)
    assert all(s is None for s in compiled.shapes._items)  # from the sidecar: none built
    assert dates(parsed.shapes) == expected
    assert dates(compiled.shapes) == expected
    # the markets the issue names: AWS outside us-east-1 carries its older on-demand date
    dated = {k: d for k, (d, _) in expected.items() if d is not None}
    east1 = dated["aws:us-east-1:p5.48xlarge:on-demand"]
    east2 = dated["aws:us-east-2:p5.48xlarge:on-demand"]
    assert east2 < east1
    assert east1 == date.fromisoformat(
        json.loads((BUNDLED_DIR / "aws.json").read_text())["prices_as_of"]
    )
    assert sum(undated for _, undated in expected.values()) > 0  # the carried rows


def test_bundled_undated_counts_match_the_sources() -> None:
    """The loader's per-shape undated marks add up to each file's undated markets."""
    catalog = load_bundled_catalog()
    for path in sorted(BUNDLED_DIR.glob("*.json")):
        doc = json.loads(path.read_text())
        marks = sum(
            len(entry.get("undated", []))
            for spec in doc["instance_types"].values()
            for entry in spec["regions"].values()
        )
        shapes = [s for s in catalog.shapes if s.provider == doc["provider"]]
        assert sum(s.undated for s in shapes) == marks, path.name


def test_age_from_an_injected_today() -> None:
    s = make_shape(prices_as_of=date(2026, 1, 21))
    assert s.age_days(date(2026, 1, 21)) == 0
    assert s.age_days(date(2026, 4, 21)) == 90
    assert not s.is_stale(date(2026, 4, 21))  # 90 days: not over
    assert s.is_stale(date(2026, 4, 22)) and STALE_DAYS == 90
    undated = make_shape(undated=True)
    assert undated.age_days(date(2030, 1, 1)) is None and not undated.is_stale(date(2030, 1, 1))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"prices_as_of": "2026-01-21"}, "prices_as_of must be a date"),
        ({"prices_as_of": datetime(2026, 1, 21, 12)}, "prices_as_of must be a date"),
        ({"undated": 1}, "undated must be true or false"),
        ({"undated": True, "prices_as_of": date(2026, 1, 21)}, "an undated price has no"),
    ],
)
def test_shape_checks_its_date(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_shape(**fields)


def test_shape_json_keeps_the_date() -> None:
    s = make_shape(prices_as_of=date(2026, 1, 21))
    doc = json.loads(json.dumps(s.to_json_dict()))
    assert doc["prices_as_of"] == "2026-01-21" and doc["undated"] is False
    assert Shape.from_json_dict(doc) == s
    u = make_shape(undated=True)
    assert Shape.from_json_dict(json.loads(json.dumps(u.to_json_dict()))) == u
    old = {k: v for k, v in doc.items() if k not in ("prices_as_of", "undated")}
    assert Shape.from_json_dict(old) == dataclasses.replace(s, prices_as_of=None)
    with pytest.raises(ValueError, match="prices_as_of must be a date"):
        Shape.from_json_dict({**doc, "prices_as_of": "last week"})


@pytest.mark.parametrize(
    ("day", "undated"), [(date(2026, 1, 21), False), (None, False), (None, True)]
)
def test_day_codes_round_trip(day: date | None, undated: bool) -> None:
    assert day_of(day_code(day, undated)) == (day, undated)
