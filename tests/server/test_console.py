"""The web console in-process (FastAPI's TestClient over the real app and a real store):
sign-in and its cookie, CSRF on every form, the organisation boundary, filters, escaping,
cancel, the security headers and the static files. Workers are not started: clusters are
provisioned synchronously through the Broker."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from broker.api import Broker
from broker.lifecycle import Status
from broker.quote import QuoteRequest
from broker.ranking import RankRequest
from broker.server.app import create_app
from broker.server.console import SESSION_COOKIE, SIGNIN_COOKIE, STATIC, TEMPLATES, csrf_token
from broker.server.service import Service, ServiceOptions
from shapes.catalog import load_bundled_catalog

CATALOG = load_bundled_catalog()
MARKUP = "<script>alert(1)</script> ünïcødé"
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


class Console:
    """One app over a fresh store; ``client()`` is a browser (its own cookie jar)."""

    def __init__(self, tmp_path: Path, scenario: Path | None = None) -> None:
        self.broker = Broker(
            state_dir=tmp_path / "state", backend="sim", catalog=CATALOG, sim_scenario=scenario
        )
        self.service = Service(self.broker, ServiceOptions(workers=0, reconcile_every=0))
        self.app = create_app(self.service)
        self.clients: list[TestClient] = []

    def client(self, *, https: bool = False) -> TestClient:
        base = "https://testserver" if https else "http://testserver"
        made = TestClient(self.app, base_url=base, follow_redirects=False)
        self.clients.append(made)
        return made

    def token(self, org: str, role: str = "member") -> str:
        return self.broker.create_token(org, name="t", role=role)[0]

    def signed_in(self, org: str) -> TestClient:
        browser = self.client()
        reply = signin(browser, self.token(org))
        assert reply.status_code == 303, reply.text
        return browser

    def submit(self, org: str, name: str | None = None, gpus: int = 16) -> str:
        request = QuoteRequest(rank=RankRequest(gpus=gpus), experiment_name=name)
        return self.broker.scoped(org).submit(request).id

    def running(self, org: str, name: str | None = None) -> str:
        request = QuoteRequest(rank=RankRequest(gpus=16), experiment_name=name)
        cluster = self.broker.scoped(org).provision(request)
        assert cluster.status is Status.RUNNING
        return cluster.id


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    made = Console(tmp_path)
    yield made
    for client in made.clients:
        client.close()


def csrf_of(page: httpx.Response) -> str:
    found = CSRF_FIELD.search(page.text)
    assert found, page.text
    return found.group(1)


def signin(browser: TestClient, token: str, next_: str = "") -> httpx.Response:
    form = browser.get("/signin")
    assert form.status_code == 200
    reply: httpx.Response = browser.post(
        "/signin", data={"token": token, "csrf": csrf_of(form), "next": next_}
    )
    return reply


def set_cookie_headers(reply: httpx.Response) -> list[str]:
    return reply.headers.get_list("set-cookie")


def session_cookie(reply: httpx.Response) -> str:
    found = [c for c in set_cookie_headers(reply) if c.startswith(f"{SESSION_COOKIE}=")]
    assert len(found) == 1, set_cookie_headers(reply)
    return found[0]


# -- sign-in, sessions, CSRF --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/experiments", "/burst", "/experiments/bb-1", "/"])
def test_a_page_without_a_session_redirects_to_signin(console: Console, path: str) -> None:
    reply = console.client().get(path)
    assert reply.status_code == 303
    assert reply.headers["location"].startswith("/signin")


def test_root_goes_to_experiments_when_signed_in(console: Console) -> None:
    browser = console.signed_in("acme")
    assert browser.get("/").headers["location"] == "/experiments"
    assert browser.get("/signin").headers["location"] == "/experiments"


def test_signin_sets_a_strict_httponly_session_cookie(console: Console) -> None:
    token = console.token("acme")
    browser = console.client()
    form = browser.get("/signin")
    signin_cookie = form.headers["set-cookie"]
    assert signin_cookie.startswith(f"{SIGNIN_COOKIE}=")
    assert "HttpOnly" in signin_cookie and "SameSite=strict" in signin_cookie
    reply = browser.post("/signin", data={"token": token, "csrf": csrf_of(form)})
    assert reply.status_code == 303 and reply.headers["location"] == "/experiments"
    cookie = session_cookie(reply)
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert "secure" not in flags  # plain HTTP here: a Secure cookie would never come back
    page = browser.get("/experiments")
    assert page.status_code == 200 and "acme" in page.text
    assert token not in page.text and token not in form.text


def test_the_session_cookie_is_secure_over_https(console: Console) -> None:
    browser = console.client(https=True)
    reply = signin(browser, console.token("acme"))
    assert reply.status_code == 303
    assert "secure" in [p.strip().lower() for p in session_cookie(reply).split(";")]
    assert browser.get("/experiments").status_code == 200


@pytest.mark.parametrize("token", ["", "nonsense", "bbt_" + "x" * 43])
def test_a_bad_token_is_refused_and_not_echoed(console: Console, token: str) -> None:
    browser = console.client()
    reply = signin(browser, token)
    assert reply.status_code == 401
    assert "not valid" in reply.text
    assert not [c for c in set_cookie_headers(reply) if c.startswith(f"{SESSION_COOKIE}=")]
    if token:
        assert token not in reply.text
    assert browser.get("/experiments").status_code == 303


def test_signin_needs_its_own_csrf_value_against_login_csrf(console: Console) -> None:
    token = console.token("acme")
    browser = console.client()
    # A cross-site form posting the attacker's token: no double-submit cookie, no session.
    reply = browser.post("/signin", data={"token": token, "csrf": "anything"})
    assert reply.status_code == 403
    assert not [c for c in set_cookie_headers(reply) if c.startswith(f"{SESSION_COOKIE}=")]
    # The cookie is there now (the refusal page set a fresh one) but the value is wrong.
    reply = browser.post("/signin", data={"token": token, "csrf": "wrong"})
    assert reply.status_code == 403
    assert browser.get("/experiments").status_code == 303


def test_a_malformed_form_is_a_page_not_json(console: Console) -> None:
    browser = console.signed_in("acme")
    cluster_id = console.running("acme")
    reply = browser.post(
        f"/experiments/{cluster_id}/cancel", files={"csrf": ("csrf.txt", b"x", "text/plain")}
    )
    assert reply.status_code in (400, 403)
    assert reply.headers["content-type"].startswith("text/html")
    assert console.broker.get(cluster_id).status is Status.RUNNING


def test_a_revoked_token_ends_the_session_at_once(console: Console) -> None:
    secret, record = console.broker.create_token("acme", name="t")
    browser = console.client()
    assert signin(browser, secret).status_code == 303
    assert browser.get("/experiments").status_code == 200
    console.broker.revoke_token(record.id)
    reply = browser.get("/experiments")
    assert reply.status_code == 303 and reply.headers["location"] == "/signin"
    assert any(c.startswith(f"{SESSION_COOKIE}=") for c in set_cookie_headers(reply))
    assert browser.get("/burst").status_code == 303


def test_signout_needs_the_csrf_token(console: Console) -> None:
    browser = console.signed_in("acme")
    page = browser.get("/experiments")
    refused = browser.post("/signout")
    assert refused.status_code == 403 and "CSRF" in refused.text
    refused = browser.post("/signout", data={"csrf": "0" * 64})
    assert refused.status_code == 403
    assert browser.get("/experiments").status_code == 200  # still signed in
    reply = browser.post("/signout", data={"csrf": csrf_of(page)})
    assert reply.status_code == 303 and reply.headers["location"].startswith("/signin")
    assert browser.get("/experiments").status_code == 303
    assert "Signed out" in browser.get(reply.headers["location"]).text


def test_the_csrf_token_is_bound_to_the_session_token(console: Console) -> None:
    a, b = console.token("acme"), console.token("acme")
    assert csrf_token(a) != csrf_token(b) and csrf_token(a) == csrf_token(a)
    assert a not in csrf_token(a)


def test_signin_returns_to_the_page_asked_for_and_never_off_site(console: Console) -> None:
    browser = console.client()
    first = browser.get("/burst?provider=gcp")
    assert first.headers["location"] == "/signin?next=%2Fburst%3Fprovider%3Dgcp"
    reply = signin(browser, console.token("acme"), next_="/burst?provider=gcp")
    assert reply.headers["location"] == "/burst?provider=gcp"
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:1"):
        other = console.client()
        reply = signin(other, console.token("acme"), next_=evil)
        assert reply.headers["location"] == "/experiments", evil


# -- headers and static files -------------------------------------------------------------------


def test_pages_carry_a_strict_csp_and_no_inline_script(console: Console) -> None:
    browser = console.signed_in("acme")
    cluster_id = console.running("acme", "x")
    pages = ["/burst?gpus=16", "/experiments", f"/experiments/{cluster_id}", "/experiments/bb-x"]
    for path in ["/signin", *pages]:
        page = browser.get(path) if path != "/signin" else console.client().get(path)
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), path  # no inline script
        assert not re.search(r"\son[a-z]+=", page.text), path  # no inline handlers
        assert "style=" not in page.text, path  # the CSP would block inline styles
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text), path  # nothing off-site


def test_static_files_are_served_and_shipped(console: Console) -> None:
    page = console.client().get("/signin")
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {u.split("?")[0] for u in urls} == {
        "/static/console.css",
        "/static/console.js",
        "/static/favicon.svg",
    }
    types = {"css": "text/css", "js": "javascript", "svg": "image/svg+xml"}
    for url in urls:
        reply = console.client().get(url)
        assert reply.status_code == 200, url
        assert types[url.split("?")[0].rsplit(".", 1)[1]] in reply.headers["content-type"]
    assert console.client().get("/static/../console.py").status_code == 404
    assert (STATIC / "console.js").is_file() and (TEMPLATES / "base.html").is_file()


# -- the organisation boundary ------------------------------------------------------------------


def test_the_list_shows_only_the_organisations_experiments(console: Console) -> None:
    mine = [console.running("acme", "acme-one"), console.submit("acme", "acme-two")]
    theirs = console.running("globex", "globex-secret")
    page = console.signed_in("acme").get("/experiments")
    assert page.status_code == 200
    for cluster_id in mine:
        assert cluster_id in page.text
    assert "acme-one" in page.text and "acme-two" in page.text
    assert theirs not in page.text and "globex" not in page.text


def test_another_organisations_experiment_is_not_found(console: Console) -> None:
    theirs = console.running("globex", "globex-secret")
    browser = console.signed_in("acme")
    page = browser.get(f"/experiments/{theirs}")
    unknown = browser.get("/experiments/bb-000000000000")
    assert page.status_code == unknown.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "Not found" in page.text and "globex-secret" not in page.text
    assert page.text.replace(theirs, "ID") == unknown.text.replace("bb-000000000000", "ID")
    # Cancelling it is "not found" too, and changes nothing.
    csrf = csrf_of(browser.get("/experiments"))
    reply = browser.post(f"/experiments/{theirs}/cancel", data={"csrf": csrf})
    assert reply.status_code == 404
    assert console.broker.get(theirs).status is Status.RUNNING


# -- the Experiments pages ----------------------------------------------------------------------


def test_the_empty_state_says_how_to_submit(console: Console) -> None:
    page = console.signed_in("acme").get("/experiments")
    assert "No experiments yet" in page.text and "POST /v1/clusters" in page.text
    assert "broker provision" in page.text


def test_filter_by_status_and_mode(console: Console) -> None:
    running = console.running("acme", "still-running")
    stopped = console.running("acme", "was-stopped")
    console.broker.scoped("acme").stop(stopped)
    pending = console.submit("acme", "waiting")
    browser = console.signed_in("acme")

    def ids(query: str) -> set[str]:
        page = browser.get(f"/experiments{query}")
        assert page.status_code == 200, page.text
        return {c for c in (running, stopped, pending) if c in page.text}

    assert ids("") == {running, stopped, pending}
    assert ids("?status=RUNNING") == {running}
    assert ids("?status=stopped") == {stopped}
    assert ids("?status=PENDING&mode=burst") == {pending}
    assert ids("?mode=burst") == {running, stopped, pending}
    assert ids("?mode=cycle") == set()
    assert "No experiment matches these filters" in browser.get("/experiments?mode=cycle").text
    selected = browser.get("/experiments?status=RUNNING").text
    assert '<option value="RUNNING" selected>' in selected
    bad = browser.get("/experiments?status=BOGUS&mode=nope")
    assert bad.status_code == 200
    assert "unknown status" in bad.text and "unknown compute mode" in bad.text
    assert "not a cursor" in browser.get("/experiments?cursor=garbage").text
    assert "not a cursor" in browser.get("/experiments?cursor=" + "x" * 5000).text


def test_rows_show_shape_status_reason_age_and_cost(console: Console) -> None:
    cluster_id = console.running("acme", "costly")
    page = console.signed_in("acme").get("/experiments").text
    cluster = console.broker.get(cluster_id)
    assert str(cluster.shape_id) in page and "RUNNING" in page
    assert re.search(r"\d+ s</td>", page)  # age
    assert re.search(r"\$\d", page)  # cost so far


def test_fifty_per_page_with_a_next_page_link(console: Console) -> None:
    made = [console.submit("acme", f"exp-{i}", gpus=1) for i in range(53)]
    browser = console.signed_in("acme")
    first = browser.get("/experiments")
    assert first.text.count('class="row-link"') == 50
    link = re.search(r'href="(/experiments\?cursor=[^"]+)" rel="next"', first.text)
    assert link, first.text
    second = browser.get(link.group(1).replace("&amp;", "&"))
    assert second.text.count('class="row-link"') == 3
    assert 'rel="next"' not in second.text and "First page" in second.text
    shown = {c for c in made if c in first.text} | {c for c in made if c in second.text}
    assert shown == set(made)


def test_user_written_names_are_escaped(console: Console) -> None:
    cluster_id = console.submit("acme", MARKUP)
    browser = console.signed_in("acme")
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; ünïcødé"
    for path in ("/experiments", f"/experiments/{cluster_id}"):
        page = browser.get(path)
        assert page.status_code == 200
        assert escaped in page.text, path
        assert "<script>alert(1)" not in page.text, path
    # Markup in a cursor, a filter or a path comes back escaped too.
    page = browser.get("/experiments", params={"status": "<b>x</b>"})
    assert "<b>x</b>" not in page.text
    page = browser.get("/burst", params={"gpu": "<i>x</i>"})
    assert "<i>x</i>" not in page.text and "&lt;i&gt;x&lt;/i&gt;" in page.text


def test_the_detail_page(console: Console, tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text('[default]\nerrors = ["capacity"]\n')
    flaky = Console(tmp_path / "flaky", scenario)
    cluster_id = flaky.running("acme", "with a failed attempt")
    browser = flaky.signed_in("acme")
    page = browser.get(f"/experiments/{cluster_id}")
    assert page.status_code == 200
    text = page.text
    report = flaky.broker.describe(cluster_id)
    for t in report.transitions:
        assert t.status.value in text
    assert len(report.attempts) >= 2
    assert "InsufficientCapacity" in text  # the failed attempt's error code
    for node in report.cluster.nodes:
        assert node.provider_id in text and node.private_ip in text
    assert "no command: this cluster only provides machines" in text
    assert 'id="cancel"' in text and "data-confirm=" in text
    browser.close()


def test_the_detail_page_shows_the_last_100_lines_of_rank_0(console: Console) -> None:
    cluster_id = console.running("acme", "chatty")
    cluster = console.broker.get(cluster_id)
    store = console.broker.store
    store.register_agent(cluster_id, cluster.cycle, 0, address="a", instance_id=None, now=1.0)
    lines = [f"step {i} <b>loss</b>" for i in range(150)]
    store.append_logs(cluster_id, cluster.cycle, 0, seq=0, lines=lines, dropped=0, cap=10_000)
    browser = console.signed_in("acme")
    text = browser.get(f"/experiments/{cluster_id}").text
    assert "step 49 " not in text and "step 50 &lt;b&gt;loss&lt;/b&gt;" in text
    assert "step 149" in text and "<b>loss</b>" not in text
    refreshed = browser.get(f"/experiments/{cluster_id}/log").json()
    assert refreshed["lines"] == lines[-100:] and refreshed["live"] is True
    other = console.signed_in("globex")
    assert other.get(f"/experiments/{cluster_id}/log").status_code == 404
    browser.close()
    other.close()


def test_cancel_needs_the_csrf_token_then_stops_the_cluster(console: Console) -> None:
    cluster_id = console.running("acme", "to-cancel")
    browser = console.signed_in("acme")
    page = browser.get(f"/experiments/{cluster_id}")
    assert browser.post(f"/experiments/{cluster_id}/cancel").status_code == 403
    wrong = browser.post(f"/experiments/{cluster_id}/cancel", data={"csrf": "x"})
    assert wrong.status_code == 403
    assert console.broker.get(cluster_id).status is Status.RUNNING
    reply = browser.post(f"/experiments/{cluster_id}/cancel", data={"csrf": csrf_of(page)})
    assert reply.status_code == 303
    assert reply.headers["location"] == f"/experiments/{cluster_id}?notice=stopped"
    assert console.broker.get(cluster_id).status is Status.STOPPED
    after = browser.get(reply.headers["location"])
    assert "Cancelled" in after.text and 'id="cancel"' not in after.text
    again = browser.post(f"/experiments/{cluster_id}/cancel", data={"csrf": csrf_of(page)})
    assert again.headers["location"].endswith("notice=finished")


def test_a_cancel_still_winding_down_says_so(console: Console) -> None:
    """A command that takes its time to stop: the cancel answers before the end, and the
    page says what goes on (the experiment page shows it TERMINATING)."""
    from broker.state import Lease

    cluster_id = console.running("acme", "slow-to-stop")
    busy = Lease("another-host", time.time() + 60)  # its wind-down is under way elsewhere
    console.broker.store.transition(
        cluster_id, Status.TERMINATING, now=time.time(), lease=busy, ending=Status.STOPPED
    )
    browser = console.signed_in("acme")
    page = browser.get(f"/experiments/{cluster_id}")
    reply = browser.post(f"/experiments/{cluster_id}/cancel", data={"csrf": csrf_of(page)})
    assert reply.headers["location"] == f"/experiments/{cluster_id}?notice=stopping"
    after = browser.get(reply.headers["location"])
    assert "Cancelling: its command is being stopped" in after.text
    assert "TERMINATING" in after.text


def test_a_csrf_token_of_another_session_is_refused(console: Console) -> None:
    cluster_id = console.running("acme")
    mallory = console.signed_in("acme")
    victim = console.signed_in("acme")
    their_csrf = csrf_of(mallory.get("/experiments"))
    reply = victim.post(f"/experiments/{cluster_id}/cancel", data={"csrf": their_csrf})
    assert reply.status_code == 403
    assert console.broker.get(cluster_id).status is Status.RUNNING


def test_a_post_without_a_session_goes_to_signin(console: Console) -> None:
    cluster_id = console.running("acme")
    reply = console.client().post(f"/experiments/{cluster_id}/cancel", data={"csrf": "x"})
    assert reply.status_code == 303 and reply.headers["location"] == "/signin"
    assert console.broker.get(cluster_id).status is Status.RUNNING


# -- the Burst page -----------------------------------------------------------------------------


def test_the_burst_page_lists_the_catalog_in_pages(console: Console) -> None:
    browser = console.signed_in("acme")
    page = browser.get("/burst")
    assert page.status_code == 200
    assert f"{len(CATALOG)} shapes" in page.text
    assert page.text.count('class="copy"') == 100
    first = CATALOG.shapes[0]
    assert f'data-copy="{first.id}"' in page.text
    assert "Price date" in page.text
    last = browser.get("/burst?page=999")  # clamped to the last page
    assert last.text.count('class="copy"') == len(CATALOG) - 100 * (len(CATALOG) // 100)
    assert f'data-copy="{CATALOG.shapes[-1].id}"' in last.text
    assert browser.get("/burst?page=x").status_code == 200


def test_burst_filters(console: Console) -> None:
    browser = console.signed_in("acme")
    page = browser.get("/burst?gpu=H100&provider=gcp&provisioning=spot&sort=price")
    ids = re.findall(r'data-copy="([^"]+)"', page.text)
    expected = [
        s
        for s in CATALOG.shapes
        if s.provider == "gcp" and s.gpu.startswith("H100") and s.provisioning.value == "spot"
    ]
    assert ids and len(ids) == len(expected)
    assert all(i.startswith("gcp:") and i.endswith(":spot") for i in ids)
    prices = [CATALOG.get(i).price_per_node_hour for i in ids]  # type: ignore[union-attr]
    assert prices == sorted(prices)
    regions = browser.get("/burst?region=us-east4,europe-west4&provider=gcp").text
    assert all(
        ":us-east4:" in i or ":europe-west4:" in i
        for i in re.findall(r'data-copy="([^"]+)"', regions)
    )


def test_burst_filter_errors_are_shown(console: Console) -> None:
    browser = console.signed_in("acme")
    page = browser.get("/burst?gpu=H1000&provider=gcpp&region=mars-1&provisioning=cheap")
    assert page.status_code == 200
    assert 'role="alert"' in page.text
    assert "unknown GPU" in page.text
    assert "did you mean gcp?" in page.text
    assert "region &#39;mars-1&#39;" in page.text
    assert "must be spot or on-demand" in page.text
    assert "data-copy=" not in page.text


def test_burst_quote(console: Console) -> None:
    browser = console.signed_in("acme")
    page = browser.get("/burst?gpus=16&hours=2&gpu=H100")
    assert page.status_code == 200
    assert "plans for 16 GPUs, 2.0 h" in page.text
    plans = page.text.split('id="plans"')[1].split("</section>")[0]
    ranked = re.findall(r'data-copy="([^"]+)"', plans)
    assert 1 <= len(ranked) <= 20
    assert all(CATALOG.get(i).gpu.startswith("H100") for i in ranked)  # type: ignore[union-attr]
    assert "more plans" in plans
    assert '<input type="hidden" name="gpu" value="H100">' in page.text  # filters kept


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("gpus=abc", "<strong>GPUs</strong>: must be a whole number"),
        ("gpus=100", "<strong>GPUs</strong>: must be an integer between 1 and 72"),
        ("gpus=0", "<strong>GPUs</strong>: must be an integer between 1 and 72"),
        ("gpus=60", "<strong>GPUs</strong>: burst experiments are limited to 48 GPUs"),
        ("gpus=16&hours=soon", "<strong>Hours</strong>: must be a number of hours"),
        ("gpus=16&hours=-1", "<strong>Hours</strong>: must be &gt; 0"),
        ("gpus=16&hours=nan", "<strong>Hours</strong>: must be &gt; 0"),
    ],
)
def test_burst_quote_errors_are_shown(console: Console, query: str, message: str) -> None:
    page = console.signed_in("acme").get(f"/burst?{query}")
    assert page.status_code == 200
    assert 'role="alert"' in page.text and message in page.text
    assert 'id="plans"' not in page.text


def test_burst_quote_priority_warnings(console: Console) -> None:
    shape = CATALOG.shapes[0].id
    page = console.signed_in("acme").get(
        "/burst", params={"gpus": "1", "priority": f"{shape} nosuch:shape:x:spot"}
    )
    assert "Priority #2: ignored: no shape &#39;nosuch:shape:x:spot&#39;" in page.text
    plans = page.text.split('id="plans"')[1]
    assert re.findall(r'data-copy="([^"]+)"', plans)[0] == shape


def test_unknown_pages_are_pages_for_browsers_and_json_for_the_api(tmp_path: Path) -> None:
    from broker.api import Broker
    from broker.server.app import create_app
    from broker.server.service import Service, ServiceOptions

    broker = Broker(state_dir=tmp_path / "s", backend="sim")
    client = TestClient(create_app(Service(broker, ServiceOptions(workers=0, reconcile_every=0))))
    page = client.get("/experiments/a/b", headers={"Accept": "text/html"})
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Not found" in page.text
    api = client.get("/v1/nothing", headers={"Accept": "text/html"})
    assert api.status_code == 404 and api.json()["error"] == "NotFound"
    machine = client.get("/nothing")
    assert machine.status_code == 404 and machine.json()["errors"]
