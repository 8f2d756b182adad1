"""Azurite, Microsoft's Azure Storage emulator (from the npm registry), as a subprocess on
127.0.0.1 for the tests.

Installed on first use into a cache directory (``BURST_BROKER_AZURITE_DIR``, default
``~/.cache/burst-broker-test/azurite``) with ``npm install``, under a file lock (xdist workers
may race). When it cannot be installed the tests skip, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

AZURITE_VERSION = "3.35.0"
# Azurite's well-known development account (published in Azurite's README; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
INSTALL_TIMEOUT = 300.0
START_TIMEOUT = 30.0


def cache_dir() -> Path:
    configured = os.environ.get("BURST_BROKER_AZURITE_DIR")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "burst-broker-test" / "azurite"


def _script(root: Path) -> Path:
    return root / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"


def install() -> tuple[Path | None, str]:
    """(path of azurite-blob's script, "") once installed, else (None, why not)."""
    root = cache_dir()
    if _script(root).is_file():
        return _script(root), ""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        return None, "node and npm are not installed"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _script(root).is_file():  # another worker installed it while we waited
            return _script(root), ""
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(root), "--no-audit", "--no-fund",
                 "--loglevel=error", "--fetch-retries=1", "--fetch-timeout=30000",
                 f"azurite@{AZURITE_VERSION}"],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return None, f"npm install azurite took over {INSTALL_TIMEOUT:.0f} s"
        if done.returncode != 0 or not _script(root).is_file():
            return None, f"npm install azurite failed: {done.stderr.strip()[-500:]}"
    return _script(root), ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Azurite:
    """One azurite-blob process with its data in ``location``."""

    def __init__(self, script: Path, location: Path) -> None:
        self.port = _free_port()
        self.log = location / "azurite.log"
        node = shutil.which("node") or "node"
        self._process = subprocess.Popen(
            [node, str(script), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             "--location", str(location), "--skipApiVersionCheck", "--loose", "--silent"],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"azurite exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"azurite did not listen within {START_TIMEOUT} s") from None
                time.sleep(0.1)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)

    def create_container(self, name: str) -> None:
        """Create Container needs more than a service SAS: an account SAS, signed here."""
        now = time.time()
        fields = {
            "sv": "2021-12-02",
            "ss": "b",
            "srt": "sco",
            "sp": "rwdlac",
            "st": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 300)),
            "se": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 600)),
        }
        to_sign = "\n".join(
            [ACCOUNT, fields["sp"], fields["ss"], fields["srt"], fields["st"], fields["se"],
             "", "", fields["sv"], "", ""]
        )  # fmt: skip
        key = base64.b64decode(ACCOUNT_KEY)
        fields["sig"] = base64.b64encode(
            hmac.new(key, to_sign.encode(), hashlib.sha256).digest()
        ).decode()
        url = f"{self.endpoint}/{name}?restype=container&{urlencode(fields, quote_via=quote)}"
        request = urllib.request.Request(url, method="PUT", data=b"")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201


def start_or_skip(location: Path) -> Azurite:
    """A running Azurite; skipped when it cannot be installed and CI is not set."""
    script, why = install()
    if script is None:
        if os.environ.get("CI"):
            pytest.fail(f"Azurite is needed in CI: {why}")
        pytest.skip(f"Azurite unavailable: {why}")
    return Azurite(script, location)
