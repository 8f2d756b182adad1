"""The live Azure catalog document against the fake ARM server: Resource SKUs (GPU sizes,
zones, restrictions), the Retail Prices API with rows shaped like the real feed (paged, no
auth; Linux Consumption rows only; Spot meters apart from Low Priority ones, which are never
Spot; dated by effectiveStartDate) and its fallback; `--prices-only`, which needs no Azure
account; the document passes the catalog validator and the sanity checks, and `broker
catalog refresh` installs it (or refuses one that fails them)."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from providers.azure.catalog import (
    KNOWN_SIZES,
    build_catalog_document,
    build_prices_document,
    gpu_of_size,
    offers_of,
    prices_of,
)
from providers.azure.config import AzureConfig
from providers.errors import AuthError, ProviderError
from shapes.catalog import BUNDLED_DIR, Catalog, load_bundled_catalog, parse_catalog_file
from shapes.sanity import check_document
from tests.fakes.azure import (
    API_PRICES,
    EFFECTIVE_START,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    FakeArm,
    config_toml,
    price_row,
    sku,
    write_fake_az,
)
from tests.providers.azure.conftest import FakeCredential, make_config

TODAY = date(2026, 11, 23)
BUNDLED = load_bundled_catalog()
SIZES_BY_REGION = Counter(s.region for s in BUNDLED.shapes if s.provider == "azure")
# the two regions of the bundled catalog with the most Azure shapes (its data decides)
REGIONS = tuple(sorted(r for r, _ in SIZES_BY_REGION.most_common(2)))
START_DAY = EFFECTIVE_START[:10]


def build(fake: FakeArm, config: AzureConfig | None = None, **kwargs: Any) -> dict[str, Any]:
    return build_catalog_document(
        config or make_config(fake, regions=REGIONS),
        bundled=BUNDLED,
        today=TODAY,
        credential=FakeCredential(),
        sleep=kwargs.pop("sleep", lambda s: None),
        **kwargs,
    )


def prices_only(fake: FakeArm, bundled: Catalog = BUNDLED, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("regions", REGIONS)
    return build_prices_document(
        bundled=bundled,
        today=TODAY,
        endpoint=f"{fake.url}{API_PRICES}",
        ca_bundle=fake.ca_path,
        sleep=lambda s: None,
        **kwargs,
    )


def shapes_of(doc: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "azure.json"
    path.write_text(json.dumps(doc))
    source, shapes = parse_catalog_file(path, bundled=False)  # the validator the CLI uses
    assert source.prices_as_of == date.fromisoformat(doc["prices_as_of"])
    assert source.provider == "azure"
    return {s.id: s for s in shapes}


def sizes_in(region: str, gpus: int | None = None) -> list[str]:
    return sorted(
        {
            s.instance_type
            for s in BUNDLED.shapes
            if s.provider == "azure"
            and s.region == region
            and (gpus is None or s.gpus_per_node == gpus)
        }
    )


def test_the_live_document_matches_the_fake_cloud(fake: FakeArm, tmp_path: Path) -> None:
    doc = build(fake)

    shapes = shapes_of(doc, tmp_path)
    bundled_doc = json.loads((BUNDLED_DIR / "azure.json").read_text())
    assert list(doc) == list(bundled_doc)  # exactly the bundled file's format
    assert doc["prices_as_of"] == START_DAY  # the rows' effectiveStartDate
    assert doc["spot_as_of"] == TODAY.isoformat()  # spot: sampled by this refresh
    assert check_document(doc) == []
    # every bundled GPU size sold in these regions is there, with the same prices
    expected = {s.id: s for s in BUNDLED.shapes if s.region in REGIONS and s.provider == "azure"}
    assert set(shapes) == set(expected)
    for shape_id, shape in shapes.items():
        old = expected[shape_id]
        assert shape.price_per_node_hour == pytest.approx(old.price_per_node_hour)
        assert (shape.gpu, shape.gpus_per_node, shape.vcpus) == (
            old.gpu,
            old.gpus_per_node,
            old.vcpus,
        )
        assert shape.zones == ("1", "2", "3")  # real zones now, not the pseudo-zone
    assert "Standard_D4s_v5" not in doc["instance_types"]  # no GPU
    # the Retail Prices API: one query per (region, size), pages followed, never a token
    assert fake.price_auth and all(auth is None for auth in fake.price_auth)
    pairs = sum(len(spec["regions"]) for spec in doc["instance_types"].values())
    assert len(fake.price_auth) > pairs  # 5 or more rows per pair: several pages of 3


def test_spot_is_the_spot_meter_never_low_priority_nor_windows(fake: FakeArm) -> None:
    region = REGIONS[0]
    size = sizes_in(region)[0]
    fake.prices = [
        r for r in fake.prices if not (r["armSkuName"] == size and r["armRegionName"] == region)
    ]
    fake.prices += [
        price_row(size, region, 3.0),
        price_row(size, region, 4.2, windows=True),
        price_row(size, region, 0.3, meter="Low Priority"),  # cheaper, and not Spot
        price_row(size, region, 0.9, meter="Spot"),
        price_row(size, region, 0.7, meter="Spot", windows=True),
    ]
    entry = build(fake)["instance_types"][size]["regions"][region]
    assert (entry["on_demand"], entry["spot"]) == (3.0, 0.9)
    # without a Spot meter there is no spot price: Low Priority never stands in for it
    fake.prices = [r for r in fake.prices if not r["meterName"].endswith(" Spot")]
    entry = build(fake)["instance_types"][size]["regions"][region]
    assert entry["on_demand"] == 3.0 and "spot" not in entry


def test_offers_of_reads_only_linux_consumption_hours_in_effect() -> None:
    size, region = "Standard_NC24ads_A100_v4", "westeurope"
    rows = [
        price_row(size, region, 4.408, effective="2025-04-01T00:00:00Z"),
        price_row(size, region, 4.0, windows=True),
        price_row(size, region, 0.882, meter="Low Priority"),
        price_row(size, region, 0.814598, meter="Spot", effective="2026-11-01T00:00:00Z"),
        price_row(size, region, 2.0, kind="DevTestConsumption"),
        price_row(size, region, 1.9, kind="Reservation"),
        {**price_row(size, region, 1.0), "unitOfMeasure": "1/Month"},
        {**price_row(size, region, 1.0), "currencyCode": "EUR"},
        {**price_row(size, region, 1.0), "serviceName": "Azure Batch"},
        price_row(size, region, 1.5, effective="2026-12-01T00:00:00Z"),  # not yet in effect
        price_row(size, region, 0.0, meter="Spot"),
    ]
    offers = offers_of(rows, TODAY)
    assert offers.on_demand == 4.408 and offers.on_demand_date == date(2025, 4, 1)
    assert offers.spot == 0.814598 and offers.spot_date == date(2026, 11, 1)
    assert prices_of(rows[:4]) == (4.408, 0.814598)
    assert offers_of([], TODAY) == (None, None, None, None)


def test_a_spot_meter_at_or_above_on_demand_is_left_out_and_noted(fake: FakeArm) -> None:
    region = REGIONS[0]
    size = sizes_in(region)[0]

    def is_its_spot(row: dict[str, Any]) -> bool:
        pair = (row["armSkuName"], row["armRegionName"])
        return pair == (size, region) and row["meterName"].endswith(" Spot")

    # the pair's Spot meter priced above its on-demand one
    fake.prices = [r for r in fake.prices if not is_its_spot(r)]
    fake.prices.append(price_row(size, region, 10_000.0, meter="Spot"))
    doc = build(fake)
    assert "spot" not in doc["instance_types"][size]["regions"][region]
    assert f"not below on-demand (no discount at the source): {size}/{region}" in doc["notes"]
    assert check_document(doc) == []


def test_each_price_is_dated_by_its_effective_start_date(fake: FakeArm) -> None:
    region = REGIONS[0]
    size = sizes_in(region)[0]
    for row in fake.prices:
        if row["armSkuName"] == size and row["armRegionName"] == region:
            row["effectiveStartDate"] = "2026-11-10T00:00:00Z"
    doc = build(fake)
    assert doc["prices_as_of"] == "2026-11-10"  # the newest in the feed
    assert "prices_as_of" not in doc["instance_types"][size]["regions"][region]
    other = next(
        e
        for name, spec in doc["instance_types"].items()
        for r, e in spec["regions"].items()
        if (name, r) != (size, region) and "on_demand" in e
    )
    assert other["prices_as_of"] == START_DAY  # its own, older date
    assert check_document(doc) == []


def test_restrictions_and_regions_without_zones(fake: FakeArm, tmp_path: Path) -> None:
    first, second = REGIONS
    zoned, restricted = sizes_in(first)[:2]
    unzoned = sizes_in(second)[0]

    def replace(region: str, size: str, **kwargs: Any) -> None:
        spec = next(s for s in BUNDLED.shapes if s.instance_type == size)
        entries = fake.skus[region]
        for i, entry in enumerate(entries):
            if entry["name"] == size:
                entries[i] = sku(
                    size,
                    region,
                    gpus=spec.gpus_per_node,
                    vcpus=spec.vcpus,
                    memory=spec.memory_gib,
                    **kwargs,
                )

    replace(first, zoned, restrictions=[{  # zone 3 restricted for this subscription
        "type": "Zone", "values": [first], "reasonCode": "NotAvailableForSubscription",
        "restrictionInfo": {"locations": [first], "zones": ["3"]}}])  # fmt: skip
    replace(first, restricted, restrictions=[{  # the whole region restricted
        "type": "Location", "values": [first], "reasonCode": "NotAvailableForSubscription",
        "restrictionInfo": {"locations": [first]}}])  # fmt: skip
    replace(second, unzoned, zones=())  # a region without availability zones for this size

    doc = build(fake)

    shapes = shapes_of(doc, tmp_path)
    assert doc["instance_types"][zoned]["regions"][first]["zones"] == ["1", "2"]
    assert first not in doc["instance_types"].get(restricted, {"regions": {}})["regions"]
    assert (
        f"{restricted}/{first} (restricted in the region (NotAvailableForSubscription))"
        in (doc["notes"])
    )
    assert shapes[f"azure:{second}:{unzoned}:on-demand"].zones == (second,)  # pseudo-zone


def test_unknown_and_fractional_gpus_are_skipped_and_noted(fake: FakeArm, tmp_path: Path) -> None:
    region = REGIONS[0]
    fake.skus[region] += [
        sku("Standard_NV12s_v3", region, gpus=1, vcpus=12, memory=112),  # M60
        sku("Standard_NX99_v9", region, gpus=4, vcpus=99, memory=999),  # unknown family
        sku("Standard_NC8ads_A10_v4", region, gpus=0.5, vcpus=8, memory=55),  # fractional
    ]
    fake.prices += [
        price_row(size, region, 1.0)
        for size in ("Standard_NV12s_v3", "Standard_NX99_v9", "Standard_NC8ads_A10_v4")
    ]

    doc = build(fake)

    assert not {"Standard_NV12s_v3", "Standard_NX99_v9", "Standard_NC8ads_A10_v4"} & set(
        doc["instance_types"]
    )
    assert "M60 GPU: Standard_NV12s_v3" in doc["notes"]
    assert "GPU family not in the broker's table: Standard_NX99_v9" in doc["notes"]
    assert "fractional GPU: Standard_NC8ads_A10_v4" in doc["notes"]
    shapes_of(doc, tmp_path)


def test_unpriced_sizes_are_left_out_and_noted(fake: FakeArm, tmp_path: Path) -> None:
    region = REGIONS[1]
    size = sizes_in(region)[0]
    fake.prices = [
        r for r in fake.prices if not (r["armSkuName"] == size and r["armRegionName"] == region)
    ]
    doc = build(fake)
    assert region not in doc["instance_types"].get(size, {"regions": {}})["regions"]
    assert f"Left out, no price: {size}/{region}." in doc["notes"]
    shapes_of(doc, tmp_path)


def test_a_failing_prices_api_falls_back_to_the_bundled_prices(
    fake: FakeArm, tmp_path: Path
) -> None:
    fake.inject("prices", "InternalServerError", status=500)
    doc = build(fake)
    shapes = shapes_of(doc, tmp_path)
    assert "The Retail Prices API failed (InternalServerError" in doc["notes"]
    assert "bundled catalog prices" in doc["price_source"]
    bundled = {s.id: s.price_per_node_hour for s in BUNDLED.shapes}
    assert {k: v.price_per_node_hour for k, v in shapes.items()}.items() <= bundled.items()
    assert fake.calls("GET", API_PRICES) == 1  # abandoned after the first hard failure
    source = next(s for s in BUNDLED.sources if s.provider == "azure")
    assert source.prices_as_of is not None
    assert doc["prices_as_of"] == source.prices_as_of.isoformat()  # dated as the bundled file


def test_a_throttled_prices_api_is_retried_after_its_hint(fake: FakeArm, tmp_path: Path) -> None:
    fake.inject("prices", "TooManyRequests", status=429, retry_after=4, times=2)
    slept: list[float] = []
    doc = build(fake, sleep=slept.append)
    assert slept == [4.0, 4.0]
    assert "failed" not in doc["notes"]
    shapes_of(doc, tmp_path)


def test_sku_errors_raise(fake: FakeArm) -> None:
    fake.inject("skus", "AuthorizationFailed", status=403)
    with pytest.raises(AuthError):
        build(fake)


def test_gpu_families() -> None:
    assert gpu_of_size("Standard_ND96isr_H100_v5") == ("H100", None)
    assert gpu_of_size("Standard_ND96isr_H200_v5") == ("H200", None)
    assert gpu_of_size("Standard_ND96isr_MI300X_v5") == ("MI300X", None)
    assert gpu_of_size("Standard_NC40ads_H100_v5") == ("H100-NVL", None)
    assert gpu_of_size("Standard_NC80adis_H100_v5") == ("H100-NVL", None)
    assert gpu_of_size("Standard_ND96asr_v4") == ("A100-40GB", None)
    assert gpu_of_size("Standard_ND96amsr_A100_v4") == ("A100-80GB", None)
    assert gpu_of_size("Standard_NC24rs_v3") == ("V100-16GB", None)
    assert gpu_of_size("Standard_ND40rs_v2") == ("V100-32GB", None)
    assert gpu_of_size("Standard_NCC40ads_H100_v5")[0] is None
    for size in KNOWN_SIZES:  # every size of the static table is one the broker can name
        assert gpu_of_size(size)[0] is not None, size


# -- prices only: no account -----------------------------------------------------------------


def test_prices_only_needs_nothing_but_the_public_prices_api(fake: FakeArm, tmp_path: Path) -> None:
    doc = prices_only(fake)

    shapes = shapes_of(doc, tmp_path)
    assert check_document(doc) == []
    assert all(path.lower() == API_PRICES for _, path in fake.requests)  # no ARM call
    assert fake.price_auth and all(auth is None for auth in fake.price_auth)
    sizes = {s.instance_type for s in BUNDLED.shapes if s.provider == "azure"} | set(KNOWN_SIZES)
    first_pages = [p for p in fake.requests if p[1].lower() == API_PRICES]
    assert len(first_pages) >= len(sizes)  # one query per size across regions, pages followed
    expected = {s.id: s for s in BUNDLED.shapes if s.region in REGIONS and s.provider == "azure"}
    assert set(shapes) == set(expected)
    for shape_id, shape in shapes.items():
        old = expected[shape_id]
        assert shape.price_per_node_hour == pytest.approx(old.price_per_node_hour)
        assert shape.zones == old.zones  # the bundled catalog's zones
    assert doc["prices_as_of"] == START_DAY and "--prices-only" in doc["notes"]


def test_prices_only_adds_regions_and_sizes_the_bundled_catalog_lacks(
    fake: FakeArm, tmp_path: Path
) -> None:
    known_only = "Standard_ND96isr_MI300X_v5"
    bundled = Catalog.of(
        [s for s in BUNDLED.shapes if s.instance_type != known_only], BUNDLED.sources
    )
    size = sizes_in(REGIONS[0])[0]
    fake.prices += [
        price_row(size, "japaneast", 5.5),
        price_row(size, "japaneast", 1.1, meter="Spot"),
        price_row(known_only, "japaneast", 60.0),
        price_row(size, "brazilsouth", 9.9),  # a region not asked for
    ]
    doc = prices_only(fake, bundled=bundled, regions=(*REGIONS, "japaneast"))
    shapes = shapes_of(doc, tmp_path)
    new = shapes[f"azure:japaneast:{size}:spot"]
    assert (new.price_per_node_hour, new.zones) == (1.1, ("japaneast",))  # the pseudo-zone
    gpus, vcpus, memory = KNOWN_SIZES[known_only]
    mi300x = doc["instance_types"][known_only]
    assert (mi300x["gpu"], mi300x["gpus"], mi300x["vcpus"], mi300x["memory_gib"]) == (
        "MI300X",
        gpus,
        vcpus,
        memory,
    )
    assert not any("brazilsouth" in spec["regions"] for spec in doc["instance_types"].values())


def test_prices_only_raises_when_the_prices_api_fails(fake: FakeArm) -> None:
    fake.inject("prices", "InternalServerError", status=500)
    with pytest.raises(ProviderError):
        prices_only(fake)


def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Azure credential anywhere: no az on PATH, no AZURE_* variables."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "BROKER_", "MSI_", "IDENTITY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(tmp_path / "catalog"))
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path / "state"))


def prices_only_config(fake: FakeArm, path: Path, regions: tuple[str, ...] = REGIONS) -> Path:
    """[azure] names the regions and the prices endpoint; Azure is not enabled."""
    quoted = ", ".join(f'"{r}"' for r in regions)
    path.write_text(
        "[broker]\nproviders = []\n\n"
        f'[azure]\nsubscription_id = "{SUBSCRIPTION}"\nresource_group = "{RESOURCE_GROUP}"\n'
        f"regions = [{quoted}]\n"
        f'ca_bundle = "{fake.ca_path}"\nprices_endpoint = "{fake.url}{API_PRICES}"\n'
    )
    return path


def test_broker_catalog_refresh_prices_only_without_an_account(
    fake: FakeArm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _isolated_env(monkeypatch, tmp_path)
    monkeypatch.setenv("BROKER_CONFIG", str(prices_only_config(fake, tmp_path / "c.toml")))

    code = main(["catalog", "refresh", "--provider", "azure", "--prices-only", "--json"])

    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert Path(summary["path"]) == tmp_path / "catalog" / "azure.json"
    assert summary["prices_as_of"] == START_DAY and summary["spot_as_of"] is not None
    assert all(path.lower() == API_PRICES for _, path in fake.requests)  # no ARM call
    assert main(["quote", "--gpus", "8", "--provider", "azure", "--json"]) == 0
    quote = json.loads(capsys.readouterr().out)
    sources = {s["provider"]: s for s in quote["catalog"]["sources"]}
    assert sources["azure"]["bundled"] is False
    # --prices-only is Azure's alone: a clear error, not a traceback
    assert main(["catalog", "refresh", "--provider", "gcp", "--prices-only"]) == 2
    assert "--prices-only is for --provider azure" in capsys.readouterr().err


def test_a_prices_only_refresh_failing_a_sanity_check_is_not_written(
    fake: FakeArm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _isolated_env(monkeypatch, tmp_path)
    monkeypatch.setenv("BROKER_CONFIG", str(prices_only_config(fake, tmp_path / "c.toml")))
    size = next(s for s in sizes_in(REGIONS[1]) if s in sizes_in(REGIONS[0]))
    for row in fake.prices:  # a wrong meter: 3x the other region's on-demand price
        pair = (row["armSkuName"], row["armRegionName"])
        if pair == (size, REGIONS[1]) and not row["meterName"].endswith(" Spot"):
            row["retailPrice"] *= 3

    code = main(["catalog", "refresh", "--provider", "azure", "--prices-only"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "not written" in err
    assert f"azure/{size}/{REGIONS[1]}: on-demand" in err and "[cross-region]" in err
    assert not (tmp_path / "catalog" / "azure.json").exists()


def test_broker_catalog_refresh_installs_the_document(
    fake: FakeArm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI path: DefaultAzureCredential itself (AzureCliCredential via a fake `az`)."""
    config = tmp_path / "config.toml"
    config.write_text(config_toml(fake, regions=REGIONS))
    bindir = tmp_path / "bin"
    write_fake_az(bindir)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")
    monkeypatch.setenv("BROKER_CONFIG", str(config))
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(tmp_path / "catalog"))

    assert main(["catalog", "refresh", "--provider", "azure", "--json"]) == 0

    summary = json.loads(capsys.readouterr().out)
    assert Path(summary["path"]) == tmp_path / "catalog" / "azure.json"
    assert summary["shapes"] > 10 and summary["prices_as_of"] == START_DAY
    assert main(["quote", "--gpus", "8", "--provider", "azure", "--json"]) == 0
    quote = json.loads(capsys.readouterr().out)
    sources = {s["provider"]: s for s in quote["catalog"]["sources"]}
    assert sources["azure"]["bundled"] is False
