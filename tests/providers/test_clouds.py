"""The one table of clouds: every per-cloud fact (section model, adapter, live catalog,
quota rule) comes from a cloud's CloudSpec, and the table imports no cloud SDK."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import ClassVar

import pytest

from providers.aws.config import AwsConfig
from providers.clouds import CLOUDS, KNOWN_PROVIDERS, default_quota_bucket, quota_bucket
from providers.config import BrokerConfig
from providers.errors import NotConfiguredError
from providers.registry import SIMULATED, open_provider, provider_status, refresh_document
from providers.spec import CloudSection, CloudSpec
from shapes.catalog import Catalog
from tests.conftest import make_shape

REPO = Path(__file__).resolve().parents[2]
EMPTY = Catalog.of([])


def test_the_table_names_each_cloud_once_by_its_section() -> None:
    assert KNOWN_PROVIDERS == ("aws", "gcp", "azure") and SIMULATED not in CLOUDS
    for name, spec in CLOUDS.items():
        assert spec.name == name == spec.section.cloud
        assert spec.refresh is not None


def test_importing_the_table_and_the_config_imports_no_cloud_sdk() -> None:
    code = (
        "import sys, providers.clouds, providers.config, providers.registry\n"
        "sdks = ('boto3', 'botocore', 'google', 'azure', 'providers.aws.adapter', "
        "'providers.gcp.adapter', 'providers.azure.adapter', 'providers.sim')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in sdks or m in sdks))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_a_spec_must_name_its_own_section() -> None:
    class OracleConfig(CloudSection):
        cloud: ClassVar[str] = "oracle"

    with pytest.raises(TypeError, match=r"\[oracle\] section"):
        CloudSpec(name="aws", section=OracleConfig, open=lambda section, catalog: None)  # type: ignore[arg-type,return-value]


def test_quota_buckets_follow_each_clouds_rule() -> None:
    p5 = make_shape("p5.48xlarge", gpu="H100")
    g6 = make_shape("g6.xlarge", gpu="L4", gpus=1)
    a3 = make_shape("a3-highgpu-8g", provider="gcp", region="us-central1", gpu="H100")
    nc = make_shape("Standard_NC24ads_A100_v4", provider="azure", region="eastus", gpu="A100-80GB")
    nc_spot = make_shape(
        "Standard_NC24ads_A100_v4",
        provider="azure",
        region="eastus",
        gpu="A100-80GB",
        provisioning="spot",
    )
    assert (quota_bucket(p5), quota_bucket(g6)) == ("family-p", "family-g")
    assert quota_bucket(a3) == "gpu-H100" == default_quota_bucket(a3)  # GCP: per GPU model
    assert quota_bucket(nc) == "family-ncads-a100-v4"
    assert quota_bucket(nc_spot) == "low-priority-cores"
    other = make_shape("x1", provider="oracle", region="r", gpu="H100")
    assert quota_bucket(other) == "gpu-H100"  # a cloud without a rule gets the default


def test_the_registry_refuses_through_the_table(tmp_path: Path) -> None:
    config = BrokerConfig()
    with pytest.raises(NotConfiguredError, match="unknown provider 'oracle'"):
        open_provider("oracle", state_dir=tmp_path, catalog=EMPTY, config=config)
    with pytest.raises(NotConfiguredError, match=r"aws is not enabled.*no configuration file"):
        open_provider("aws", state_dir=tmp_path, catalog=EMPTY, config=config)
    with pytest.raises(NotConfiguredError, match="gcp is not enabled"):
        refresh_document("gcp", config=config, bundled=EMPTY, today=date(2025, 1, 1))
    status = provider_status("azure", state_dir=tmp_path, catalog=EMPTY, config=config)
    assert (status.enabled, status.usable) == (False, False) and "not enabled" in status.detail


def test_open_provider_builds_the_adapter_from_the_spec(tmp_path: Path) -> None:
    from providers.aws.adapter import AwsProvider

    aws = AwsConfig(regions=("us-west-2",))
    provider = open_provider(
        "aws", state_dir=tmp_path, catalog=EMPTY, config=BrokerConfig.enabling(aws)
    )
    assert isinstance(provider, AwsProvider) and provider.config is aws
