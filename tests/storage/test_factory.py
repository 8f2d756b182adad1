"""open_store: the backend by scheme, its options checked, cloud SDKs imported only when used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from providers.errors import ConfigError
from providers.storage.azure import AzureStore
from providers.storage.factory import open_store
from providers.storage.gcs import GcsStore
from providers.storage.s3 import S3Store
from tests.storage.azurite import ACCOUNT_KEY


def test_each_scheme_opens_its_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = open_store(
        "s3://bucket/pre/fix", options={"endpoint": "http://127.0.0.1:9000", "region": "eu-west-1"}
    )
    assert isinstance(s3, S3Store)
    assert (s3.url, s3.endpoint_url, s3.region) == (
        "s3://bucket/pre/fix",
        "http://127.0.0.1:9000",
        "eu-west-1",
    )
    gs = open_store("gs://bucket/p", options={"credentials_file": "/nowhere/sa.json"})
    assert isinstance(gs, GcsStore) and gs.endpoint == "https://storage.googleapis.com"
    az = open_store(
        "az://acct/cont/p",
        options={"endpoint": "http://127.0.0.1:10000/acct"},
        environ={"AZURE_STORAGE_KEY": ACCOUNT_KEY},  # what broker.settings read
    )
    assert isinstance(az, AzureStore)
    assert (az.account, az.container, az.endpoint) == (
        "acct",
        "cont",
        "http://127.0.0.1:10000/acct",
    )
    assert ACCOUNT_KEY not in repr(az)


def test_file_scheme_opens_the_file_store(tmp_path: object) -> None:
    from providers.storage.file import FileStore

    store = open_store(f"file://{tmp_path}", options={"public_url": "http://127.0.0.1:8080"})
    assert isinstance(store, FileStore) and store.url == f"file://{tmp_path}"


def test_empty_options_are_ignored() -> None:
    store = open_store("s3://bucket", options={"endpoint": "", "region": ""})
    assert isinstance(store, S3Store) and store.endpoint_url is None and store.region is None


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("gs://b/p", {"region": "us"}, "a gs:// store takes no option 'region'"),
        ("az://a/c", {"region": "x"}, r"takes: endpoint\)"),
        ("s3://b", {"credentials_file": "x"}, "takes: endpoint, region"),
        ("s3://b", {"secret": "x"}, "no option 'secret'"),
        ("ftp://b/p", {}, "an artifact store URL is"),
        ("az://acct", {}, "az://account/container"),
    ],
)
def test_bad_urls_and_options_are_config_errors(
    url: str, options: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        open_store(url, options=options)


def test_azure_without_a_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with pytest.raises(ConfigError, match="AZURE_STORAGE_KEY"):
        open_store("az://acct/cont")


def test_opening_a_store_imports_no_cloud_sdk() -> None:
    """Backends import their SDK on first use: opening one (as the broker does when it builds
    its store) loads none of boto3, google.auth or cryptography."""
    code = """
import json, sys
from providers.storage.factory import open_store
open_store("s3://b/p")
open_store("gs://b/p", options={"credentials_file": "/nowhere.json"})
heavy = ("boto3", "botocore", "google.auth", "google.oauth2", "cryptography", "azure")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy)))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if not m.startswith("google")] == []
    assert not any(m.startswith(("google.auth", "google.oauth2")) for m in loaded)
