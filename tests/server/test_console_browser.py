"""The console in a real browser: headless Chromium (the system's chromium and
chromium-driver packages) driven by Selenium against a real ``broker serve --sim``.

Covers sign-in, both pages, the filters, the quote form, cancel with its confirmation, and
one organisation not seeing another's experiments. One browser serves the whole module.
Skipped when /usr/bin/chromedriver is missing, except in CI (``CI`` set), where that fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.server.conftest import BrokerServer, wait_for
from tests.server.screenshots import CHROMEDRIVER, chrome, sign_in, status, submit

MARKUP = "<script>alert(1)</script> ünïcødé"

if not CHROMEDRIVER.exists() and not os.environ.get("CI"):
    pytestmark = pytest.mark.skip(
        reason=f"{CHROMEDRIVER} is missing: apt-get install chromium chromium-driver "
        "(.ci/run installs them; in CI these tests never skip)"
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    if not CHROMEDRIVER.exists():
        pytest.fail(f"{CHROMEDRIVER} is missing in CI: apt-get install chromium chromium-driver")
    driver = chrome(tmp_path_factory.mktemp("chrome"))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: webdriver.Chrome) -> webdriver.Chrome:
    """The module's browser with no cookies left by an earlier test."""
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})
    return browser


def text(driver: webdriver.Chrome, css: str) -> str:
    """The element's text, once the page that the URL already names has rendered it (the
    URL changes before the new page's DOM is there)."""
    found = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, css), timeout=10)
    return str(found[0].text)


def rows(driver: webdriver.Chrome, css: str) -> list[str]:
    return [str(e.text) for e in driver.find_elements(By.CSS_SELECTOR, css)]


def until_url(driver: webdriver.Chrome, part: str) -> None:
    wait_for(lambda: part in driver.current_url, timeout=10)


def test_sign_in_burst_page_filters_quote_and_sign_out(
    page: webdriver.Chrome, server: BrokerServer
) -> None:
    token = server.token("acme")
    page.get(server.url + "/burst")
    until_url(page, "/signin")
    page.find_element(By.ID, "token").send_keys("bbt_not-a-real-token")
    page.find_element(By.CSS_SELECTOR, "form[action='/signin'] button").click()
    assert "not valid" in text(page, ".errors")
    page.find_element(By.ID, "token").send_keys(token)
    page.find_element(By.CSS_SELECTOR, "form[action='/signin'] button").click()
    until_url(page, "/burst")  # back where it was going
    assert text(page, ".org") == "acme"
    assert "bbt_" not in page.page_source  # the token is never rendered

    assert len(page.find_elements(By.CSS_SELECTOR, "#shapes tbody tr")) == 100
    copy = page.find_element(By.CSS_SELECTOR, "#shapes button.copy")
    copy.click()
    wait_for(lambda: copy.text in ("Copied", "Selected: press Ctrl+C"), timeout=5)

    Select(page.find_element(By.ID, "f-provider")).select_by_value("gcp")  # applies at once
    until_url(page, "provider=gcp")
    page.find_element(By.ID, "f-gpu").send_keys("H100")
    page.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    until_url(page, "gpu=H100")
    ids = [
        e.get_attribute("data-copy")
        for e in page.find_elements(By.CSS_SELECTOR, "#shapes [data-copy]")
    ]
    assert ids and all(i and i.startswith("gcp:") and "a3-" in i for i in ids)

    page.find_element(By.ID, "q-gpus").send_keys("16")
    page.find_element(By.CSS_SELECTOR, "#quote button[type=submit]").click()
    until_url(page, "gpus=16")
    assert "plans for 16 GPUs" in text(page, "#plans h2")
    plans = [
        e.get_attribute("data-copy")
        for e in page.find_elements(By.CSS_SELECTOR, "#plans [data-copy]")
    ]
    assert plans and all(p and p.startswith("gcp:") for p in plans)

    page.find_element(By.ID, "f-gpu").clear()
    page.find_element(By.ID, "f-gpu").send_keys("H1000")
    page.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    until_url(page, "gpu=H1000")
    assert "unknown GPU" in text(page, ".errors")

    page.find_element(By.ID, "signout").click()
    until_url(page, "/signin")
    assert "Signed out" in text(page, ".notice")
    page.get(server.url + "/experiments")
    until_url(page, "/signin")


def test_experiments_filter_escape_and_cancel(page: webdriver.Chrome, server: BrokerServer) -> None:
    token = server.token("acme")
    keep = submit(server, token, "keep running")
    doomed = submit(server, token, MARKUP, gpus=8)
    wait_for(lambda: status(server, token, keep) == status(server, token, doomed) == "RUNNING")
    sign_in(page, server.url, token)

    names = rows(page, "table.experiments .name")
    assert names == [MARKUP, "keep running"]  # newest first, the markup shown as text
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text  # noqa: B018 (the name ran no script)

    Select(page.find_element(By.ID, "f-status")).select_by_value("STOPPED")
    until_url(page, "status=STOPPED")
    assert rows(page, "table.experiments .name") == []
    assert "No experiment matches" in text(page, "p.empty")
    Select(page.find_element(By.ID, "f-status")).select_by_value("RUNNING")
    until_url(page, "status=RUNNING")
    assert len(rows(page, "table.experiments .name")) == 2

    page.find_element(By.LINK_TEXT, MARKUP).click()
    until_url(page, f"/experiments/{doomed}")
    assert text(page, "h1 .name") == MARKUP
    wait_for(lambda: "step 3 loss 0.6" in text(page, "#log"), timeout=15)  # refreshes itself
    assert len(page.find_elements(By.CSS_SELECTOR, "table tbody tr")) >= 2  # attempts, nodes

    cancel = page.find_element(By.CSS_SELECTOR, "#cancel button")
    cancel.click()
    WebDriverWait(page, 5).until(expected_conditions.alert_is_present()).dismiss()
    assert status(server, token, doomed) == "RUNNING"  # dismissed: nothing posted
    page.find_element(By.CSS_SELECTOR, "#cancel button").click()
    WebDriverWait(page, 5).until(expected_conditions.alert_is_present()).accept()
    until_url(page, "notice=stopped")
    assert "Cancelled" in text(page, ".notice")
    assert text(page, "h1 .status") == "STOPPED"
    assert status(server, token, doomed) == "STOPPED"
    assert status(server, token, keep) == "RUNNING"

    page.find_element(By.LINK_TEXT, "Experiments").click()
    Select(page.find_element(By.ID, "f-status")).select_by_value("STOPPED")
    until_url(page, "status=STOPPED")
    assert rows(page, "table.experiments .name") == [MARKUP]


def test_an_organisation_sees_only_its_own_experiments(
    page: webdriver.Chrome, server: BrokerServer
) -> None:
    acme, globex = server.token("acme"), server.token("globex")
    ours = submit(server, acme, "acme model")
    theirs = submit(server, globex, "globex secret model")
    sign_in(page, server.url, acme)
    source = page.page_source
    assert ours in source and "acme model" in source
    assert theirs not in source and "globex" not in source
    page.get(f"{server.url}/experiments/{theirs}")
    assert text(page, "h1") == "Not found"
    assert "globex" not in page.page_source

    page.find_element(By.ID, "signout").click()
    until_url(page, "/signin")
    sign_in(page, server.url, globex)
    assert rows(page, "table.experiments .name") == ["globex secret model"]
    assert text(page, ".org") == "globex"


def test_pages_work_on_a_small_screen(page: webdriver.Chrome, server: BrokerServer) -> None:
    page.set_window_size(420, 800)
    try:
        sign_in(page, server.url, server.token("acme"))
        assert "No experiments yet" in text(page, "div.empty")
        page.find_element(By.LINK_TEXT, "Burst").click()
        until_url(page, "/burst")
        assert page.find_element(By.ID, "q-gpus").is_displayed()
    finally:
        page.set_window_size(1280, 900)


def test_no_console_page_breaks_its_content_security_policy(
    page: webdriver.Chrome, server: BrokerServer
) -> None:
    token = server.token("acme")
    cluster = submit(server, token, "csp check")
    wait_for(lambda: status(server, token, cluster) == "RUNNING")
    page.get(server.url + "/signin")
    sign_in(page, server.url, token)
    for path in ("/experiments", f"/experiments/{cluster}", "/burst?gpus=8"):
        page.get(server.url + path)
        logs = page.get_log("browser")  # type: ignore[no-untyped-call]
        assert not [entry for entry in logs if "Content Security Policy" in entry["message"]], logs
        sheets = page.execute_script("return document.styleSheets.length")
        assert sheets == 1, path  # console.css loaded
