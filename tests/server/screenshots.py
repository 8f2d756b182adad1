"""Screenshots of the console for the README: ``python -m tests.server.screenshots [OUT_DIR]``.

Starts a real ``broker serve --sim`` on loopback (its own temporary state), submits a few
experiments in two organisations through the API (the simulated cloud refuses the first
launch, so one experiment shows a failed attempt), then drives headless Chromium through the
pages and saves ``signin.png``, ``burst.png``, ``experiments.png`` and ``experiment.png``
(default: docs/screenshots/). :func:`chrome` is also the browser of the Selenium tests.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By

from tests.server.conftest import BrokerServer, kill_sim_nodes, server_env, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WIDTH = 1280

LAUNCH_FILE = """\
isc_project_id = "demo"
experiment_name = {name!r}
gpus = {gpus}
compute_mode = "burst"
command = '''
echo "rank $NODE_RANK of $NNODES: training"
for step in 1 2 3; do echo "step $step loss 0.$((9 - step))"; done
sleep 600'''
"""


def chrome(profile: Path, width: int = WIDTH, height: int = 900) -> webdriver.Chrome:
    """Headless Chromium from the system packages, with a fresh profile in ``profile``."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP
    return webdriver.Chrome(options=options, service=ChromeService(str(CHROMEDRIVER)))


def sign_in(driver: webdriver.Chrome, url: str, token: str) -> None:
    driver.get(url + "/signin")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form[action='/signin'] button").click()
    wait_for(lambda: driver.current_url.endswith("/experiments"), timeout=10)


def shoot(driver: webdriver.Chrome, path: Path, max_height: int = 1500) -> None:
    """The page at its full height (up to ``max_height``), as a PNG."""
    height: Any = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(int(height), max_height))
    time.sleep(0.2)
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 900)
    print(f"wrote {path}")


def submit(srv: BrokerServer, token: str, name: str, gpus: int = 16, **body: object) -> str:
    reply = srv.call(
        "/v1/clusters",
        "POST",
        token=token,
        body={"launch_file": LAUNCH_FILE.format(name=name, gpus=gpus), **body},
    )
    assert reply.status == 202, reply.body
    return str(reply.json()["cluster_id"])


def status(srv: BrokerServer, token: str, cluster_id: str) -> str:
    return str(srv.call(f"/v1/clusters/{cluster_id}", token=token).json()["status"])


def main(out: Path = OUT) -> int:
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="broker-shots-"))
    scenario = home / "scenario.toml"
    scenario.write_text('[default]\nerrors = ["capacity"]\n')  # the first launch is refused
    srv = BrokerServer(
        home / "state", server_env(home), "--workers", "1", "--sim-scenario", str(scenario)
    )
    driver = None
    try:
        acme, globex = srv.token("acme", "admin"), srv.token("globex")
        first = submit(srv, acme, "llama-7b finetune (lr 3e-4)")
        wait_for(lambda: status(srv, acme, first) == "RUNNING")
        stopped = submit(srv, acme, "resnet50 sweep #3", gpus=8)
        wait_for(lambda: status(srv, acme, stopped) == "RUNNING")
        srv.call(f"/v1/clusters/{stopped}/stop", "POST", token=acme)
        escaped = submit(srv, acme, "<script>alert(1)</script> ünïcødé", gpus=4)
        last = submit(srv, acme, "whisper eval", gpus=8, provisioning="on-demand")
        submit(srv, globex, "globex only: never shown to acme")
        wait_for(lambda: status(srv, acme, escaped) == status(srv, acme, last) == "RUNNING")

        driver = chrome(home / "chrome")
        driver.get(srv.url + "/signin")
        shoot(driver, out / "signin.png", max_height=700)
        sign_in(driver, srv.url, acme)
        driver.get(srv.url + "/burst?gpus=16&hours=2&gpu=H100&sort=price")
        shoot(driver, out / "burst.png", max_height=2300)
        driver.get(srv.url + "/experiments")
        shoot(driver, out / "experiments.png", max_height=900)
        driver.get(f"{srv.url}/experiments/{first}")
        shoot(driver, out / "experiment.png", max_height=1500)
    finally:
        if driver is not None:
            driver.quit()
        srv.stop(signal.SIGTERM, timeout=10)
        kill_sim_nodes(home / "state")  # the experiments' nodes (local processes) go too
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
