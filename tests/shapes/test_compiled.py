"""Compiled catalog files (shapes.compiled): written after a validating parse, used while
the source is unchanged, never trusted when stale, damaged, of another format or written
by other checks; lazily built shapes equal parsed ones."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

import shapes.catalog as catalog_mod
from shapes import compiled
from shapes.catalog import (
    BUNDLED_DIR,
    Catalog,
    ShapeList,
    load_catalog,
    parse_catalog_file,
)
from shapes.errors import CatalogError

MINI: dict[str, Any] = {
    "provider": "aws",
    "prices_as_of": "2026-11-01",
    "retrieved": "2026-11-02",
    "price_source": "test fixture",
    "instance_types": {
        "g6.xlarge": {
            "gpu": "L4",
            "gpus": 1,
            "gpu_memory_gib": 24,
            "vcpus": 4,
            "memory_gib": 16,
            "regions": {
                "us-east-1": {
                    "zones": ["use1-az1", "use1-az2"],
                    "on_demand": 0.8048,
                    "spot": {"use1-az1": 0.31, "use1-az2": 0.45},
                }
            },
        }
    },
}


def write(directory: Path, doc: object, name: str = "aws.json") -> Path:
    path = directory / name
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(autouse=True)
def _fresh_process_cache() -> Iterator[None]:
    """Each load below reads the files (as a new process would)."""
    catalog_mod._CACHE.clear()
    yield
    catalog_mod._CACHE.clear()


class ParseSpy:
    """Counts the validating JSON parses the loader makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[Path] = []
        real = catalog_mod._parse_file

        def spy(path: Path, bundled: bool) -> Any:
            self.paths.append(path)
            return real(path, bundled)

        monkeypatch.setattr(catalog_mod, "_parse_file", spy)


def reload(local: Path | None, cache_dir: Path | None = None) -> Catalog:
    catalog_mod._CACHE.clear()
    return load_catalog(local, cache_dir=cache_dir)


def sidecar(source: Path) -> Path:
    return source.with_name(f".{source.name}.compiled")


def mini(price: float = 0.8048) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(MINI))
    doc["instance_types"]["g6.xlarge"]["regions"]["us-east-1"]["on_demand"] = price
    return doc


def test_a_sidecar_is_written_then_used_instead_of_the_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINI)
    first = reload(tmp_path)
    assert sidecar(path).is_file()
    spy = ParseSpy(monkeypatch)
    second = reload(tmp_path)
    assert path not in spy.paths  # the local file came compiled
    assert all(p.parent == BUNDLED_DIR for p in spy.paths)  # no cache dir: those are parsed
    assert isinstance(second.shapes, ShapeList)
    assert list(second.shapes) == list(first.shapes)
    assert second.sources == first.sources


def test_bundled_files_compile_into_the_cache_dir_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(p.name for p in BUNDLED_DIR.iterdir())
    cache = tmp_path / "cache"
    eager = reload(None)
    reload(None, cache)
    assert sorted(p.name for p in BUNDLED_DIR.iterdir()) == before  # nothing in the package
    assert len(list(cache.glob("*.compiled"))) == len(list(BUNDLED_DIR.glob("*.json")))
    spy = ParseSpy(monkeypatch)
    lazy = reload(None, cache)
    assert spy.paths == []
    assert lazy.shapes == eager.shapes and lazy.sources == eager.sources


def test_a_changed_file_is_parsed_again_and_its_sidecar_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, mini(0.8048))
    reload(tmp_path)
    st = path.stat()
    write(tmp_path, mini(0.9048))  # same size; put the old mtime back, too
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    spy = ParseSpy(monkeypatch)
    cat = reload(tmp_path)
    assert path in spy.paths
    assert cat.get("aws:us-east-1:g6.xlarge:on-demand").price_per_node_hour == 0.9048  # type: ignore[union-attr]
    spy.paths.clear()
    again = reload(tmp_path)  # the rewritten sidecar holds the new price
    assert path not in spy.paths
    assert again.get("aws:us-east-1:g6.xlarge:on-demand").price_per_node_hour == 0.9048  # type: ignore[union-attr]


def test_a_file_replaced_by_another_is_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``broker catalog refresh`` installs a file: a new file renamed over the old."""
    path = write(tmp_path, mini(0.8048))
    reload(tmp_path)
    new = write(tmp_path, mini(1.5), name="aws.json.partial")
    os.replace(new, path)
    spy = ParseSpy(monkeypatch)
    cat = reload(tmp_path)
    assert path in spy.paths
    assert cat.get("aws:us-east-1:g6.xlarge:on-demand").price_per_node_hour == 1.5  # type: ignore[union-attr]


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _foreign_version(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"BBCATv%03d" % compiled.FORMAT_VERSION)
    path.write_bytes(b"BBCATv%03d" % (compiled.FORMAT_VERSION + 1) + data[9:])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("spoil", [_damage, _truncate, _foreign_version, _empty])
def test_a_spoiled_sidecar_is_ignored_and_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spoil: Any
) -> None:
    path = write(tmp_path, MINI)
    good = reload(tmp_path)
    spoil(sidecar(path))
    spy = ParseSpy(monkeypatch)
    cat = reload(tmp_path)
    assert path in spy.paths
    assert list(cat.shapes) == list(good.shapes)
    st = path.stat()
    assert compiled.read(path, compiled.file_stamp(st), bundled=False, cache_dir=None) is not None


@pytest.mark.parametrize(
    "wrong",
    [{"price": [1.0]}, {"keys": ("a", "b")}, {"price_source": None}, {"provider": 1}],
)
def test_a_sidecar_with_a_wrong_layout_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrong: dict[str, Any]
) -> None:
    """A well-formed sidecar (magic, CRC, stamp) whose payload is not the columns."""
    path = write(tmp_path, MINI)
    reload(tmp_path)
    stamp = compiled.file_stamp(path.stat())
    cols = compiled.read(path, stamp, bundled=False, cache_dir=None)
    assert cols is not None
    compiled.write(path, stamp, cols._replace(**wrong), bundled=False, cache_dir=None)
    assert compiled.read(path, stamp, bundled=False, cache_dir=None) is None
    spy = ParseSpy(monkeypatch)
    reload(tmp_path)
    assert path in spy.paths


def test_a_sidecar_with_a_bad_date_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINI)
    reload(tmp_path)
    stamp = compiled.file_stamp(path.stat())
    cols = compiled.read(path, stamp, bundled=False, cache_dir=None)
    assert cols is not None
    compiled.write(path, stamp, cols._replace(retrieved="yesterday"), bundled=False, cache_dir=None)
    spy = ParseSpy(monkeypatch)
    cat = reload(tmp_path)
    assert path in spy.paths
    assert [s.retrieved for s in cat.sources if s.path == str(path)] == [date(2026, 11, 2)]


def test_a_sidecar_written_by_other_checks_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINI)
    reload(tmp_path)
    monkeypatch.setattr(compiled, "_RULES", ((1, 2),))  # as if catalog.py had changed
    spy = ParseSpy(monkeypatch)
    reload(tmp_path)
    assert path in spy.paths


def test_a_bad_file_is_refused_whatever_sidecar_is_there(tmp_path: Path) -> None:
    write(tmp_path, MINI)
    reload(tmp_path)
    bad = mini(-1.0)
    write(tmp_path, bad)
    with pytest.raises(CatalogError, match="on-demand"):
        reload(tmp_path)


def test_duplicates_inside_one_file_are_refused(tmp_path: Path) -> None:
    doc = mini()
    doc["instance_types"]["G6.xlarge"] = doc["instance_types"]["g6.xlarge"]
    write(tmp_path, doc)
    with pytest.raises(CatalogError, match="duplicate shape id"):
        reload(tmp_path)
    assert not sidecar(tmp_path / "aws.json").exists()


def test_two_files_of_one_provider_are_merged_by_key(tmp_path: Path) -> None:
    write(tmp_path, MINI)
    other = mini()
    other["instance_types"] = {"g6.2xlarge": other["instance_types"]["g6.xlarge"]}
    write(tmp_path, other, name="aws.v2.json")
    for _ in range(2):  # parsed, then compiled
        cat = reload(tmp_path)
        keys = cat.columns.keys
        assert keys == sorted(keys) and len(keys) == len(set(keys))
        assert cat.get("aws:us-east-1:g6.2xlarge:spot") is not None
    write(tmp_path, MINI, name="aws.v2.json")
    with pytest.raises(CatalogError, match="duplicate shape id"):
        reload(tmp_path)


def test_keys_stay_sorted_across_providers_whose_names_share_a_prefix(tmp_path: Path) -> None:
    """``aws0.json`` sorts after ``aws.json`` but ``aws0:`` keys before ``aws:`` keys: the
    catalog's keys must be sorted (lookups are a binary search over them)."""
    write(tmp_path, MINI)
    write(tmp_path, {**mini(), "provider": "aws0"}, name="aws0.json")
    write(tmp_path, {**mini(), "provider": "aws-x"}, name="aws-x.json")
    for _ in range(2):
        cat = reload(tmp_path)
        keys = cat.columns.keys
        assert keys == sorted(keys)
        for key in keys:
            assert cat.by_key[key].key == key
        assert cat.get("AWS0:us-east-1:g6.xlarge:spot") is not None


def test_lazy_shapes_equal_parsed_ones_at_every_index(tmp_path: Path) -> None:
    write(tmp_path, MINI)
    write(tmp_path, {**mini(2.5), "provider": "lambda"}, name="lambda.json")
    cache = tmp_path / "cache"
    reload(tmp_path, cache)
    lazy = reload(tmp_path, cache)
    assert isinstance(lazy.shapes, ShapeList)
    parsed = [parse_catalog_file(p, bundled=b) for p, b in catalog_mod.catalog_paths(tmp_path)]
    eager = Catalog.of([s for _, found in parsed for s in found], [s for s, _ in parsed])
    assert len(lazy) == len(eager) > 500
    assert lazy.sources == eager.sources
    assert lazy.columns == eager.columns
    assert lazy.providers == eager.providers and lazy.regions == eager.regions
    n = len(eager)
    for i in range(n):
        a, b = lazy.shapes[i], eager.shapes[i]
        assert a == b and a.id == b.id and a.key == b.key and type(a) is type(b)
        assert a.zones == b.zones and a.zone_prices == b.zone_prices
        assert lazy.shapes[i] is a  # built once
        assert lazy.shapes[i - n] is a
        assert lazy.get(b.id.upper()) is a and lazy.by_key[b.key] is a
    assert lazy.shapes[3:9] == list(eager.shapes[3:9])
    assert list(lazy.by_key) == list(eager.by_key) and len(lazy.by_key) == n
    assert lazy.get("aws:nowhere:x:spot") is None and "x" not in lazy.by_key
    with pytest.raises(IndexError):
        lazy.shapes[n]
    assert lazy.shapes == eager.shapes and eager.shapes == lazy.shapes
    # Iterating a catalog none of whose shapes was read builds them all in one pass.
    fresh = reload(tmp_path, cache)
    for a, b in zip(fresh.shapes, eager.shapes, strict=True):
        assert a == b and a.id == b.id and a.key == b.key and type(a) is type(b)
        assert a.zones == b.zones and a.zone_prices == b.zone_prices
    assert [fresh.shapes[i] for i in range(n)] == list(fresh.shapes)
    assert all(fresh.shapes[i] is s for i, s in enumerate(fresh.shapes))


def test_a_read_only_catalog_dir_loads_without_a_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "catalog"
    local.mkdir()
    path = write(local, MINI)
    local.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        real = tempfile.mkstemp

        def refuse(*args: Any, **kwargs: Any) -> Any:  # root ignores the mode above
            if Path(kwargs["dir"]) == local:
                raise PermissionError(13, "Permission denied", str(local))
            return real(*args, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        cat = reload(local)
        assert cat.get("aws:us-east-1:g6.xlarge:spot") is not None
        assert sorted(p.name for p in local.iterdir()) == ["aws.json"]
        # With a cache dir, the sidecar goes there, and is used next time.
        cache = tmp_path / "cache"
        reload(local, cache)
        assert len(list(cache.glob("aws.json.*.compiled"))) == 1
        spy = ParseSpy(monkeypatch)
        again = reload(local, cache)
        assert path not in spy.paths
        assert list(again.shapes) == list(cat.shapes)
    finally:
        local.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_restores_the_collectors_state(tmp_path: Path, enabled: bool) -> None:
    import gc

    write(tmp_path, MINI)
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        reload(tmp_path)
        list(reload(tmp_path).shapes)  # compiled, every shape built in one pass
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
