"""shapes.build.build: the bundled files are what the sources build, and the build's rules."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from shapes.build import build as build_mod
from shapes.build.build import BUILT, BuildError, build, build_azure, load_source, main, render
from shapes.catalog import BUNDLED_DIR


@pytest.mark.parametrize("provider", BUILT)
def test_the_bundled_file_is_what_the_sources_build(provider: str) -> None:
    assert (BUNDLED_DIR / f"{provider}.json").read_text() == render(build(provider))


def test_check_mode_passes_on_the_committed_files_and_fails_on_a_changed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check"]) == 0
    for provider in BUILT:
        (tmp_path / f"{provider}.json").write_text((BUNDLED_DIR / f"{provider}.json").read_text())
    monkeypatch.setattr(build_mod, "DATA", tmp_path)
    doc = json.loads((tmp_path / "gcp.json").read_text())
    doc["instance_types"]["a3-highgpu-8g"]["regions"]["us-central1"]["on_demand"] = 43.07
    (tmp_path / "gcp.json").write_text(json.dumps(doc))
    assert main(["--check"]) == 1
    assert "gcp.json" in capsys.readouterr().err
    assert main([]) == 0  # rebuilding restores it
    assert main(["--check"]) == 0


@pytest.mark.parametrize("provider", BUILT)
def test_every_built_file_is_dated_with_its_source(provider: str) -> None:
    doc = json.loads((BUNDLED_DIR / f"{provider}.json").read_text())
    meta = load_source(provider)["source"]
    assert doc["prices_as_of"] == meta["prices_as_of"] is not None
    assert doc.get("spot_as_of") == meta.get("spot_as_of")  # aws: no dated spot price
    assert meta["commit"] in doc["price_source"] and meta["repository"] in doc["price_source"]


def test_gcp_a3_includes_its_gpus_and_local_ssd() -> None:
    """The previous catalog had a3-highgpu-8g at $43.07/h in us-central1: half its price."""
    gcp = build("gcp")["instance_types"]
    a3 = gcp["a3-highgpu-8g"]["regions"]
    assert a3["us-central1"]["on_demand"] == pytest.approx(88.49, abs=0.01)
    assert a3["us-central1"]["on_demand"] > 2 * 43.07
    # 8 x the 1-GPU size: the SSD and GPUs scale with the size, nothing is host-only.
    assert a3["us-central1"]["on_demand"] == pytest.approx(
        8 * gcp["a3-highgpu-1g"]["regions"]["us-central1"]["on_demand"], rel=0.01
    )
    for spec in gcp.values():
        for entry in spec["regions"].values():
            assert entry["zones"]
            assert "spot" not in entry or entry["spot"] < entry["on_demand"]


def azure_rows(*rows: tuple[str, str, float]) -> dict[str, Any]:
    source = copy.deepcopy(load_source("azure"))
    source["rows"] = [
        {
            "key": f"k{i}",
            "armRegionName": "westeurope",
            "meterName": meter,
            "productName": product,
            "skuName": meter,
            "retailPrice": price,
            "unitOfMeasure": "1 Hour",
        }
        for i, (meter, product, price) in enumerate(rows)
    ]
    return source


def test_azure_low_priority_is_not_spot_and_windows_is_not_linux() -> None:
    doc = build_azure(
        azure_rows(
            ("NC24ads_A100_v4", "NCads A100 v4 Series Linux", 4.775),
            ("NC24ads_A100_v4", "NCads A100 v4 Series Windows", 5.511),
            ("NC24ads_A100_v4 Low Priority", "NCads A100 v4 Series Linux", 0.955),
            ("NC24ads_A100_v4 Spot", "NCads A100 v4 Series Linux", 1.097295),
        )
    )
    entry = doc["instance_types"]["Standard_NC24ads_A100_v4"]["regions"]["westeurope"]
    assert entry == {"zones": ["westeurope"], "on_demand": 4.775, "spot": 1.097295}


def test_azure_low_priority_alone_gives_no_spot_price() -> None:
    doc = build_azure(
        azure_rows(
            ("NC24ads_A100_v4", "NCads A100 v4 Series Linux", 4.775),
            ("NC24ads_A100_v4 Low Priority", "NCads A100 v4 Series Linux", 0.955),
        )
    )
    assert "spot" not in doc["instance_types"]["Standard_NC24ads_A100_v4"]["regions"]["westeurope"]


def test_a_spot_meter_at_on_demand_is_left_out_and_noted() -> None:
    doc = build_azure(
        azure_rows(
            ("ND96isrH200v5", "Virtual Machines NDsrH200v5 Series", 101.76),
            ("ND96isrH200v5 Spot", "Virtual Machines NDsrH200v5 Series", 101.76),
        )
    )
    assert "spot" not in doc["instance_types"]["Standard_ND96isr_H200_v5"]["regions"]["westeurope"]
    assert "Standard_ND96isr_H200_v5/westeurope" in doc["notes"]


def test_two_prices_for_one_meter_are_refused() -> None:
    with pytest.raises(BuildError, match="two prices"):
        build_azure(
            azure_rows(
                ("NC6s v3", "Virtual Machines NCSv3 Series", 3.8),
                ("NC6s v3", "Virtual Machines NCSv3 Series", 3.9),
            )
        )


def test_the_build_refuses_data_that_fails_a_sanity_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = load_source("gcp")
    bad = copy.deepcopy(source)
    for row in bad["rows"]:
        if row["machine_type"] == "a3-highgpu-8g" and row["region"] == "us-central1":
            row["hour"] = 43.07
    monkeypatch.setattr(build_mod, "load_source", lambda provider: bad)
    with pytest.raises(BuildError, match="gcp/a3-highgpu-8g/"):
        build("gcp")
    assert main(["--provider", "gcp", "--check"]) == 1
    assert "cross-region" in capsys.readouterr().err


def aws_sources() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    carried = json.loads((build_mod.SOURCES / "carried.json").read_text())["aws"]
    regional = json.loads((build_mod.SOURCES / "aws_regions.json").read_text())
    return copy.deepcopy(load_source("aws")), carried, regional


def test_aws_p4_p5_take_the_2025_price_cut_in_every_region() -> None:
    aws = build("aws")
    types = aws["instance_types"]
    assert types["p5.48xlarge"]["regions"]["us-east-1"]["on_demand"] == 55.04
    assert types["p4d.24xlarge"]["regions"]["us-east-1"]["on_demand"] == 21.957642
    # Outside us-east-1 the P4/P5 prices are the regional dump's, after the cut too
    # (the previous catalog had p5.48xlarge at $98.32 in us-east-2, $127.82 in eu-west-2).
    p5 = types["p5.48xlarge"]["regions"]
    assert p5["us-east-2"]["on_demand"] == 55.04
    assert p5["eu-west-2"]["on_demand"] == 71.552
    for name in ("p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5en.48xlarge"):
        cut = types[name]["regions"]["us-east-1"]["on_demand"]
        for region, entry in types[name]["regions"].items():
            assert entry.get("undated", []) in ([], ["spot"]), (name, region)  # spot: undated
            assert entry["on_demand"] < 1.5 * cut, (name, region)
    assert "stale" not in aws["notes"]  # nothing carried was stale any more
    # An unchanged price (g5) is dated now; its spot stays carried, undated.
    g5 = types["g5.48xlarge"]["regions"]
    assert g5["us-east-1"]["undated"] == ["spot"] and "prices_as_of" not in g5["us-east-1"]
    assert g5["us-west-2"]["undated"] == ["spot"]
    assert g5["us-west-2"]["prices_as_of"] == "2026-01-21"
    # A carried spot at on-demand is dropped by the sanity checks, and said.
    assert "euc1-az2" not in g5["eu-central-1"]["spot"]
    assert "g5.48xlarge/eu-central-1/euc1-az2 (spot-below-on-demand)" in aws["notes"]
    assert types["p6-b200.48xlarge"]["gpu"] == "B200"
    assert types["p5.4xlarge"]["regions"]["us-east-1"]["on_demand"] == 6.88


def test_aws_regional_rows_carry_their_own_date_and_never_override_the_newer_source() -> None:
    source, carried, regional = aws_sources()
    as_of = regional["source"]["prices_as_of"]
    assert as_of < source["source"]["prices_as_of"]  # older: hence the per-region date
    # A us-east-1 row in the regional dump loses to the Query API's newer price.
    regional["rows"].append({"instance_type": "g5.xlarge", "region": "us-east-1", "on_demand": 9.0})
    doc = build_mod.build_aws(source, carried, regional)
    types = doc["instance_types"]
    assert types["g5.xlarge"]["regions"]["us-east-1"] == {
        "zones": carried["instance_types"]["g5.xlarge"]["regions"]["us-east-1"]["zones"],
        "on_demand": 1.006,
    }
    for row in regional["rows"][:-1]:
        entry = types[row["instance_type"]]["regions"][row["region"]]
        assert entry["on_demand"] == row["on_demand"] and entry["prices_as_of"] == as_of
    assert f"{len(regional['rows']) - 1} region entries outside us-east-1" in doc["notes"]
    assert regional["source"]["commit"] in doc["price_source"]


def test_a_regional_row_where_no_zone_is_known_is_refused() -> None:
    source, carried, regional = aws_sources()
    regional["rows"].append(
        {"instance_type": "g5.xlarge", "region": "ap-southeast-2", "on_demand": 1.3}
    )
    with pytest.raises(BuildError, match=re.escape("aws/g5.xlarge/ap-southeast-2: no zones known")):
        build_mod.build_aws(source, carried, regional)


def test_without_the_regional_dump_stale_carried_prices_are_dropped() -> None:
    """The previous catalog's P4/P5 on-demand prices predate the mid-2025 cut: where no
    dated source has a price, none is carried."""
    source, carried, _ = aws_sources()
    doc = build_mod.carry(build_mod.build_aws(source, carried), carried)
    types = doc["instance_types"]
    for name in ("p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5en.48xlarge"):
        for region, entry in types[name]["regions"].items():
            assert region == "us-east-1" or "on_demand" not in entry, (name, region)
    assert "dropped as stale" in doc["notes"] and "p5.48xlarge" in doc["notes"]
    g5 = types["g5.48xlarge"]["regions"]
    assert g5["us-west-2"]["undated"] == ["on_demand", "spot"]


def test_suspect_carried_prices_are_dropped_and_said() -> None:
    azure = build("azure")
    nc48 = azure["instance_types"]["Standard_NC48ads_A100_v4"]["regions"]
    assert "on_demand" not in nc48["eastus"] and nc48["eastus"]["undated"] == ["spot"]
    assert nc48["westeurope"]["on_demand"] == 9.55  # dated: kept
    one = azure["instance_types"]["Standard_NC24ads_A100_v4"]["regions"]["eastus"]
    assert one["on_demand"] == 3.673 and one["undated"] == ["on_demand", "spot"]
    assert "dropped as suspect" in azure["notes"] and "20-23 % low" in azure["notes"]


def test_new_generations_are_in_the_catalog() -> None:
    azure = json.loads((BUNDLED_DIR / "azure.json").read_text())["instance_types"]
    assert azure["Standard_ND96isr_H200_v5"]["gpu"] == "H200"
    assert azure["Standard_ND96isr_MI300X_v5"]["gpu"] == "MI300X"
    assert {"westeurope", "northeurope", "swedencentral"} <= {
        r for spec in azure.values() for r in spec["regions"]
    }
