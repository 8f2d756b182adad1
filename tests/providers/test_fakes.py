"""The fakes' documented try-out commands (``python -m tests.fakes.gcp|azure``): the files
they write, the environment they print, and the control endpoint another process (the
adapter benchmark) injects faults through."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from providers.azure.config import AzureConfig
from providers.config import load_config
from providers.gcp.config import GcpConfig

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def try_out(cloud: str, workdir: Path, ready: str) -> Iterator[str]:
    """The fake's command, until its hint's last line; yields everything it printed."""
    child = subprocess.Popen(
        [sys.executable, "-m", f"tests.fakes.{cloud}", "--port", "0", "--dir", str(workdir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        printed = ""
        for line in child.stdout:
            printed += line
            if ready in line:
                break
        yield printed
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def post(url: str, body: dict[str, object], ca_file: str | None = None) -> dict[str, object]:
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10, context=context) as answer:
        doc: dict[str, object] = json.loads(answer.read())
    return doc


def test_the_gcp_try_out_keeps_state_and_catalog_in_its_directory(tmp_path: Path) -> None:
    with try_out("gcp", tmp_path, "broker provision") as printed:
        assert f"BROKER_STATE_DIR={tmp_path / 'state'}" in printed
        assert f"BROKER_CATALOG_DIR={tmp_path / 'catalog'}" in printed
        assert f"BROKER_CONFIG={tmp_path / 'config.toml'}" in printed
        gcp = load_config(tmp_path / "config.toml", required=True).section_of(GcpConfig)
        assert gcp is not None and gcp.endpoint is not None
        fault = post(f"{gcp.endpoint}/_fake/inject", {"method": "bulkInsert", "error": "stockout"})
        assert fault == {"method": "bulkInsert", "error": "stockout"}


def test_the_azure_try_out_takes_faults_from_another_process(tmp_path: Path) -> None:
    with try_out("azure", tmp_path, "BROKER_CATALOG_DIR") as printed:
        assert f'BROKER_STATE_DIR="{tmp_path / "state"}"' in printed
        azure = load_config(tmp_path / "config.toml", required=True).section_of(AzureConfig)
        assert azure is not None and azure.endpoint and azure.ca_bundle
        body = {"op": "create", "code": "AllocationFailed", "kind": "lro"}
        fault = post(f"{azure.endpoint}/_fake/inject", body, azure.ca_bundle)
        assert fault == {"op": "create", "code": "AllocationFailed"}
