"""The live Azure catalog document against the fake ARM server: Resource SKUs (GPU sizes,
zones, restrictions), the Retail Prices API (paged, Linux only, spot, no auth) and its
fallback; the document passes the catalog validator and `broker catalog refresh` installs it."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from providers.azure.catalog import build_catalog_document, gpu_of_size, prices_of
from providers.azure.config import AzureConfig
from shapes.catalog import load_bundled_catalog, parse_catalog_file
from tests.fakes.azure import API_PRICES, FakeArm, config_toml, price_row, sku, write_fake_az
from tests.providers.azure.conftest import FakeCredential, make_config

TODAY = date(2026, 11, 23)
BUNDLED = load_bundled_catalog()


def build(fake: FakeArm, config: AzureConfig | None = None, **kwargs: Any) -> dict[str, Any]:
    return build_catalog_document(
        config or make_config(fake),
        bundled=BUNDLED,
        today=TODAY,
        credential=FakeCredential(),
        sleep=kwargs.pop("sleep", lambda s: None),
        **kwargs,
    )


def shapes_of(doc: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "azure.json"
    path.write_text(json.dumps(doc))
    source, shapes = parse_catalog_file(path, bundled=False)  # the validator the CLI uses
    assert source.prices_as_of == TODAY and source.provider == "azure"
    return {s.id: s for s in shapes}


def test_the_live_document_matches_the_fake_cloud(fake: FakeArm, tmp_path: Path) -> None:
    doc = build(fake)

    shapes = shapes_of(doc, tmp_path)
    # every bundled GPU size sold in eastus or westus2 is there, with the same prices
    expected = {s.id: s for s in BUNDLED.shapes if s.region in ("eastus", "westus2")}
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
    h100 = doc["instance_types"]["Standard_ND96isr_H100_v5"]
    assert h100["gpu"] == "H100" and h100["gpus"] == 8
    assert "spot" not in h100["regions"]["eastus"]  # no spot row: on-demand only
    # the Retail Prices API: one query per (region, size), pages followed, never a token
    assert fake.price_auth and all(auth is None for auth in fake.price_auth)
    pairs = sum(len(spec["regions"]) for spec in doc["instance_types"].values())
    assert len(fake.price_auth) > pairs  # a pair with spot has 5 rows: 2 pages of 3


def test_restrictions_and_regions_without_zones(fake: FakeArm, tmp_path: Path) -> None:
    t4 = "Standard_NC4as_T4_v3"
    v100 = "Standard_NC6s_v3"
    a100 = "Standard_NC24ads_A100_v4"
    east = fake.skus["eastus"]
    for i, entry in enumerate(east):
        if entry["name"] == t4:  # zone 3 restricted for this subscription
            east[i] = sku(t4, "eastus", gpus=1, vcpus=4, memory=28, restrictions=[{
                "type": "Zone", "values": ["eastus"], "reasonCode": "NotAvailableForSubscription",
                "restrictionInfo": {"locations": ["eastus"], "zones": ["3"]}}])  # fmt: skip
        if entry["name"] == v100:  # the whole region restricted
            east[i] = sku(v100, "eastus", gpus=1, vcpus=6, memory=112, restrictions=[{
                "type": "Location", "values": ["eastus"],
                "reasonCode": "NotAvailableForSubscription",
                "restrictionInfo": {"locations": ["eastus"]}}])  # fmt: skip
    west = fake.skus["westus2"]
    for i, entry in enumerate(west):
        if entry["name"] == a100:  # a region without availability zones for this size
            west[i] = sku(a100, "westus2", gpus=1, vcpus=24, memory=220, zones=())

    doc = build(fake)

    shapes = shapes_of(doc, tmp_path)
    assert doc["instance_types"][t4]["regions"]["eastus"]["zones"] == ["1", "2"]
    assert "eastus" not in doc["instance_types"][v100]["regions"]
    assert "westus2" in doc["instance_types"][v100]["regions"]
    assert f"{v100}/eastus (restricted in the region (NotAvailableForSubscription))" in doc["notes"]
    assert shapes[f"azure:westus2:{a100}:spot"].zones == ("westus2",)  # the pseudo-zone


def test_unknown_and_fractional_gpus_are_skipped_and_noted(fake: FakeArm, tmp_path: Path) -> None:
    fake.skus["eastus"] += [
        sku("Standard_NV12s_v3", "eastus", gpus=1, vcpus=12, memory=112),  # M60
        sku("Standard_NX99_v9", "eastus", gpus=4, vcpus=99, memory=999),  # unknown family
        sku("Standard_NC8ads_A10_v4", "eastus", gpus=0.5, vcpus=8, memory=55),  # fractional
    ]
    fake.prices += [
        price_row(size, "eastus", 1.0)
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
    fake.prices = [
        r
        for r in fake.prices
        if not (r["armSkuName"] == "Standard_NC6s_v3" and r["armRegionName"] == "westus2")
    ]
    doc = build(fake)
    assert "westus2" not in doc["instance_types"]["Standard_NC6s_v3"]["regions"]
    assert "Left out, no price: Standard_NC6s_v3/westus2." in doc["notes"]
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


def test_a_throttled_prices_api_is_retried_after_its_hint(fake: FakeArm, tmp_path: Path) -> None:
    fake.inject("prices", "TooManyRequests", status=429, retry_after=4, times=2)
    slept: list[float] = []
    doc = build(fake, sleep=slept.append)
    assert slept == [4.0, 4.0]
    assert "failed" not in doc["notes"]
    shapes_of(doc, tmp_path)


def test_sku_errors_raise(fake: FakeArm) -> None:
    from providers.errors import AuthError

    fake.inject("skus", "AuthorizationFailed", status=403)
    with pytest.raises(AuthError):
        build(fake)


def test_gpu_families_and_prices_of() -> None:
    assert gpu_of_size("Standard_ND96isr_H100_v5") == ("H100", None)
    assert gpu_of_size("Standard_NC40ads_H100_v5") == ("H100-NVL", None)
    assert gpu_of_size("Standard_NC80adis_H100_v5") == ("H100-NVL", None)
    assert gpu_of_size("Standard_ND96asr_v4") == ("A100-40GB", None)
    assert gpu_of_size("Standard_ND96amsr_A100_v4") == ("A100-80GB", None)
    assert gpu_of_size("Standard_NC24rs_v3") == ("V100-16GB", None)
    assert gpu_of_size("Standard_ND40rs_v2") == ("V100-32GB", None)
    assert gpu_of_size("Standard_NCC40ads_H100_v5")[0] is None
    rows = [
        price_row("Standard_NC6s_v3", "eastus", 3.06),
        price_row("Standard_NC6s_v3", "eastus", 4.5, windows=True),
        price_row("Standard_NC6s_v3", "eastus", 0.3, meter="Spot"),
        price_row("Standard_NC6s_v3", "eastus", 0.1, meter="Low Priority"),
    ]
    assert prices_of(rows) == (3.06, 0.3)


def test_broker_catalog_refresh_installs_the_document(
    fake: FakeArm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI path: DefaultAzureCredential itself (AzureCliCredential via a fake `az`)."""
    config = tmp_path / "config.toml"
    config.write_text(config_toml(fake))
    bindir = tmp_path / "bin"
    write_fake_az(bindir)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "AzureCliCredential")
    monkeypatch.setenv("BROKER_CONFIG", str(config))
    monkeypatch.setenv("BROKER_CATALOG_DIR", str(tmp_path / "catalog"))

    assert main(["catalog", "refresh", "--provider", "azure", "--json"]) == 0

    summary = json.loads(capsys.readouterr().out)
    assert Path(summary["path"]) == tmp_path / "catalog" / "azure.json"
    assert summary["shapes"] > 20 and summary["prices_as_of"] == date.today().isoformat()
    assert main(["quote", "--gpus", "8", "--provider", "azure", "--json"]) == 0
    quote = json.loads(capsys.readouterr().out)
    sources = {s["provider"]: s for s in quote["catalog"]["sources"]}
    assert sources["azure"]["bundled"] is False
