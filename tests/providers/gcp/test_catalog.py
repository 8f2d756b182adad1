"""The live GCP catalog refresh against the fake: machine types and accelerator types per
zone from Compute, prices summed from Billing Catalog SKUs shaped like the real ones (exact
SKU names, no DWS / flex-start / commitment / calendar-mode / sole-tenancy SKU, bundled
local SSD, A4 GPU slices), dated by the SKUs' effectiveTime, read with an API key from the
environment that is never shown, the document valid for parse_catalog_file and for the
sanity checks, and `broker catalog refresh --provider gcp` in a real process."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from providers.errors import AuthError, ProviderError, ThrottledError
from providers.gcp.catalog import (
    API_KEY_ENV,
    HOURS_PER_MONTH,
    ON_DEMAND,
    SPOT,
    ParsedSku,
    build_catalog_document,
    parse_sku,
)
from shapes.catalog import BUNDLED_DIR, Catalog, load_bundled_catalog, parse_catalog_file
from shapes.gpus import CANONICAL_GPUS
from shapes.sanity import check_document
from tests.conftest import run_broker
from tests.fakes.gcp import (
    DECOY_USD,
    EFFECTIVE_TIMES,
    FAMILY_SKUS,
    GPU_SKUS,
    LOCAL_SSD_USD_MONTH,
    SPOT_FACTOR,
    FakeServer,
    _sku,
)
from tests.providers.gcp.conftest import FakeCredentials, GcpWorld, cli_env, gcp_config

TODAY = date(2026, 11, 23)
GPU_DAY = EFFECTIVE_TIMES["gpu"][:10]  # the newest effectiveTime of the parts of a price
API_KEY = "AIzaSyFAKE-test-key-0123456789abcdefghij"


@pytest.fixture(autouse=True)
def no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)


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
    assert source.prices_as_of == date.fromisoformat(doc["prices_as_of"])
    assert source.shapes == len(shapes) > 0
    return Catalog.of(shapes, [source])


def entry(doc: dict[str, Any], name: str, region: str = "us-central1") -> dict[str, Any]:
    found: dict[str, Any] = doc["instance_types"][name]["regions"][region]
    return found


def host(series: str, vcpus: int, memory: float, spot: bool = False) -> float:
    core, ram = FAMILY_SKUS[series][2:]
    return (vcpus * core + memory * ram) * (SPOT_FACTOR if spot else 1.0)


def usd(sku: dict[str, Any]) -> float:
    money = sku["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"]
    return int(money["units"]) + float(money["nanos"]) / 1e9


def ssd(gib: int, spot: bool = False) -> float:
    return gib * LOCAL_SSD_USD_MONTH[spot] / HOURS_PER_MONTH


def test_the_document_is_a_valid_dated_catalog_of_the_configured_regions(
    gcp: GcpWorld, tmp_path: Path
) -> None:
    doc = refresh(gcp)
    catalog = install(doc, tmp_path)

    bundled_doc = json.loads((BUNDLED_DIR / "gcp.json").read_text())
    assert list(doc) == list(bundled_doc)  # exactly the bundled file's format
    assert doc["provider"] == "gcp" and doc["retrieved"] == "2026-11-23"
    assert doc["prices_as_of"] == GPU_DAY  # from the SKUs' effectiveTime, not the refresh day
    assert doc["spot_as_of"] == "2026-11-23"  # spot: sampled by this refresh
    assert check_document(doc) == []
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


def test_a_price_is_gpu_vcpu_ram_and_the_bundled_local_ssd(gcp: GcpWorld) -> None:
    doc = refresh(gcp)
    h100 = GPU_SKUS["Nvidia H100 80GB GPU"]
    a3 = entry(doc, "a3-highgpu-8g")  # 16 x 375 GiB of local SSD come with it
    assert a3["on_demand"] == pytest.approx(host("a3", 208, 1872) + 8 * h100 + ssd(6000), abs=1e-4)
    spot = host("a3", 208, 1872, spot=True) + 8 * h100 * SPOT_FACTOR + ssd(6000, spot=True)
    assert a3["spot"] == pytest.approx(spot, abs=1e-4)
    a100_80 = GPU_SKUS["Nvidia Tesla A100 80GB GPU"]
    ultra = entry(doc, "a2-ultragpu-8g")  # 8 x 375 GiB
    assert ultra["on_demand"] == pytest.approx(
        host("a2", 96, 1360) + 8 * a100_80 + ssd(3000), abs=1e-4
    )
    high = entry(doc, "a2-highgpu-1g")  # no local SSD
    assert high["on_demand"] == pytest.approx(
        host("a2", 12, 85) + GPU_SKUS["Nvidia Tesla A100 GPU"], abs=1e-4
    )
    # the N1 host is priced from the N1 core and RAM SKUs, plus the attached T4
    t4 = entry(doc, "n1-standard-8+t4x1", "us-east4")
    assert t4["on_demand"] == pytest.approx(
        host("n1", 8, 30) + GPU_SKUS["Nvidia Tesla T4 GPU"], abs=1e-4
    )
    assert "price_parts" not in a3  # the bundled format has none


def test_the_machine_types_bundled_local_ssd_count_wins(gcp: GcpWorld) -> None:
    for types in gcp.fake.machine_types.values():
        if "a3-highgpu-8g" in types:
            types["a3-highgpu-8g"]["bundledLocalSsds"] = {
                "defaultInterface": "NVME",
                "partitionCount": 4,
            }
    a3 = entry(refresh(gcp), "a3-highgpu-8g")
    h100 = GPU_SKUS["Nvidia H100 80GB GPU"]
    assert a3["on_demand"] == pytest.approx(host("a3", 208, 1872) + 8 * h100 + ssd(1500), abs=1e-4)


def test_gpu_skus_are_matched_exactly_never_by_substring(gcp: GcpWorld) -> None:
    doc = refresh(gcp)
    # A100 40 GB and 80 GB: two SKUs, neither a substring match of the other
    assert entry(doc, "a2-highgpu-1g")["on_demand"] - host("a2", 12, 85) == pytest.approx(
        GPU_SKUS["Nvidia Tesla A100 GPU"], abs=1e-4
    )
    ultra = entry(doc, "a2-ultragpu-1g")
    assert ultra["on_demand"] - host("a2", 12, 170) - ssd(375) == pytest.approx(
        GPU_SKUS["Nvidia Tesla A100 80GB GPU"], abs=1e-4
    )
    # H100 Mega: on demand "Nvidia H100 80GB Plus GPU", spot "... Mega GPU attached to ..."
    mega = doc["instance_types"]["a3-megagpu-8g"]["regions"]
    region = sorted(mega)[0]
    plus = GPU_SKUS["Nvidia H100 80GB Plus GPU"]
    assert mega[region]["on_demand"] == pytest.approx(
        host("a3", 208, 1872) + 8 * plus + ssd(6000), abs=1e-4
    )
    assert mega[region]["spot"] == pytest.approx(
        host("a3", 208, 1872, spot=True) + 8 * plus * SPOT_FACTOR + ssd(6000, spot=True),
        abs=1e-4,
    )
    # without the 80 GB SKU, the a2-ultragpu shapes are unpriced, not priced as 40 GB ones
    gcp.fake.skus = [s for s in gcp.fake.skus if "A100 80GB" not in s["description"]]
    doc = refresh(gcp)
    assert not any(name.startswith("a2-ultragpu") for name in doc["instance_types"])
    assert "a2-ultragpu-8g/us-central1" in doc["notes"]
    assert "a2-highgpu-8g" in doc["instance_types"]


def test_dws_flex_start_commitment_calendar_and_sole_tenancy_skus_never_count(
    gcp: GcpWorld,
) -> None:
    decoys = [s for s in gcp.fake.skus if usd(s) == DECOY_USD]
    kinds = " ".join(s["description"] for s in decoys)
    for word in ("DWS", "Flex-start", "Commitment", "Calendar Mode", "Sole Tenancy"):
        assert word in kinds  # the fake holds every kind of SKU the refresh must ignore
    with_decoys = refresh(gcp)
    gcp.fake.skus = [s for s in gcp.fake.skus if s not in decoys]
    without = refresh(gcp)
    assert with_decoys["instance_types"] == without["instance_types"]
    # and a decoy that did count would show: the cheapest GPU part is far above DECOY_USD
    a3 = entry(with_decoys, "a3-highgpu-8g")
    assert a3["on_demand"] > 8 * min(GPU_SKUS.values()) > 8 * DECOY_USD


@pytest.mark.parametrize(
    ("description", "usage", "parsed"),
    [
        ("Nvidia H100 80GB GPU running in Americas", "OnDemand",
         ("Nvidia H100 80GB GPU", ON_DEMAND)),
        ("Nvidia H100 80GB GPU attached to Spot Preemptible VMs running in Tokyo", "Preemptible",
         ("Nvidia H100 80GB GPU", SPOT)),
        ("Spot Preemptible A3 Instance Core running in Americas", "Preemptible",
         ("A3 Instance Core", SPOT)),
        ("H200 141GB GPU running in Netherlands", "OnDemand", ("H200 141GB GPU", ON_DEMAND)),
        ("A4 Nvidia B200 (1 gpu slice) running in Americas", "OnDemand",
         ("A4 Nvidia B200 (1 gpu slice)", ON_DEMAND)),
        ("Spot Preemptible A4 Nvidia B200 (1 gpu slice) running in Americas", "Preemptible",
         ("A4 Nvidia B200 (1 gpu slice)", SPOT)),
        ("SSD backed Local Storage", "OnDemand", ("SSD backed Local Storage", ON_DEMAND)),
        ("SSD backed Local Storage attached to Spot Preemptible VMs", "Preemptible",
         ("SSD backed Local Storage", SPOT)),
        # never used
        ("Nvidia H100 Mega 80GB GPU attached to DWS Defined Duration VMs running in Americas",
         "OnDemand", None),
        ("DWS Defined Duration A3 Ultra Instance Core running in Americas", "OnDemand", None),
        ("Reserved Nvidia H100 80GB Mega GPU in Americas in Calendar Mode", "OnDemand", None),
        ("Commitment v1: Nvidia H100 80GB GPU running in Americas for 1 Year", "Commit1Yr", None),
        ("Commitment v1: Nvidia H100 80GB GPU running in Americas for 1 Year", "OnDemand", None),
        ("Nvidia Tesla T4 GPU attached to Sole Tenancy VMs running in Americas", "OnDemand", None),
        ("Nvidia H100 80GB GPU attached to Flex-start VMs running in Americas", "OnDemand", None),
        ("Nvidia H100 80GB GPU running in Americas", "Commit3Yr", None),
        ("Spot Preemptible A3 Instance Core running in Americas", "OnDemand", None),
        ("A3 Instance Core running in Americas", "Preemptible", None),
        ("Custom Instance Core running in Americas", "OnDemand", None),
        ("Network Egress via Carrier Peering Network", "OnDemand", None),
    ],
)  # fmt: skip
def test_parse_sku(description: str, usage: str, parsed: tuple[str, str] | None) -> None:
    assert parse_sku(description, usage) == (ParsedSku(*parsed) if parsed else None)


def test_a4_is_priced_by_its_gpu_slices_alone(gcp: GcpWorld) -> None:
    zone = "us-central1-b"
    gcp.fake.machine_types[zone]["a4-highgpu-8g"] = {
        "name": "a4-highgpu-8g",
        "guestCpus": 224,
        "memoryMb": 3968 * 1024,
        "zone": zone,
        "accelerators": [{"guestAcceleratorType": "nvidia-b200", "guestAcceleratorCount": 8}],
        "bundledLocalSsds": {"defaultInterface": "NVME", "partitionCount": 32},
    }
    doc = refresh(gcp)
    spec = doc["instance_types"]["a4-highgpu-8g"]
    assert (spec["gpu"], spec["gpus"], spec["regions"]["us-central1"]["zones"]) == (
        "B200",
        8,
        [zone],
    )
    b200 = GPU_SKUS["A4 Nvidia B200 (1 gpu slice)"]
    assert spec["regions"]["us-central1"]["on_demand"] == pytest.approx(8 * b200)
    assert spec["regions"]["us-central1"]["spot"] == pytest.approx(8 * b200 * SPOT_FACTOR)


def test_two_prices_for_one_part_leave_it_unpriced_and_noted(gcp: GcpWorld) -> None:
    gcp.fake.skus.append(
        _sku("Nvidia L4 GPU running in Iowa", "GPU", "OnDemand", "h", 0.71, ["us-central1"])
    )
    doc = refresh(gcp)
    g2 = doc["instance_types"]["g2-standard-4"]["regions"]
    assert "on_demand" not in g2["us-central1"] and "spot" in g2["us-central1"]
    assert "on_demand" in g2["us-east4"]  # Iowa's SKU is not sold in us-east4
    assert "Nvidia L4 GPU (OnDemand) in us-central1" in doc["notes"]


def test_unpriceable_shapes_are_left_out_and_noted(gcp: GcpWorld) -> None:
    gcp.fake.skus = [s for s in gcp.fake.skus if "L4" not in s["description"]]
    gcp.fake.skus = [
        s for s in gcp.fake.skus if not s["description"].startswith("Spot Preemptible A2")
    ]
    doc = refresh(gcp)
    assert not any(name.startswith("g2-") for name in doc["instance_types"])
    assert "g2-standard-48/us-central1" in doc["notes"]
    a2 = entry(doc, "a2-highgpu-8g")
    assert "on_demand" in a2 and "spot" not in a2  # one market priced, the other left out
    # a machine with bundled local SSD and no SSD SKU is not priced without it
    gcp.fake.skus = [s for s in gcp.fake.skus if "Local Storage" not in s["description"]]
    doc = refresh(gcp)
    assert not any(n.startswith(("a3-", "a2-ultragpu")) for n in doc["instance_types"])
    assert "a2-highgpu-8g" in doc["instance_types"]


def test_each_price_is_dated_by_its_skus_effective_time(gcp: GcpWorld) -> None:
    newer = "2026-11-20T09:12:44.120Z"
    for sku in gcp.fake.skus:
        if sku["description"] == "Nvidia L4 GPU running in Americas":
            sku["pricingInfo"][0]["effectiveTime"] = newer
    doc = refresh(gcp)
    assert doc["prices_as_of"] == "2026-11-20"  # the newest in the feed
    assert "prices_as_of" not in entry(doc, "g2-standard-4")  # the file's date
    assert entry(doc, "a3-highgpu-8g")["prices_as_of"] == GPU_DAY  # its own, older one
    assert check_document(doc) == []
    # an effectiveTime after the refresh day (a clock ahead) is not written as the future
    for sku in gcp.fake.skus:
        sku["pricingInfo"][0]["effectiveTime"] = "2027-01-01T00:00:00Z"
    assert refresh(gcp)["prices_as_of"] == TODAY.isoformat()


def test_every_page_of_skus_is_read(gcp: GcpWorld) -> None:
    whole = refresh(gcp)
    gcp.fake.sku_page_size = 40
    gcp.fake.sku_requests.clear()
    paged = refresh(gcp)
    assert paged["instance_types"] == whole["instance_types"]
    tokens = [r["pageToken"] for r in gcp.fake.sku_requests]
    assert len(tokens) == -(-len(gcp.fake.skus) // 40) and tokens[0] == ""
    assert all(r["currencyCode"] == "USD" for r in gcp.fake.sku_requests)


def test_an_api_key_from_the_environment_reads_the_billing_catalog(
    gcp: GcpWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.settings import Settings
    from providers.gcp.catalog import api_key_from_env

    gcp.fake.api_key = API_KEY
    settings = Settings.from_env({API_KEY_ENV: API_KEY})  # the edge reads the environment
    assert API_KEY not in repr(settings)

    def refresh(gcp: GcpWorld) -> dict[str, Any]:  # as the gcp spec's refresh passes it on
        return build_catalog_document(
            gcp_config(gcp.server.url),
            bundled=gcp.catalog,
            today=TODAY,
            credentials=FakeCredentials(),
            api_key=api_key_from_env(settings.credentials),
        )

    doc = refresh(gcp)
    assert doc["instance_types"]
    assert {r["auth"] for r in gcp.fake.sku_requests} == {"key"}
    assert {r["key"] for r in gcp.fake.sku_requests} == {API_KEY}
    assert API_KEY not in json.dumps(doc)
    # a refused key: a typed error that does not repeat it
    settings = Settings.from_env({API_KEY_ENV: API_KEY[:-1] + "X"})
    with pytest.raises(ProviderError) as caught:
        refresh(gcp)
    shown = f"{caught.value} {caught.value!r} {caught.value.args}"
    assert "API key not valid" in shown and API_KEY[:-1] not in shown


@pytest.mark.parametrize(
    ("method", "fault", "cls"),
    [("skus", "403", AuthError), ("machineTypesAggregated", "rate-limit", ThrottledError)],
)
def test_api_errors_are_classified(gcp: GcpWorld, method: str, fault: str, cls: type) -> None:
    gcp.fake.inject(method, fault)
    with pytest.raises(cls):
        refresh(gcp)


def test_without_a_bundled_catalog_no_n1_combination_is_guessed(gcp: GcpWorld) -> None:
    doc = build_catalog_document(
        gcp_config(gcp.server.url), bundled=None, today=TODAY, credentials=FakeCredentials()
    )
    assert doc["instance_types"] and not any("+" in n for n in doc["instance_types"])
    assert "N1" in doc["notes"]


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


def test_broker_catalog_refresh_installs_the_document(tmp_path: Path) -> None:
    with FakeServer(require_auth=True, api_key=API_KEY) as server:
        env = {**cli_env(server.url, tmp_path), API_KEY_ENV: API_KEY}
        done = run_broker(env, "catalog", "refresh", "--provider", "gcp", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        assert summary["shapes"] > 0 and summary["prices_as_of"] == GPU_DAY
        assert Path(summary["path"]) == tmp_path / "catalog" / "gcp.json"
        assert server.state.tokens  # Compute's token came from ADC, through the fake
        assert {r["auth"] for r in server.state.sku_requests} == {"key"}
        quote = run_broker(env, "quote", "--gpus", "8", "--provider", "gcp", "--json")
        assert quote.returncode == 0, quote.stderr[-2000:]
        sources = {s["provider"]: s for s in json.loads(quote.stdout)["catalog"]["sources"]}
        assert sources["gcp"]["bundled"] is False
        for secret in (*server.state.tokens, API_KEY):
            assert secret not in done.stdout + done.stderr + quote.stdout + quote.stderr
        assert load_bundled_catalog().sources  # the bundled file is untouched


def test_a_refresh_that_fails_a_sanity_check_is_not_written(tmp_path: Path) -> None:
    with FakeServer(require_auth=True) as server:
        env = cli_env(server.url, tmp_path)
        catalog_dir = tmp_path / "catalog"
        assert run_broker(env, "catalog", "refresh", "--provider", "gcp").returncode == 0
        before = (catalog_dir / "gcp.json").read_bytes()
        for sku in server.state.skus:  # spot GPUs priced above on demand: a wrong SKU
            if "H100 80GB GPU attached to Spot" in sku["description"]:
                sku["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"] = {
                    "currencyCode": "USD",
                    "units": "9",
                    "nanos": 0,
                }
        done = run_broker(env, "catalog", "refresh", "--provider", "gcp")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "sanity check" in done.stderr and "not written" in done.stderr
        assert "gcp/a3-highgpu-8g/us-central1: spot" in done.stderr
        assert "[spot-below-on-demand]" in done.stderr
        assert (catalog_dir / "gcp.json").read_bytes() == before  # the previous file stays
        assert sorted(p.name for p in catalog_dir.iterdir() if "partial" in p.name) == []
