"""Quota readings, and which quota a gang of a shape draws on (pure: no SDK, no I/O).

A *reading* is one quota of one cloud in one region (or ``global``, project-wide): its limit,
what is in use, in vCPUs or GPUs. Adapters read them live (``quotas(region)``, the
:class:`providers.base.QuotaSource` method); the broker caches them (broker.quotas) and
skips a plan whose gang cannot fit in what is free, without a launch call. A *need* is what
one gang takes from one quota: :func:`needs` names them per cloud from the tables below.

The tables name the clouds' own quota identifiers:

- **AWS** (Service Quotas, ``ServiceCode="ec2"``, values in vCPUs per region): on-demand
  ``L-417A185B`` "Running On-Demand P instances" (every P family, P6 too) and
  ``L-DB2E81BA`` "Running On-Demand G and VT instances"; spot ``L-C4BD4855`` "All P5 Spot
  Instance Requests" (p5, p5e, p5en), ``L-7212CCBC`` "All P4, P3 and P2 Spot Instance
  Requests" (the old "All P Spot Instance Requests", split when P5 got its own) and
  ``L-3819A6DF`` "All G and VT Spot Instance Requests". The EC2 user guide's Spot quota page
  lists the names; the codes agree across independent public tools. P6 spot has no
  documented code here: its quota stays unknown (tried as before).
- **GCP** (``regions.get`` / ``projects.get`` quotas, in GPUs): one regional metric per GPU
  model (``NVIDIA_H100_GPUS``, ``NVIDIA_A100_80GB_GPUS``, ...), spot VMs draw on its
  ``PREEMPTIBLE_`` twin, and every GPU counts against the project's ``GPUS_ALL_REGIONS``.
  CPU quotas are read and shown, not used to skip: GPU machine series have their own CPU
  metrics, which a wrong guess would turn into false skips.
- **Azure** (``usage.list(location)``, in vCPUs): on-demand VMs count against their VM
  family's quota (the resource SKU's ``family``, e.g. ``standardNCADSA100v4Family``) and
  the regional ``cores``; Spot VMs of every family against one ``lowPriorityCores``. Names
  compare case-insensitively (Azure's casing varies).
- **sim**: its scenario's ``quota_vcpus`` / ``quota_gpus`` per region and market.

A shape whose quota the tables do not know needs nothing: it is tried as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from shapes.model import Provisioning, Shape

if TYPE_CHECKING:
    from providers.errors import ProviderError

GLOBAL = "global"  # the region of a project-wide quota (GCP's *_ALL_REGIONS)
ANY_MARKET = "any"  # a quota spot and on-demand VMs share


class QuotaUnit(StrEnum):
    VCPU = "vCPU"
    GPU = "GPU"


@dataclass(frozen=True)
class QuotaReading:
    """One quota as the cloud reported it: ``bucket`` is the cloud's own identifier."""

    provider: str
    region: str  # or GLOBAL
    bucket: str
    name: str  # the cloud's words for it
    unit: QuotaUnit
    market: str  # "on-demand", "spot" or ANY_MARKET
    limit: float
    usage: float

    @property
    def free(self) -> float:
        return max(self.limit - self.usage, 0.0)

    @property
    def key(self) -> tuple[str, str]:
        return self.region, bucket_key(self.bucket)


@dataclass(frozen=True)
class QuotaReport:
    """What one read of a region's quotas gave: the readings, and what could not be read
    (each warning says which quota and why: a missing permission is one, never an error)."""

    provider: str
    region: str
    readings: tuple[QuotaReading, ...] = ()
    warnings: tuple[str, ...] = ()
    read_at: float | None = None  # when it was read (a cached report: its age)


@dataclass(frozen=True)
class QuotaNeed:
    """What one gang takes from one quota."""

    region: str  # or GLOBAL
    bucket: str
    unit: QuotaUnit
    amount: float

    @property
    def key(self) -> tuple[str, str]:
        return self.region, bucket_key(self.bucket)


@dataclass(frozen=True)
class Shortfall:
    """A need that does not fit: the gang would be refused for this quota."""

    need: QuotaNeed
    reading: QuotaReading

    def describe(self) -> str:
        r, n = self.reading, self.need
        where = "all regions" if r.region == GLOBAL else r.region
        return (
            f"{r.provider} {where} {r.bucket} ({r.name}): the gang needs {_num(n.amount)} "
            f"{r.unit.value}, {_num(r.free)} free (limit {_num(r.limit)}, "
            f"in use {_num(r.usage)})"
        )


def _num(value: float) -> str:
    return f"{value:g}"


def unreadable(exc: ProviderError, permissions: str) -> str:
    """Why a quota or usage could not be read, in a few words: a refusal names the
    ``permissions`` that would let the broker skip doomed regions."""
    from providers.errors import ProviderUnavailableError

    if isinstance(exc, ProviderUnavailableError):
        return (
            f"permission missing ({exc.code}: {exc.message}); allow {permissions} to let the "
            "broker skip doomed regions"
        )
    return f"{exc.code}: {exc.message}"


def bucket_key(bucket: str) -> str:
    """Buckets compare without case or spaces (Azure spells family names both ways)."""
    return bucket.replace(" ", "").lower()


# -- AWS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AwsQuota:
    code: str
    name: str
    market: Provisioning


AWS_QUOTAS: tuple[AwsQuota, ...] = (
    AwsQuota("L-417A185B", "Running On-Demand P instances", Provisioning.ON_DEMAND),
    AwsQuota("L-DB2E81BA", "Running On-Demand G and VT instances", Provisioning.ON_DEMAND),
    AwsQuota("L-C4BD4855", "All P5 Spot Instance Requests", Provisioning.SPOT),
    AwsQuota("L-7212CCBC", "All P4, P3 and P2 Spot Instance Requests", Provisioning.SPOT),
    AwsQuota("L-3819A6DF", "All G and VT Spot Instance Requests", Provisioning.SPOT),
)
_AWS = {q.code: q for q in AWS_QUOTAS}
_P5_SPOT = frozenset({"p5", "p5e", "p5en"})
_OLD_P_SPOT = frozenset({"p2", "p3", "p3dn", "p4d", "p4de"})


def aws_quota(instance_type: str, market: Provisioning) -> AwsQuota | None:
    """The vCPU quota an EC2 instance of this type and market counts against (None: none
    of the GPU quotas above)."""
    family = instance_type.split(".", 1)[0].lower()
    if market is Provisioning.ON_DEMAND:
        if family.startswith("p"):
            return _AWS["L-417A185B"]
        if family.startswith(("g", "vt")):
            return _AWS["L-DB2E81BA"]
        return None
    if family in _P5_SPOT:
        return _AWS["L-C4BD4855"]
    if family in _OLD_P_SPOT:
        return _AWS["L-7212CCBC"]
    if family.startswith(("g", "vt")):
        return _AWS["L-3819A6DF"]
    return None


# -- GCP ---------------------------------------------------------------------------------

# Machine series (or attached accelerator suffix) -> the regional GPU quota metric.
GCP_GPU_METRICS: Mapping[str, str] = {
    "a2-highgpu": "NVIDIA_A100_GPUS",
    "a2-megagpu": "NVIDIA_A100_GPUS",
    "a2-ultragpu": "NVIDIA_A100_80GB_GPUS",
    "a3-highgpu": "NVIDIA_H100_GPUS",
    "a3-edgegpu": "NVIDIA_H100_GPUS",
    "a3-megagpu": "NVIDIA_H100_MEGA_GPUS",
    "a3-ultragpu": "NVIDIA_H200_GPUS",
    "a4-highgpu": "NVIDIA_B200_GPUS",
    "g2-standard": "NVIDIA_L4_GPUS",
    "+t4": "NVIDIA_T4_GPUS",
    "+v100": "NVIDIA_V100_GPUS",
    "+p100": "NVIDIA_P100_GPUS",
    "+p4": "NVIDIA_P4_GPUS",
}
GCP_GLOBAL_GPUS = "GPUS_ALL_REGIONS"


def gcp_gpu_metric(instance_type: str, market: Provisioning) -> str | None:
    """The regional GPU metric a GCP VM of this catalog type draws on (spot: PREEMPTIBLE_)."""
    machine, plus, attached = instance_type.lower().partition("+")
    key = "+" + attached.split("x", 1)[0] if plus else machine.rsplit("-", 1)[0]
    metric = GCP_GPU_METRICS.get(key)
    if metric is None:
        return None
    return "PREEMPTIBLE_" + metric if market is Provisioning.SPOT else metric


# -- Azure -------------------------------------------------------------------------------

# VM family (providers.azure.spec.azure_family of the size) -> its quota family, the resource
# SKUs' ``family`` field. Sources: Microsoft's per-series quota names as `az vm list-usage`
# and resource SKUs report them, cross-checked in public tools; the MI300X name has one.
AZURE_QUOTA_FAMILIES: Mapping[str, str] = {
    "ncs-v3": "standardNCSv3Family",
    "ncrs-v3": "standardNCSv3Family",
    "ncas-t4-v3": "standardNCASv3_T4Family",
    "ncads-a100-v4": "standardNCADSA100v4Family",
    "ncads-h100-v5": "standardNCadsH100v5Family",
    "ncadis-h100-v5": "standardNCadsH100v5Family",
    "ndrs-v2": "standardNDSv2Family",
    "ndamsr-a100-v4": "standardNDAMSv4_A100Family",
    "ndasr-v4": "standardNDASv4_A100Family",
    "ndisr-h100-v5": "standardNDSH100v5Family",
    "ndisr-h200-v5": "standardNDISRH200V5Family",
    "ndisr-mi300x-v5": "standardNDISv5MI300XFamily",
}
AZURE_CORES = "cores"  # Total Regional vCPUs (on-demand)
AZURE_SPOT_CORES = "lowPriorityCores"  # every Spot VM of the region, whatever its family


def azure_quota_family(size: str) -> str | None:
    from providers.azure.spec import azure_family

    return AZURE_QUOTA_FAMILIES.get(azure_family(size))


# -- needs ---------------------------------------------------------------------------------


def sim_bucket(market: str, unit: QuotaUnit) -> str:
    return f"{market}-{'vcpus' if unit is QuotaUnit.VCPU else 'gpus'}"


def needs(source: str, shape: Shape, nodes: int) -> list[QuotaNeed]:
    """What a gang of ``nodes`` x ``shape`` takes from each quota of ``source`` (the
    adapter's name: a cloud, or ``sim``); [] when no known quota applies."""
    region, market = shape.region, shape.provisioning
    vcpus = float(nodes * shape.vcpus)
    gpus = float(nodes * shape.gpus_per_node)
    if source == "sim":
        return [
            QuotaNeed(region, sim_bucket(market.value, QuotaUnit.VCPU), QuotaUnit.VCPU, vcpus),
            QuotaNeed(region, sim_bucket(market.value, QuotaUnit.GPU), QuotaUnit.GPU, gpus),
        ]
    if source != shape.provider:
        return []
    if source == "aws":
        quota = aws_quota(shape.instance_type, market)
        return [] if quota is None else [QuotaNeed(region, quota.code, QuotaUnit.VCPU, vcpus)]
    if source == "gcp":
        metric = gcp_gpu_metric(shape.instance_type, market)
        if metric is None:
            return []
        return [
            QuotaNeed(region, metric, QuotaUnit.GPU, gpus),
            QuotaNeed(GLOBAL, GCP_GLOBAL_GPUS, QuotaUnit.GPU, gpus),
        ]
    if source == "azure":
        if market is Provisioning.SPOT:
            return [QuotaNeed(region, AZURE_SPOT_CORES, QuotaUnit.VCPU, vcpus)]
        family = azure_quota_family(shape.instance_type)
        found = [QuotaNeed(region, AZURE_CORES, QuotaUnit.VCPU, vcpus)]
        if family is not None:
            found.insert(0, QuotaNeed(region, family, QuotaUnit.VCPU, vcpus))
        return found
    return []


def shortfalls(wanted: Iterable[QuotaNeed], readings: Iterable[QuotaReading]) -> list[Shortfall]:
    """The needs that do not fit in what the readings leave free. A need without a reading
    is unknown, not short: it never makes a skip."""
    by_key = {r.key: r for r in readings}
    short: list[Shortfall] = []
    for need in wanted:
        reading = by_key.get(need.key)
        if reading is not None and need.amount > reading.free:
            short.append(Shortfall(need, reading))
    return short


def unknown(wanted: Iterable[QuotaNeed], readings: Iterable[QuotaReading]) -> list[QuotaNeed]:
    """The needs no reading covers."""
    have = {r.key for r in readings}
    return [n for n in wanted if n.key not in have]


@dataclass
class ReportBuilder:
    """Collects one region's readings and warnings (for the adapters)."""

    provider: str
    region: str
    readings: list[QuotaReading] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(
        self,
        bucket: str,
        name: str,
        unit: QuotaUnit,
        market: str,
        limit: float,
        usage: float,
        *,
        region: str | None = None,
    ) -> None:
        self.readings.append(
            QuotaReading(
                self.provider,
                region or self.region,
                bucket,
                name,
                unit,
                market,
                float(limit),
                float(usage),
            )
        )

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def report(self) -> QuotaReport:
        return QuotaReport(self.provider, self.region, tuple(self.readings), tuple(self.warnings))


__all__ = [
    "ANY_MARKET",
    "AWS_QUOTAS",
    "AZURE_CORES",
    "AZURE_QUOTA_FAMILIES",
    "AZURE_SPOT_CORES",
    "GCP_GLOBAL_GPUS",
    "GCP_GPU_METRICS",
    "GLOBAL",
    "AwsQuota",
    "QuotaNeed",
    "QuotaReading",
    "QuotaReport",
    "QuotaUnit",
    "ReportBuilder",
    "Shortfall",
    "aws_quota",
    "azure_quota_family",
    "bucket_key",
    "gcp_gpu_metric",
    "needs",
    "shortfalls",
    "sim_bucket",
    "unknown",
]
