"""The console's Artifacts panel in-process, on the default ``file://`` store (its signed
URLs served by this app at /v1/blobs): the experiment's files with a download link made at the
click (a redirect to a two-minute signed URL that no page holds), the sync totals per rank and
kind with a failed or missing final sync said loudly, and the organisation boundary."""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.common.by import By

from broker.api import Broker
from broker.server import console as console_module
from broker.server.console import LINK_SECONDS, size, sync_rows
from providers.storage.base import StorageError
from providers.storage.file import FileStore, _unb64
from tests.server.conftest import BrokerServer, wait_for
from tests.server.screenshots import CHROMEDRIVER, chrome, sign_in, status
from tests.server.test_artifacts_e2e import launch as e2e_launch
from tests.server.test_artifacts_e2e import submit as e2e_submit
from tests.server.test_console import Console

Files = dict[str, bytes]


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    made = Console(tmp_path)
    yield made
    for client in made.clients:
        client.close()


def store_of(console: Console) -> FileStore:
    store = console.broker.artifact_store
    assert isinstance(store, FileStore)
    return store


def write(console: Console, org: str, cluster_id: str, files: Files) -> None:
    """Files as the agents' syncs leave them: ``<org>/experiments/<id>/<kind>/rank-<r>/..``."""
    base = store_of(console).root / org / "experiments" / cluster_id
    for path, body in files.items():
        target = base / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)


def sync(
    console: Console,
    cluster_id: str,
    rank: int,
    kind: str,
    *,
    files: int,
    size: int,
    failed: int = 0,
    errors: tuple[str, ...] = (),
    final: bool,
) -> None:
    console.broker.store.record_sync(
        cluster_id,
        1,
        rank,
        kind,
        files=files,
        size=size,
        failed=failed,
        errors=list(errors),
        final=final,
        now=time.time(),
    )


def page_of(browser: TestClient, cluster_id: str) -> str:
    reply = browser.get(f"/experiments/{cluster_id}")
    assert reply.status_code == 200, reply.text
    assert reply.headers["cache-control"] == "no-store"
    return str(reply.text)


def panel(text: str) -> str:
    start = text.index('id="artifacts"')
    return text[start : text.index("</section>", start)]


def hrefs(text: str) -> list[str]:
    return [
        html.unescape(part.split('"', 1)[0])
        for part in text.split('href="')[1:]
        if "/artifacts/download" in part.split('"', 1)[0]
    ]


FILES: Files = {
    "checkpoints/rank-0/step-2/model.pt": b"w" * 5000,
    "checkpoints/rank-1/step-2/model.pt": b"v" * 5000,
    "lossy/rank-0/tb/events": b"scalars",
}


def test_the_panel_lists_every_file_with_its_size_and_time(console: Console) -> None:
    cluster_id = console.running("acme", "trainer")
    write(console, "acme", cluster_id, FILES)
    text = panel(page_of(console.signed_in("acme"), cluster_id))
    for path in FILES:
        assert f"<code>{path}</code>" in text
    assert "4.9 KiB" in text and "7 B" in text  # 5000 and 7 bytes
    assert "3 files, 9.8 KiB" in text
    today = time.strftime("%Y-%m-%dT", time.gmtime())
    assert text.count(f'<time datetime="{today}') == 3
    assert len(hrefs(text)) == 3


def test_no_signed_url_is_in_the_page(console: Console) -> None:
    cluster_id = console.running("acme")
    write(console, "acme", cluster_id, FILES)
    text = page_of(console.signed_in("acme"), cluster_id)
    assert "/v1/blobs" not in text
    for href in hrefs(text):
        assert href.startswith(f"/experiments/{cluster_id}/artifacts/download?path=")


def test_a_click_makes_a_short_lived_link_that_downloads_the_file(console: Console) -> None:
    cluster_id = console.running("acme")
    write(console, "acme", cluster_id, FILES)
    browser = console.signed_in("acme")
    href = next(h for h in hrefs(page_of(browser, cluster_id)) if "rank-1" in h)
    reply = browser.get(href)
    assert reply.status_code == 303
    assert reply.headers["cache-control"] == "no-store"
    location = reply.headers["location"]
    assert location.startswith("/v1/blobs/")  # on the host the browser already talks to
    claims = json.loads(_unb64(location.rsplit("/", 1)[1].split(".")[0]))
    assert claims["m"] == "GET"
    assert claims["k"] == f"acme/experiments/{cluster_id}/checkpoints/rank-1/step-2/model.pt"
    assert 0 < claims["e"] - time.time() <= LINK_SECONDS + 1
    got = browser.get(location)
    assert got.status_code == 200 and got.content == b"v" * 5000
    assert 'filename="model.pt"' in got.headers["content-disposition"]


def test_each_click_makes_a_new_link(console: Console) -> None:
    cluster_id = console.running("acme")
    write(console, "acme", cluster_id, FILES)
    browser = console.signed_in("acme")
    href = hrefs(page_of(browser, cluster_id))[0]
    first = browser.get(href).headers["location"]
    time.sleep(1.1)  # expiry is signed to the second
    assert browser.get(href).headers["location"] != first


def test_an_expired_link_downloads_nothing(console: Console) -> None:
    cluster_id = console.running("acme")
    write(console, "acme", cluster_id, FILES)
    browser = console.signed_in("acme")
    location = browser.get(hrefs(page_of(browser, cluster_id))[0]).headers["location"]
    clock = [time.time() + LINK_SECONDS + 5]
    store = store_of(console)
    later = FileStore(store._url, public_url="", secret=store._secret, clock=lambda: clock[0])
    console.broker.__dict__["artifact_store"] = later
    assert browser.get(location).status_code == 403


def test_download_needs_a_session(console: Console) -> None:
    cluster_id = console.running("acme")
    write(console, "acme", cluster_id, FILES)
    reply = console.client().get(
        f"/experiments/{cluster_id}/artifacts/download",
        params={"path": "lossy/rank-0/tb/events"},
    )
    assert reply.status_code == 303 and reply.headers["location"].startswith("/signin?next=")
    assert "/v1/blobs" not in reply.headers["location"]


def test_another_organisations_experiment_and_files_are_404(console: Console) -> None:
    cluster_id = console.running("acme", "acme-secret")
    write(console, "acme", cluster_id, FILES)
    other = console.signed_in("globex")
    page = other.get(f"/experiments/{cluster_id}")
    assert page.status_code == 404 and "model.pt" not in page.text
    reply = other.get(
        f"/experiments/{cluster_id}/artifacts/download",
        params={"path": "lossy/rank-0/tb/events"},
    )
    assert reply.status_code == 404 and "location" not in reply.headers
    assert "/v1/blobs" not in reply.text


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("checkpoints/rank-0/nope.pt", 404, "Not found"),
        ("../../globex/experiments/x/checkpoints/rank-0/a", 422, "not a relative path"),
        ("secrets/rank-0/a", 422, "kind must be one of"),
        ("checkpoints/model.pt", 422, "an artifact path is"),
    ],
)
def test_a_bad_or_missing_path_is_a_clear_page(
    console: Console, path: str, status: int, words: str
) -> None:
    cluster_id = console.running("acme")
    write(console, "acme", cluster_id, FILES)
    browser = console.signed_in("acme")
    reply = browser.get(f"/experiments/{cluster_id}/artifacts/download", params={"path": path})
    assert reply.status_code == status
    assert reply.headers["content-type"].startswith("text/html")
    assert words in html.unescape(reply.text) and "Traceback" not in reply.text
    assert "location" not in reply.headers


def test_file_names_are_escaped(console: Console) -> None:
    cluster_id = console.running("acme")
    name = "lossy/rank-0/<img src=x onerror=alert(1)>.txt"
    write(console, "acme", cluster_id, {name: b"x"})
    browser = console.signed_in("acme")
    text = page_of(browser, cluster_id)
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;.txt" in text
    (href,) = hrefs(text)
    got = browser.get(href)
    assert got.status_code == 303
    assert browser.get(got.headers["location"]).content == b"x"


def test_an_experiment_without_files_says_so(console: Console) -> None:
    cluster_id = console.running("acme")
    text = panel(page_of(console.signed_in("acme"), cluster_id))
    assert "No files" in text and "<table" not in text


def test_only_the_first_files_are_listed_and_the_rest_counted(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_module, "ARTIFACTS_SHOWN", 2)
    cluster_id = console.running("acme")
    write(console, "acme", cluster_id, FILES)
    text = panel(page_of(console.signed_in("acme"), cluster_id))
    assert len(hrefs(text)) == 2 and "lossy/rank-0/tb/events" not in text
    assert "1 more file(s)" in text and f"broker artifacts {cluster_id}" in text


def test_an_unreadable_store_is_said_and_the_page_still_renders(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster_id = console.running("acme", "still-here")

    def broken(self: Broker, cluster_id: str, kind: str | None = None) -> list[object]:
        raise StorageError("s3://bucket/prefix: listing failed (503 SlowDown)")

    monkeypatch.setattr(Broker, "artifacts", broken)
    text = page_of(console.signed_in("acme"), cluster_id)
    assert "still-here" in text and "Attempts" in text
    assert "The artifact store could not be read" in text and "503 SlowDown" in panel(text)


# -- sync totals --------------------------------------------------------------------------------


def sync_table(text: str) -> list[list[str]]:
    """The Syncs table's rows, as the text of their cells."""
    body = text.split('<table class="syncs">', 1)[1].split("</table>", 1)[0]
    rows = []
    for row in body.split("<tr")[2:]:  # past the header row
        cells = [c.split("</td>", 1)[0] for c in row.split("<td")[1:]]
        rows.append([html.unescape(c.split(">", 1)[1]) for c in cells])
    return rows


def test_sync_totals_per_rank_and_kind_while_running(console: Console) -> None:
    cluster_id = console.running("acme")
    sync(console, cluster_id, 0, "logs", files=3, size=3 * 1024, final=False)
    sync(console, cluster_id, 0, "logs", files=1, size=1024, final=False)  # totals add up
    sync(
        console, cluster_id, 1, "lossy", files=1, size=10, failed=2, errors=("a: 503",), final=False
    )
    text = page_of(console.signed_in("acme"), cluster_id)
    rows = sync_table(text)
    assert [r[:5] for r in rows] == [
        ["0", "logs", "4", "4.0 KiB", "0"],
        ["1", "lossy", "1", "10 B", "2"],
    ]
    assert "when the command ends" in rows[0][5]
    assert "last sync: a: 503" in rows[1][5]
    assert 'role="alert"' not in panel(text)  # the final sync has not run: nothing lost yet


def test_a_failed_final_sync_is_loud(console: Console) -> None:
    cluster_id = console.running("acme")
    sync(console, cluster_id, 0, "logs", files=2, size=20, final=True)
    sync(
        console,
        cluster_id,
        1,
        "checkpoints",
        files=1,
        size=100,
        failed=3,
        errors=("the final sync ran out of time (300s): 3 file(s) not sent",),
        final=True,
    )
    console.broker.scoped("acme").stop(cluster_id)
    text = panel(page_of(console.signed_in("acme"), cluster_id))
    alert = text.split('id="sync-failed"', 1)[1].split("</p>", 1)[0]
    assert "The final sync failed" in alert and "3 file(s) were not saved" in alert
    assert "rank 1 checkpoints" in alert and "rank 0" not in alert
    rows = {(r[0], r[1]): r for r in sync_table(text)}
    assert "done" in rows[("0", "logs")][5]
    assert "FAILED" in rows[("1", "checkpoints")][5]
    assert "ran out of time (300s)" in rows[("1", "checkpoints")][5]


def test_an_ended_experiment_without_a_final_sync_report_is_flagged(console: Console) -> None:
    cluster_id = console.running("acme")
    sync(console, cluster_id, 0, "logs", files=2, size=20, final=True)
    sync(console, cluster_id, 1, "logs", files=2, size=20, final=False)  # its node went silent
    console.broker.scoped("acme").stop(cluster_id)
    text = panel(page_of(console.signed_in("acme"), cluster_id))
    assert 'id="sync-failed"' not in text
    warning = text.split('id="sync-missing"', 1)[1].split("</p>", 1)[0]
    assert "No final sync was reported for" in warning and "rank 1 logs" in warning
    assert "rank 0" not in warning


def test_another_organisations_sync_totals_are_not_shown(console: Console) -> None:
    theirs = console.running("globex")
    sync(console, theirs, 0, "logs", files=9, size=9, final=True)
    mine = console.running("acme")
    assert 'class="syncs"' not in page_of(console.signed_in("acme"), mine)


@pytest.mark.parametrize(
    ("final", "failed", "live", "state"),
    [
        (True, 0, False, "done"),
        (True, 1, False, "failed"),
        (True, 1, True, "failed"),
        (False, 0, True, "pending"),
        (False, 2, True, "pending"),
        (False, 0, False, "missing"),
    ],
)
def test_sync_states(final: bool, failed: int, live: bool, state: str) -> None:
    row = {"rank": 0, "kind": "logs", "final": final, "failed": failed, "files": 1}
    assert sync_rows([row], live=live)[0]["state"] == state


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (4096 * 2000, "7.8 MiB"),
        (256 * 1024**2, "256.0 MiB"),
        (50 * 10**9, "46.6 GiB"),
        (3 * 1024**5, "3072.0 TiB"),
    ],
)
def test_sizes_for_people(value: int, shown: str) -> None:
    assert size(value) == shown


def test_a_download_path_names_its_host_nowhere_else(console: Console) -> None:
    """A file store's link is relative: a browser behind a proxy follows it to the same host."""
    cluster_id = console.running("acme")
    write(console, "acme", cluster_id, FILES)
    browser = console.client(https=True)
    from tests.server.test_console import signin

    assert signin(browser, console.token("acme")).status_code == 303
    href = hrefs(page_of(browser, cluster_id))[0]
    location = browser.get(href).headers["location"]
    assert urlsplit(location).netloc == "" and location.startswith("/v1/blobs/")


# -- in a real browser --------------------------------------------------------------------------


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium (as tests/server/test_console_browser.py); skipped without its
    driver, except in CI."""
    if not CHROMEDRIVER.exists() and not os.environ.get("CI"):
        pytest.skip(f"{CHROMEDRIVER} is missing: apt-get install chromium chromium-driver")
    driver = chrome(tmp_path / "chrome")
    try:
        yield driver
    finally:
        driver.quit()


def test_in_a_browser_the_panel_shows_and_a_link_downloads(
    chromium: webdriver.Chrome, server: BrokerServer
) -> None:
    page = chromium
    token = server.token("acme")
    command = 'echo "weights of rank $NODE_RANK" > "$OUTPUT_PATH/model.txt"'
    cluster_id = e2e_submit(server, token, e2e_launch(command, gpus=4))
    wait_for(lambda: status(server, token, cluster_id) == "COMPLETED", timeout=60)
    sign_in(page, server.url, token)
    page.get(f"{server.url}/experiments/{cluster_id}")
    cells = [str(e.text) for e in page.find_elements(By.CSS_SELECTOR, "#artifacts table td")]
    assert "checkpoints/rank-0/model.txt" in cells and "18 B" in cells
    link = page.find_element(By.CSS_SELECTOR, "#artifacts a.download")
    href = str(link.get_attribute("href"))
    assert "/artifacts/download?" in href and "/v1/blobs" not in page.page_source
    got = page.execute_async_script(  # the browser's own request, with its session cookie
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'})"
        ".then(r => r.text().then(t => done([r.status, r.redirected, t])))"
        ".catch(e => done(['error', false, String(e)]));",
        href,
    )
    assert got == [200, True, "weights of rank 0\n"]
