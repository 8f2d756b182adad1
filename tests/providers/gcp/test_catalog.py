"""The live GCP catalog refresh against the fake: machine types and accelerator types per
zone from Compute, prices summed from Billing Catalog SKUs, the document valid for
parse_catalog_file, and `broker catalog refresh --provider gcp` in a real process."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from providers.errors import AuthError, ThrottledError
from providers.gcp.catalog import build_catalog_document
from shapes.catalog import Catalog, load_bundled_catalog, parse_catalog_file
from shapes.gpus import CANONICAL_GPUS
from tests.conftest import run_broker
from tests.fakes.gcp import FAMILY_SKUS, GEO_FACTOR, GPU_SKUS, SPOT_FACTOR, FakeServer
from tests.providers.gcp.conftest import FakeCredentials, GcpWorld, cli_env, gcp_config

TODAY = date(2026, 11, 23)


def refresh(gcp: GcpWorld, bundled: Catalog | None = None, **config: Any) -> dict[str, Any]:
    return build_catalog_document(
        gcp_config(gcp.server.url, **config),
        bundled=bundled or gcp.catalog,
        today=TODAY,
        credentials=FakeCredentials(),
    )


def install(doc: dict[str, Any], tmp_path: Path) -> Catalog:
    path = tmp_path / "gcp.json"
    path.write_text(json.dumps(doc))
    source, shapes = parse_catalog_file(path, bundled=False)
    assert source.prices_as_of == TODAY and source.shapes == len(shapes) > 0
    return Catalog.of(shapes, [source])


def test_the_document_is_a_valid_catalog_of_the_configured_regions(
    gcp: GcpWorld, tmp_path: Path
) -> None:
    doc = refresh(gcp)
    catalog = install(doc, tmp_path)

    assert doc["provider"] == "gcp" and doc["prices_as_of"] == "2026-11-23"
    assert {s.region for s in catalog.shapes} == {"us-central1", "us-east4"}
    assert {s.gpu for s in catalog.shapes} <= CANONICAL_GPUS
    # every bundled shape of these regions is found again, with the same hardware and zones
    for old in gcp.catalog.shapes:
        if old.provider != "gcp" or old.region not in ("us-central1", "us-east4"):
            continue
        new = catalog.get(old.id)
        assert new is not None, old.id
        assert (new.gpu, new.gpus_per_node, new.vcpus, new.memory_gib, new.zones) == (
            old.gpu,
            old.gpus_per_node,
            old.vcpus,
            old.memory_gib,
            old.zones,
        )


def test_a_price_is_the_sum_of_gpu_vcpu_and_ram_skus(gcp: GcpWorld) -> None:
    doc = refresh(gcp)
    core, ram = FAMILY_SKUS["a3"][2:]
    gpu = GPU_SKUS["Nvidia H100 80GB GPU"]
    entry = doc["instance_types"]["a3-highgpu-8g"]["regions"]["us-central1"]
    factor = GEO_FACTOR["Americas"]
    on_demand = (208 * core + 1872 * ram + 8 * gpu) * factor
    assert entry["on_demand"] == pytest.approx(on_demand, abs=1e-4)
    assert entry["spot"] == pytest.approx(on_demand * SPOT_FACTOR, abs=1e-4)
    assert entry["price_parts"]["on_demand"]["gpus"] == 8
    assert entry["price_parts"]["on_demand"]["gpu_each"] == pytest.approx(gpu * factor)
    # the N1 host is priced from the N1 core and RAM SKUs, plus the attached T4
    t4 = doc["instance_types"]["n1-standard-8+t4x1"]["regions"]["us-east4"]
    n1_core, n1_ram = FAMILY_SKUS["n1"][2:]
    expected = 8 * n1_core + 30 * n1_ram + GPU_SKUS["Nvidia Tesla T4 GPU"]
    assert t4["on_demand"] == pytest.approx(expected, abs=1e-4)


def test_unpriceable_shapes_are_left_out_and_noted(gcp: GcpWorld) -> None:
    gcp.fake.skus = [s for s in gcp.fake.skus if "L4" not in s["description"]]
    gcp.fake.skus = [
        s for s in gcp.fake.skus if not s["description"].startswith("Spot Preemptible A2")
    ]
    doc = refresh(gcp)
    assert not any(name.startswith("g2-") for name in doc["instance_types"])
    assert "g2-standard-48/us-central1" in doc["notes"]
    a2 = doc["instance_types"]["a2-highgpu-8g"]["regions"]["us-central1"]
    assert "on_demand" in a2 and "spot" not in a2  # one market priced, the other left out


def test_zones_come_from_the_machine_and_accelerator_types_offered(gcp: GcpWorld) -> None:
    del gcp.fake.machine_types["us-central1-c"]["a3-highgpu-8g"]
    gcp.fake.accelerator_types["us-central1-b"]["nvidia-tesla-v100"]["maximumCardsPerInstance"] = 1
    doc = refresh(gcp, regions=("us-central1",))
    types = doc["instance_types"]
    assert types["a3-highgpu-8g"]["regions"]["us-central1"]["zones"] == [
        "us-central1-a",
        "us-central1-b",
    ]
    assert "us-central1-b" in types["n1-standard-8+v100x1"]["regions"]["us-central1"]["zones"]
    assert "us-central1-b" not in types["n1-standard-16+v100x2"]["regions"]["us-central1"]["zones"]
    assert set(next(iter(t["regions"])) for t in types.values()) == {"us-central1"}


def test_without_a_bundled_catalog_no_n1_combination_is_guessed(gcp: GcpWorld) -> None:
    doc = build_catalog_document(
        gcp_config(gcp.server.url), bundled=None, today=TODAY, credentials=FakeCredentials()
    )
    assert doc["instance_types"] and not any("+" in n for n in doc["instance_types"])
    assert "N1" in doc["notes"]


def test_commitment_skus_are_ignored(gcp: GcpWorld) -> None:
    for sku in gcp.fake.skus:
        if sku["category"]["usageType"] == "Commit1Yr":
            sku["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"]["units"] = "0"
    first = refresh(gcp)
    gcp.fake.skus = [s for s in gcp.fake.skus if s["category"]["usageType"] != "Commit1Yr"]
    assert refresh(gcp)["instance_types"] == first["instance_types"]


@pytest.mark.parametrize(
    ("method", "fault", "cls"),
    [("skus", "403", AuthError), ("machineTypesAggregated", "rate-limit", ThrottledError)],
)
def test_api_errors_are_classified(gcp: GcpWorld, method: str, fault: str, cls: type) -> None:
    gcp.fake.inject(method, fault)
    with pytest.raises(cls):
        refresh(gcp)


def test_broker_catalog_refresh_installs_the_document(tmp_path: Path) -> None:
    with FakeServer(require_auth=True) as server:
        env = cli_env(server.url, tmp_path)
        done = run_broker(env, "catalog", "refresh", "--provider", "gcp", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        assert summary["shapes"] > 0 and summary["prices_as_of"] == date.today().isoformat()
        assert Path(summary["path"]) == tmp_path / "catalog" / "gcp.json"
        assert server.state.tokens  # the token came from ADC, through the fake's endpoint
        quote = run_broker(env, "quote", "--gpus", "8", "--provider", "gcp", "--json")
        assert quote.returncode == 0, quote.stderr[-2000:]
        sources = {s["provider"]: s for s in json.loads(quote.stdout)["catalog"]["sources"]}
        assert sources["gcp"]["bundled"] is False
        for token in server.state.tokens:
            assert token not in done.stdout + done.stderr
        assert load_bundled_catalog().sources  # the bundled file is untouched
