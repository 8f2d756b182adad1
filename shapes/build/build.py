"""Build the bundled price files (``shapes/data/<provider>.json``) from the source extracts.

    python -m shapes.build.build            # rewrite the files this script builds
    python -m shapes.build.build --check    # exit 1 when a committed file is not what it builds

The extracts in ``shapes/build/sources/`` are the rows of public, primary-derived price data
that the catalog needs (provenance: ``shapes/build/sources/README.md``); the tables below
(sizes, GPUs, the Azure meter of each size) are ours. The output is deterministic (no clock,
sorted keys), every file is stamped with its source and dates, and a file that fails
:func:`shapes.sanity.check_document` is never written. Rules, per provider:

- GCP: the Billing Catalog's on-demand ("running in <region>") and Spot ("attached to Spot
  Preemptible VMs") SKUs summed per machine type (vCPU + RAM + GPUs, and the bundled local
  SSD of a2-ultragpu / a3 machines), as the extract's generator computes them; no
  commitment, reservation, DWS or flex-start SKU enters. A machine type is emitted in a
  region where its zones are known (``zones.json``).
- Azure: Retail Prices ``Consumption`` rows of Linux products: the size's plain meter is
  on-demand and its "<meter> Spot" meter is spot; "Low Priority" meters (Batch's
  low-priority VMs, not Spot) and Windows products never enter.
- Both: a spot price at or above on-demand is a meter without a spot discount (Azure H200
  today): it is left out, and the file's notes say so.

Prices of the previous catalog that no dated source covers (AWS outside us-east-1 and all AWS
spot, Azure's US regions, GCP's n1 shapes with attached T4/V100) are carried from
``sources/carried.json``, each region entry listing its undated markets (``"undated":
["spot"]``); stale ones are dropped (:func:`carry`) and the file's notes list them all.

- AWS: the Price List Query API's on-demand prices (Linux, Shared tenancy, ``OnDemand``
  market option, so no CapacityBlock or reserved terms) for us-east-1, the only region the
  extract's generator dumps; the other regions' on-demand prices come from an older per-region
  dump of the Price List offer files (``sources/aws_regions.json``, each such region entry
  stamped with its own ``prices_as_of``); spot is carried (below).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shapes.gpus import GPU_MEMORY_GIB
from shapes.sanity import check_document, format_problems

HERE = Path(__file__).parent
SOURCES = HERE / "sources"
DATA = HERE.parent / "data"
BUILT = ("aws", "azure", "gcp")  # the providers this script writes


class BuildError(Exception):
    """The sources cannot make a sane file (the message names the rows)."""


@dataclass(frozen=True)
class Size:
    """One instance type: its GPUs and host (from the clouds' machine-type documentation)."""

    gpu: str
    gpus: int
    vcpus: int
    memory_gib: float

    def spec(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "gpus": self.gpus,
            "gpu_memory_gib": GPU_MEMORY_GIB[self.gpu],
            "vcpus": self.vcpus,
            "memory_gib": self.memory_gib,
        }


GCP_SIZES: dict[str, Size] = {
    "a2-highgpu-1g": Size("A100-40GB", 1, 12, 85.0),
    "a2-highgpu-2g": Size("A100-40GB", 2, 24, 170.0),
    "a2-highgpu-4g": Size("A100-40GB", 4, 48, 340.0),
    "a2-highgpu-8g": Size("A100-40GB", 8, 96, 680.0),
    "a2-ultragpu-1g": Size("A100-80GB", 1, 12, 170.0),
    "a2-ultragpu-2g": Size("A100-80GB", 2, 24, 340.0),
    "a2-ultragpu-4g": Size("A100-80GB", 4, 48, 680.0),
    "a2-ultragpu-8g": Size("A100-80GB", 8, 96, 1360.0),
    "a3-highgpu-1g": Size("H100", 1, 26, 234.0),
    "a3-highgpu-2g": Size("H100", 2, 52, 468.0),
    "a3-highgpu-4g": Size("H100", 4, 104, 936.0),
    "a3-highgpu-8g": Size("H100", 8, 208, 1872.0),
    "a3-megagpu-8g": Size("H100", 8, 208, 1872.0),
    "g2-standard-4": Size("L4", 1, 4, 16.0),
    "g2-standard-24": Size("L4", 2, 24, 96.0),
    "g2-standard-48": Size("L4", 4, 48, 192.0),
    "g2-standard-96": Size("L4", 8, 96, 384.0),
}

# Azure: the Retail Prices meter name of each size (the extract has no armSkuName column).
AZURE_METERS: dict[str, tuple[str, Size]] = {
    "NC6s v3": ("Standard_NC6s_v3", Size("V100-16GB", 1, 6, 112.0)),
    "NC12s v3": ("Standard_NC12s_v3", Size("V100-16GB", 2, 12, 224.0)),
    "NC24s v3": ("Standard_NC24s_v3", Size("V100-16GB", 4, 24, 448.0)),
    "NC24rs v3": ("Standard_NC24rs_v3", Size("V100-16GB", 4, 24, 448.0)),
    "NC4as T4 v3": ("Standard_NC4as_T4_v3", Size("T4", 1, 4, 28.0)),
    "NC8as T4 v3": ("Standard_NC8as_T4_v3", Size("T4", 1, 8, 56.0)),
    "NC16asT4 v3": ("Standard_NC16as_T4_v3", Size("T4", 1, 16, 110.0)),
    "NC64asT4 v3": ("Standard_NC64as_T4_v3", Size("T4", 4, 64, 440.0)),
    "NC24ads_A100_v4": ("Standard_NC24ads_A100_v4", Size("A100-80GB", 1, 24, 220.0)),
    "NC48ads_A100_v4": ("Standard_NC48ads_A100_v4", Size("A100-80GB", 2, 48, 440.0)),
    "NC96ads_A100_v4": ("Standard_NC96ads_A100_v4", Size("A100-80GB", 4, 96, 880.0)),
    "ND96asr_A100_v4": ("Standard_ND96asr_v4", Size("A100-40GB", 8, 96, 900.0)),
    "ND96amsr A100 v4": ("Standard_ND96amsr_A100_v4", Size("A100-80GB", 8, 96, 1800.0)),
    "ND40rs v2": ("Standard_ND40rs_v2", Size("V100-32GB", 8, 40, 672.0)),
    "NC40adsH100v5": ("Standard_NC40ads_H100_v5", Size("H100-NVL", 1, 40, 320.0)),
    "NC80adisH100v5": ("Standard_NC80adis_H100_v5", Size("H100-NVL", 2, 80, 640.0)),
    "ND96isrH100v5": ("Standard_ND96isr_H100_v5", Size("H100", 8, 96, 1900.0)),
    "ND96isrH200v5": ("Standard_ND96isr_H200_v5", Size("H200", 8, 96, 1850.0)),
    "ND96isrMI300Xv5": ("Standard_ND96isr_MI300X_v5", Size("MI300X", 8, 96, 1850.0)),
}


def load_source(provider: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SOURCES / f"{provider}.json").read_text())
    return doc


def _skipped_spot(skipped: Sequence[str]) -> str:
    if not skipped:
        return ""
    return (
        " Spot left out where the spot meter is not below on-demand (no spot discount at "
        f"the source): {', '.join(skipped)}."
    )


def build_gcp(
    source: Mapping[str, Any], zones: Mapping[str, Mapping[str, list[str]]]
) -> dict[str, Any]:
    meta = source["source"]
    types: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for row in sorted(source["rows"], key=lambda r: (r["machine_type"], r["region"])):
        name, region = row["machine_type"], row["region"]
        size = GCP_SIZES[name]
        known = zones.get(name, {}).get(region)
        if not known:
            raise BuildError(f"gcp/{name}/{region}: zones unknown (add them to zones.json)")
        entry: dict[str, Any] = {"zones": list(known), "on_demand": round(row["hour"], 5)}
        spot = row.get("hour_spot")
        if spot is not None:
            if round(spot, 5) < entry["on_demand"]:
                entry["spot"] = round(spot, 5)
            else:
                skipped.append(f"{name}/{region}")
        types.setdefault(name, {**size.spec(), "regions": {}})["regions"][region] = entry
    return {
        "provider": "gcp",
        "currency": "USD",
        "prices_as_of": meta["prices_as_of"],
        "spot_as_of": meta["spot_as_of"],
        "retrieved": meta["extracted"],
        "price_source": (
            f"Google Cloud Billing Catalog Compute Engine SKUs as summed per machine type in "
            f"{meta['repository']} {meta['path']} at commit {meta['commit']} (generated "
            f"{meta['prices_as_of']}); built by shapes/build/build.py"
        ),
        "notes": (
            "Prices are the Billing Catalog's list prices in USD per node-hour: on-demand from "
            "the 'running in <region>' SKUs, spot from the 'attached to Spot Preemptible VMs' / "
            "'Spot Preemptible' SKUs (vCPU + RAM + GPUs, plus the bundled local SSD of "
            "a2-ultragpu and a3 machines), with no commitment, reservation, DWS or flex-start "
            "SKU; spot was sampled with the same snapshot. a3-highgpu-1g/2g/4g are sold as Spot "
            "or flex-start VMs only: their on-demand figure is the list price of the same SKUs. "
            "Left out, as the source has no price for them: a3-ultragpu-8g (H200), "
            "a4-highgpu-8g (B200) and the n1 shapes with attached T4/V100 GPUs (the snapshot "
            "prices no attached T4 or V100)." + _skipped_spot(skipped)
        ),
        "instance_types": types,
    }


def build_azure(source: Mapping[str, Any]) -> dict[str, Any]:
    meta = source["source"]
    on_demand: dict[tuple[str, str], float] = {}
    spot: dict[tuple[str, str], float] = {}
    for row in source["rows"]:
        meter, region = row["meterName"], row["armRegionName"]
        product = row["productName"]
        if "Windows" in product or " Win" in product or "Dedicated Host" in product:
            continue
        if row["unitOfMeasure"] != "1 Hour" or "Low Priority" in meter:
            continue  # Low Priority is Batch's low-priority VM, not a Spot VM
        market, base = (
            (spot, meter.removesuffix(" Spot"))
            if meter.endswith(" Spot")
            else (
                on_demand,
                meter,
            )
        )
        if base not in AZURE_METERS:
            continue
        key = (base, region)
        price = float(row["retailPrice"])
        if key in market and market[key] != price:
            raise BuildError(f"azure/{base}/{region}: two prices for one meter ({meter})")
        market[key] = price
    types: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for (base, region), price in sorted(on_demand.items()):
        name, size = AZURE_METERS[base]
        entry: dict[str, Any] = {"zones": [region], "on_demand": price}
        sp = spot.get((base, region))
        if sp is not None:
            if sp < price:
                entry["spot"] = sp
            else:
                skipped.append(f"{name}/{region}")
        types.setdefault(name, {**size.spec(), "regions": {}})["regions"][region] = entry
    types = dict(sorted(types.items()))
    regions = sorted({r for _, r in on_demand})
    return {
        "provider": "azure",
        "currency": "USD",
        "prices_as_of": meta["prices_as_of"],
        "spot_as_of": meta["spot_as_of"],
        "retrieved": meta["extracted"],
        "price_source": (
            f"Azure Retail Prices API Consumption rows as snapshotted in {meta['repository']} "
            f"data/latest at commit {meta['commit']} ({meta['prices_as_of']}); built by "
            "shapes/build/build.py"
        ),
        "notes": (
            "Linux pay-as-you-go prices in USD per node-hour; spot is the '<size> Spot' meter "
            "of the same snapshot (Low Priority meters are Batch low-priority VMs, not Spot, "
            "and are not used). Each region is its own pseudo-zone (the feed has no zones). "
            f"Dated regions: {', '.join(regions)}, the only ones a dated public snapshot of the "
            "feed was found for; no Asian region could be added, and the US regions are "
            "carried undated (below) until a refresh (`broker catalog refresh --provider azure "
            "--prices-only`) replaces them. ND GB200 v6 is not in the snapshot."
            + _skipped_spot(skipped)
        ),
        "instance_types": types,
    }


#: A carried on-demand price is dropped everywhere when the dated source moved the same
#: type's price by more than this in a region both have (it predates that change: AWS's
#: mid-2025 P4/P5 cut).
STALE_CHANGE = 0.10

_MARKETS = ("on_demand", "spot")


def carry(doc: dict[str, Any], carried: Mapping[str, Any]) -> dict[str, Any]:
    """Add the previous catalog's prices that the dated source lacks, each region entry
    listing its undated markets (``"undated": ["spot"]``); the notes name them.

    A carried price is dropped, not kept, when (1) the dated source changed the type's
    on-demand price by more than :data:`STALE_CHANGE` where both have one (every carried
    on-demand price of that type predates the change), (2) ``carried["suspect"]`` names its
    type (found wrong by an independent check, with the reason), or (3) it fails a sanity
    check (carried rows are provisional; a dated row that fails one stops the build)."""
    types: dict[str, dict[str, Any]] = doc["instance_types"]
    stale = sorted(
        name
        for name, spec in carried["instance_types"].items()
        for region, entry in spec["regions"].items()
        if "on_demand" in entry
        and "on_demand" in types.get(name, {}).get("regions", {}).get(region, {})
        and abs(types[name]["regions"][region]["on_demand"] / entry["on_demand"] - 1) > STALE_CHANGE
    )
    suspect = set(carried.get("suspect", {}).get("on_demand", []))
    dropped_stale: set[str] = set()  # stale types that had a carried on-demand price to drop
    for name, spec in sorted(carried["instance_types"].items()):
        for region, old in sorted(spec["regions"].items()):
            target = types.setdefault(name, {k: v for k, v in spec.items() if k != "regions"})
            entry = target.setdefault("regions", {}).setdefault(region, {"zones": old["zones"]})
            undated = [m for m in _MARKETS if m in old and m not in entry]
            if (name in stale or name in suspect) and "on_demand" in undated:
                undated.remove("on_demand")
                if name in stale:
                    dropped_stale.add(name)
            for market in undated:
                entry[market] = old[market]
            if undated:
                entry["undated"] = undated
    dropped = _drop_failing_carried(doc)
    for name in list(types):
        regions = {
            r: e for r, e in types[name]["regions"].items() if "on_demand" in e or "spot" in e
        }
        if regions:
            types[name]["regions"] = dict(sorted(regions.items()))
        else:
            del types[name]
    doc["instance_types"] = dict(sorted(types.items()))
    added: dict[str, list[str]] = {}
    for name, spec in doc["instance_types"].items():
        for region, entry in spec["regions"].items():
            if entry.get("undated"):
                added.setdefault(name, []).append(f"{region}: {'/'.join(entry['undated'])}")
    if added:
        doc["notes"] += (
            " Carried from the previous catalog, price date unknown (each region entry lists "
            f"its undated markets; origin: {carried['origin']}): "
            + "; ".join(f"{name} ({', '.join(regions)})" for name, regions in added.items())
            + "."
        )
    if dropped_stale:
        doc["notes"] += (
            " Carried on-demand prices dropped as stale (the dated source moved the type's "
            f"price by more than {STALE_CHANGE:.0%}): {', '.join(sorted(dropped_stale))}."
        )
    if suspect:
        doc["notes"] += (
            f" Carried on-demand prices dropped as suspect ({carried['suspect']['reason']}): "
            f"{', '.join(sorted(suspect))}."
        )
    if dropped:
        doc["notes"] += f" Carried prices dropped by the sanity checks: {', '.join(dropped)}."
    return doc


def _drop_failing_carried(doc: dict[str, Any]) -> list[str]:
    """Remove the carried (undated) prices that fail a sanity check; names them."""
    dropped: list[str] = []
    provider = doc["provider"]
    for _ in range(10):
        removed = False
        for problem in check_document(doc):
            parts = problem.where.split("/")
            if len(parts) < 3:
                continue
            name, region = parts[1], parts[2]
            entry = doc["instance_types"].get(name, {}).get("regions", {}).get(region)
            if not entry or not entry.get("undated"):
                continue
            if problem.rule == "spot-below-on-demand" and "spot" in entry["undated"]:
                spot = entry["spot"]
                if isinstance(spot, dict) and len(parts) == 4:
                    spot.pop(parts[3], None)
                    if not spot:
                        del entry["spot"]
                else:
                    del entry["spot"]
            elif (
                problem.rule in ("cross-region", "per-gpu-ratio")
                and "on_demand" in entry["undated"]
            ):
                del entry["on_demand"]
            else:
                continue
            market = "spot" if problem.rule == "spot-below-on-demand" else "on_demand"
            if market not in entry:
                entry["undated"] = [m for m in entry["undated"] if m != market]
            if not entry["undated"]:
                del entry["undated"]
            dropped.append(f"{problem.where.removeprefix(provider + '/')} ({problem.rule})")
            removed = True
            break  # re-check: one removal can settle other problems
        if not removed:
            return sorted(dropped)
    raise BuildError(f"{provider}: carried rows keep failing the sanity checks")


AWS_SIZES: dict[str, Size] = {
    "g4dn.xlarge": Size("T4", 1, 4, 16.0),
    "g4dn.12xlarge": Size("T4", 4, 48, 192.0),
    "g4dn.metal": Size("T4", 8, 96, 384.0),
    "g5.xlarge": Size("A10G", 1, 4, 16.0),
    "g5.12xlarge": Size("A10G", 4, 48, 192.0),
    "g5.48xlarge": Size("A10G", 8, 192, 768.0),
    "g6.xlarge": Size("L4", 1, 4, 16.0),
    "g6.12xlarge": Size("L4", 4, 48, 192.0),
    "g6.48xlarge": Size("L4", 8, 192, 768.0),
    "g6e.xlarge": Size("L40S", 1, 4, 32.0),
    "g6e.12xlarge": Size("L40S", 4, 48, 384.0),
    "g6e.48xlarge": Size("L40S", 8, 192, 1536.0),
    "p3.2xlarge": Size("V100-16GB", 1, 8, 61.0),
    "p3.8xlarge": Size("V100-16GB", 4, 32, 244.0),
    "p3.16xlarge": Size("V100-16GB", 8, 64, 488.0),
    "p3dn.24xlarge": Size("V100-32GB", 8, 96, 768.0),
    "p4d.24xlarge": Size("A100-40GB", 8, 96, 1152.0),
    "p4de.24xlarge": Size("A100-80GB", 8, 96, 1152.0),
    "p5.4xlarge": Size("H100", 1, 16, 256.0),
    "p5.48xlarge": Size("H100", 8, 192, 2048.0),
    "p5e.48xlarge": Size("H200", 8, 192, 2048.0),
    "p5en.48xlarge": Size("H200", 8, 192, 2048.0),
    "p6-b200.48xlarge": Size("B200", 8, 192, 2048.0),
}


def build_aws(
    source: Mapping[str, Any],
    carried: Mapping[str, Any],
    regional: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """On-demand from the dated extract (us-east-1), then from ``regional`` (the other
    regions, older: each of its region entries carries its own ``prices_as_of``) where the
    first has no row; zones from the previous catalog (a type it did not have gets every AZ
    of the region it knew: offerings are not in the sources)."""
    meta = source["source"]
    known = carried["instance_types"]
    all_zones: dict[str, set[str]] = {}
    for spec in known.values():
        for region, entry in spec["regions"].items():
            all_zones.setdefault(region, set()).update(entry.get("zones", []))
    types: dict[str, dict[str, Any]] = {}
    guessed: list[str] = []
    for row in sorted(source["rows"], key=lambda r: (r["instance_type"], r["region"])):
        name, region = row["instance_type"], row["region"]
        zones = known.get(name, {}).get("regions", {}).get(region, {}).get("zones")
        if not zones:
            zones = sorted(all_zones.get(region, ()))
            guessed.append(f"{name}/{region}")
        if not zones:
            raise BuildError(f"aws/{name}/{region}: no zones known")
        entry = {"zones": list(zones), "on_demand": row["on_demand"]}
        types.setdefault(name, {**AWS_SIZES[name].spec(), "regions": {}})["regions"][region] = entry
    older: list[str] = []
    if regional is not None:
        as_of = regional["source"]["prices_as_of"]
        for row in sorted(regional["rows"], key=lambda r: (r["instance_type"], r["region"])):
            name, region = row["instance_type"], row["region"]
            if region in types.get(name, {}).get("regions", {}):
                continue  # the newer source has it
            zones = known.get(name, {}).get("regions", {}).get(region, {}).get("zones")
            if not zones:
                raise BuildError(f"aws/{name}/{region}: no zones known (aws_regions.json)")
            entry = {"zones": list(zones), "on_demand": row["on_demand"], "prices_as_of": as_of}
            spec = types.setdefault(name, {**AWS_SIZES[name].spec(), "regions": {}})
            spec["regions"][region] = entry
            older.append(f"{name}/{region}")
        for spec in types.values():
            spec["regions"] = dict(sorted(spec["regions"].items()))
    return {
        "provider": "aws",
        "currency": "USD",
        "prices_as_of": meta["prices_as_of"],
        "retrieved": meta["extracted"],
        "price_source": (
            f"AWS Price List Query API on-demand prices (Linux, Shared tenancy, OnDemand "
            f"market: no CapacityBlock or reserved terms) for us-east-1 as generated in "
            f"{meta['repository']} {meta['path']} at commit {meta['commit']} "
            f"(generated {meta['generated']})"
            + (
                f"; other regions: AWS Price List offer files' on-demand prices as dumped per "
                f"region by instances.vantage.sh and copied in {regional['source']['repository']} "
                f"at commit {regional['source']['commit']} (generated "
                f"{regional['source']['prices_as_of']}; those region entries carry that "
                f"prices_as_of)"
                if regional is not None
                else ""
            )
            + "; built by shapes/build/build.py"
        ),
        "notes": (
            "On-demand prices of us-east-1 are the Price List Query API's of "
            f"{meta['prices_as_of']}"
            + (
                f"; those of the {len(older)} region entries outside us-east-1 are older "
                f"({regional['source']['prices_as_of']}, said by each entry's own prices_as_of): "
                "a scraped per-region dump of the Price List offer files (instances.vantage.sh, "
                f"as copied in {regional['source']['repository']}), whose us-east-1 prices equal "
                "the Query API's"
                if regional is not None and older
                else "; no dated source covers the other regions"
            )
            + ". p5e.48xlarge has no on-demand price in either source. No dated spot "
            "price was found: every spot price is carried from the previous catalog, "
            "undated."
            + (
                f" Zones not in the source, every known us-east-1 AZ listed: {', '.join(guessed)}."
                if guessed
                else ""
            )
        ),
        "instance_types": types,
    }


def build(provider: str) -> dict[str, Any]:
    """One provider's file as a JSON document; raises :class:`BuildError` if it fails a
    sanity check."""
    source = load_source(provider)
    carried = json.loads((SOURCES / "carried.json").read_text())
    if provider == "aws":
        regional = SOURCES / "aws_regions.json"
        doc = build_aws(
            source,
            carried["aws"],
            json.loads(regional.read_text()) if regional.exists() else None,
        )
    elif provider == "gcp":
        zones = json.loads((HERE / "zones.json").read_text())["gcp"]
        doc = build_gcp(source, zones)
    elif provider == "azure":
        doc = build_azure(source)
    else:
        raise BuildError(f"no source extract for {provider!r}; built: {', '.join(BUILT)}")
    doc = carry(doc, carried[provider])
    problems = check_document(doc)
    if problems:
        raise BuildError(
            f"{provider}: the sources fail the sanity checks:\n{format_problems(problems)}"
        )
    return doc


def render(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shapes.build.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="compare with the committed files")
    parser.add_argument("--provider", choices=BUILT, action="append", help="only this provider")
    args = parser.parse_args(argv)
    stale = []
    for provider in args.provider or BUILT:
        try:
            text = render(build(provider))
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        path = DATA / f"{provider}.json"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"not what the sources build: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
