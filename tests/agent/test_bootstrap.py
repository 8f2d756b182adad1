"""The node boot script: what it carries, how it quotes, its size per cloud, and what it does
when run (in a temporary directory, with a stand-in python3 that records how it is called and
a stand-in service on loopback that serves the agent, checking the node token)."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from broker.agent import bootstrap as bootstrap_module
from broker.agent.bootstrap import (
    AGENT_ROUTE,
    AWS_USER_DATA_LIMIT,
    AZURE_CUSTOM_DATA_LIMIT,
    BOOTSTRAP_LIMITS,
    FETCH_WINDOW,
    GCP_METADATA_VALUE_LIMIT,
    INSTALL_DIR,
    LOG_FILE,
    BootstrapTooLargeError,
    InvalidBootstrapValue,
    agent_sha256,
    bootstrap_script,
    bootstrap_size,
    check_bootstrap_size,
    packaged_agent,
    pinned_agent,
)
from providers.base import TAG_CLUSTER, LaunchRequest
from providers.errors import InvalidLaunchError, Reach
from providers.sim import SimDefaults, SimProvider, SimScenario
from shapes.catalog import Catalog
from tests.agent.bootrun import (
    AGENT,
    CLUSTER,
    NODE_TOKEN,
    SERVICE,
    agent_argv,
    route_of,
    run,
    script_for,
    serve,
    service_for,
    stub_python,
    tools_dir,
)
from tests.conftest import make_shape

PACKAGED = Path(bootstrap_module.__file__).with_name("agent.py")
CLOUDS = ("aws", "gcp", "azure")


def script(**overrides: object) -> str:
    values: dict[str, object] = {
        "service_url": SERVICE,
        "cluster_id": CLUSTER,
        "node_token": NODE_TOKEN,
        "agent_source": AGENT,
    }
    values.update(overrides)
    return bootstrap_script(**values)  # type: ignore[arg-type]


def assert_no_copy_of(agent: bytes, text: str) -> None:
    """Nothing of ``agent`` in ``text``: none of its lines, no gzip + base64 payload."""
    for line in agent.decode("utf-8", "replace").splitlines():
        if len(line.strip()) >= 30:  # a line distinctive enough to be the agent's
            assert line.strip() not in text, line
    assert not re.search(r"[A-Za-z0-9+/=]{100,}", text)  # no base64 block of any size
    assert "H4sI" not in text  # how gzip looks in base64


# -- what the script carries -----------------------------------------------------------------


def test_the_script_pins_the_agent_and_carries_no_copy_of_it() -> None:
    agent = AGENT + os.urandom(3000)  # any bytes at all, text or not
    text = script(agent_source=agent)

    assert text.startswith("#!/bin/bash\n")
    assert "\nset -eu\n" in text and "\numask 077\n" in text
    assert pinned_agent(text) == hashlib.sha256(agent).hexdigest() == agent_sha256(agent)
    assert f"\nAGENT_SHA256={pinned_agent(text)}\n" in text
    assert f'"$SERVICE{AGENT_ROUTE}" "$AGENT_SHA256"' in text  # the download is of that
    assert AGENT_ROUTE == "/v1/agent/agent.py"
    assert_no_copy_of(agent, text)
    with pytest.raises(ValueError, match="not a burst-broker boot script"):
        pinned_agent("#!/bin/sh\necho hi\n")


def test_the_same_inputs_make_the_same_script() -> None:
    """A launch retried with the same token must send the same UserData (EC2 compares)."""
    assert script() == script()
    assert script(agent_source=AGENT + b"#") != script()  # another agent: another pin


def test_a_node_installs_under_opt_and_logs_under_var_log() -> None:
    text = script()
    assert (INSTALL_DIR, LOG_FILE) == ("/opt/burst-broker", "/var/log/burst-broker-agent.log")
    assert "\nDIR=/opt/burst-broker\n" in text
    assert "\nLOG=/var/log/burst-broker-agent.log\n" in text
    assert f"\nSERVICE={SERVICE}\n" in text and f"\nCLUSTER={CLUSTER}\n" in text
    assert '"$PY" -I "$DIR/agent.py" --service "$SERVICE" --cluster "$CLUSTER"' in text
    assert '--token-file "$DIR/node-token" --cloud "$CLOUD" \\\n' in text
    assert '--output-copy "$LOG_DIR/burst-broker-command.log" </dev/null >>"$LOG" 2>&1 &' in text
    assert 'case "$(cat /sys/class/dmi/id/sys_vendor 2>/dev/null || true)" in' in text
    assert "SETSID=setsid; fi\n$SETSID nohup " in text
    assert f'"$LOG" {FETCH_WINDOW} || exit 1\n' in text and FETCH_WINDOW == 300  # 5 minutes


def test_a_trailing_slash_of_the_service_url_is_dropped() -> None:
    assert f"\nSERVICE={SERVICE}/v1-base\n" in script(service_url=SERVICE + "/v1-base/")


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_the_script_parses(shell: str, tmp_path: Path) -> None:
    """bash -n (the #! line), and dash -n: no bash-only syntax crept in."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    file = tmp_path / "boot.sh"
    file.write_text(script())
    checked = subprocess.run([shell, "-n", str(file)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_download_is_python_3_8_and_standard_library_only() -> None:
    """What runs on the node: the -c program, as the shell hands it over (in single
    quotes), parses as Python 3.8 and imports nothing outside the standard library."""
    text = script()
    program = text.partition('"$PY" -I -c \'')[2].partition("' \"$SERVICE")[0]
    assert program == bootstrap_module._FETCH  # the whole program, untouched by quoting
    tree = ast.parse(program, feature_version=(3, 8))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"hashlib", "os", "sys", "time", "urllib"}
    assert imported <= sys.stdlib_module_names


def test_the_node_token_is_the_only_secret_and_appears_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever cloud credentials the service process holds, none reaches the script."""
    secrets = {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLESESSIONTOKEN",
        "GOOGLE_APPLICATION_CREDENTIALS": "/secret/gcp-service-account.json",
        "AZURE_CLIENT_SECRET": "azure-client-secret-value-EXAMPLE",
        "AZURE_CLIENT_ID": "00000000-1111-2222-3333-444444444444",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    text = script()

    assert text.count(NODE_TOKEN) == 1
    for name, value in secrets.items():
        assert name not in text and value not in text
    assert_no_cloud_credential(text)


def assert_no_cloud_credential(text: str) -> None:
    patterns = [
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
        r"(?i)aws_secret_access_key|aws_session_token|x-amz-security-token",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",  # service-account keys, certificates
        r'"type"\s*:\s*"service_account"|"private_key_id"',
        r"\bya29\.[0-9A-Za-z_-]+",  # Google OAuth access tokens
        r"(?i)client_secret|AZURE_CLIENT|AccountKey=|SharedAccessSignature|[?&]sig=",
        r"\bbbt_[A-Za-z0-9_-]{20,}",  # a broker user token
    ]
    for pattern in patterns:
        assert not re.search(pattern, text), pattern


def test_errors_never_show_the_token() -> None:
    bad = "bbn_" + "s3cret" * 7 + " x"
    with pytest.raises(InvalidBootstrapValue) as caught:
        script(node_token=bad)
    assert "s3cret" not in str(caught.value)


def test_a_launch_request_never_shows_its_script() -> None:
    text = script()
    request = LaunchRequest(
        shape=make_shape(),
        zone="use1-az1",
        count=1,
        token="t1",
        tags={TAG_CLUSTER: CLUSTER},
        bootstrap=text,
    )
    assert request.bootstrap == text
    assert NODE_TOKEN not in repr(request) and NODE_TOKEN not in str(request)
    assert "bootstrap" not in repr(request)
    # no script (the default): nodes boot as the image does; an empty script is refused
    assert (
        LaunchRequest(shape=make_shape(), zone="z", count=1, token="t", tags={}).bootstrap is None
    )
    with pytest.raises(ValueError):
        LaunchRequest(shape=make_shape(), zone="z", count=1, token="t", tags={}, bootstrap="")


def test_the_simulated_cloud_accepts_a_script_and_ignores_it(tmp_path: Path) -> None:
    shape = make_shape(zones=("use1-az1",))
    sim = SimProvider(
        tmp_path / "state", Catalog.of([shape]), SimScenario(default=SimDefaults(latency_ms=0))
    )
    cluster = f"bb-{uuid.uuid4().hex[:12]}"
    request = LaunchRequest(
        shape=shape,
        zone="use1-az1",
        count=2,
        token=str(uuid.uuid4()),
        tags={TAG_CLUSTER: cluster},
        bootstrap=script(cluster_id=cluster),
    )
    nodes = sim.launch(request, timeout=5)
    assert len(nodes) == 2
    sim.terminate(nodes)


# -- values: checked, then quoted --------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "broker.example:8443",
        "ftp://broker.example",
        "file:///etc/passwd",
        "http://",
        "http://broker.example;reboot",
        "http://broker.example/$(id)",
        "http://broker.example/`id`",
        "http://broker.example/a b",
        "http://broker.example/'x'",
        'http://broker.example/"x"',
        "http://broker.example/a\nreboot",
        "http://broker.example|id",
        "http://broker.example&&id",
        "http://broker.example/${IFS}",
        "http://broker.example/?q=1",
        "http://broker.example/#top",
        "https://user:password@broker.example",  # a credential in the URL
        "https://broker.example:99999",
        "https://broker.example:0",
        "https://-broker.example",
        "http://broker.example/" + "a" * 2100,
    ],
)
def test_a_service_url_that_is_not_plain_http_is_refused(url: str) -> None:
    with pytest.raises(InvalidBootstrapValue, match="service URL"):
        script(service_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8080",
        "https://broker.example.com",
        "https://broker.example.com:443/prefix/path",
        "http://[fd00::5]:8080",
        "http://localhost:9000/~broker/%7Ex",
    ],
)
def test_plain_service_urls_are_taken(url: str) -> None:
    assert f"\nSERVICE={shlex.quote(url)}\n" in script(service_url=url)


@pytest.mark.parametrize(
    "cluster",
    ["", "bb-", "bb-XYZ", "BB-12ab", "bb-12ab;reboot", "bb-12ab\n", "cl-12ab", "bb-12 ab", "$(id)"],
)
def test_a_cluster_id_that_is_not_the_brokers_is_refused(cluster: str) -> None:
    with pytest.raises(InvalidBootstrapValue, match="cluster id"):
        script(cluster_id=cluster)


@pytest.mark.parametrize(
    "token",
    ["", "bbn_", "bbt_" + "a" * 43, "bbn_a b", "bbn_$(id)", "bbn_a'b", "bbn_a\nb", "bbn_a;b"],
)
def test_a_node_token_of_another_form_is_refused(token: str) -> None:
    with pytest.raises(InvalidBootstrapValue, match="node token"):
        script(node_token=token)


@pytest.mark.parametrize("path", ["", "relative/dir", "/", "/opt/../etc", "/opt/x y", "/opt/$x"])
def test_install_paths_must_be_plain(path: str) -> None:
    with pytest.raises(InvalidBootstrapValue, match="plain absolute path"):
        script(install_dir=path)
    with pytest.raises(InvalidBootstrapValue, match="plain absolute path"):
        script(log_file=path)


def test_every_value_is_shell_quoted(tmp_path: Path) -> None:
    """A URL with characters shlex quotes ('~', '%') reaches the download and the agent
    byte for byte."""
    url = service_for(tmp_path) + "/~team/%24x"
    serve(tmp_path, AGENT)
    text = script_for(tmp_path, service_url=url)
    assert f"\nSERVICE={shlex.quote(url)}\n" in text and shlex.quote(url) != url

    booted = run(text, tmp_path)

    assert booted.result.returncode == 0, booted.result.stderr
    assert route_of(tmp_path).paths == [urlsplit(url).path + AGENT_ROUTE]
    (call,) = booted.calls
    assert call.argv[1:] == agent_argv(booted.install_dir, service=url)


def _files_in(directory: Path) -> SimpleNamespace:
    """Stands in for importlib.resources: the package's files are ``directory``'s."""
    return SimpleNamespace(files=lambda _package: directory)


def test_the_packaged_agent_is_read_from_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "agent.py").write_bytes(b"print('packaged')\n")
    monkeypatch.setattr(bootstrap_module, "resources", _files_in(tmp_path))
    assert packaged_agent() == b"print('packaged')\n"
    assert pinned_agent(script(agent_source=None)) == agent_sha256(b"print('packaged')\n")
    assert agent_sha256() == agent_sha256(b"print('packaged')\n")
    with pytest.raises(InvalidBootstrapValue, match="empty"):
        script(agent_source=b"")


def test_a_missing_packaged_agent_is_said_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bootstrap_module, "resources", _files_in(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"broker/agent/agent\.py"):
        script(agent_source=None)


@pytest.mark.skipif(not PACKAGED.exists(), reason="broker/agent/agent.py is not written yet")
def test_the_script_for_the_real_agent_is_far_under_every_clouds_limit() -> None:
    agent = PACKAGED.read_bytes()
    text = script(agent_source=None)
    assert pinned_agent(text) == hashlib.sha256(agent).hexdigest()
    assert_no_copy_of(agent, text)
    assert_no_cloud_credential(text)
    assert len(text.encode()) < 6144  # the agent is ~70 KB; the script a few KB, whatever it is
    for cloud in CLOUDS:
        check_bootstrap_size(text, cloud)
        # AWS (16 KB, bytes) and Azure (64 KB of base64) both with room to spare
        assert bootstrap_size(text, cloud) < min(BOOTSTRAP_LIMITS[cloud] // 3, 6 * 1024), cloud


def test_the_scripts_size_does_not_grow_with_the_agent() -> None:
    small, huge = script(agent_source=b"x"), script(agent_source=os.urandom(1_000_000))
    assert len(huge) - len(small) == len("1000000") - len("1")  # the size in a comment
    for cloud in CLOUDS:
        check_bootstrap_size(huge, cloud)


# -- size limits per cloud -------------------------------------------------------------------


def test_the_limits_are_the_clouds() -> None:
    assert BOOTSTRAP_LIMITS == {
        "aws": AWS_USER_DATA_LIMIT,
        "gcp": GCP_METADATA_VALUE_LIMIT,
        "azure": AZURE_CUSTOM_DATA_LIMIT,
    }
    assert AWS_USER_DATA_LIMIT == 16 * 1024  # UserData, before base64
    assert GCP_METADATA_VALUE_LIMIT == 256 * 1024  # one metadata value
    assert AZURE_CUSTOM_DATA_LIMIT == 65_535  # customData, counted on its base64 text


@pytest.mark.parametrize(
    ("cloud", "largest"),
    [
        ("aws", "x" * AWS_USER_DATA_LIMIT),
        ("gcp", "x" * GCP_METADATA_VALUE_LIMIT),
        ("azure", "x" * 49_149),  # base64: 65,532 characters
    ],
)
def test_each_limit_is_enforced_at_its_edge(cloud: str, largest: str) -> None:
    check_bootstrap_size(largest, cloud)  # at the limit: fine
    with pytest.raises(BootstrapTooLargeError) as caught:
        check_bootstrap_size(largest + "xxx", cloud)
    error = caught.value
    assert isinstance(error, InvalidLaunchError)
    assert (error.provider, error.code) == (cloud, "BootstrapTooLarge")
    assert f"{BOOTSTRAP_LIMITS[cloud]:,}" in error.message
    # too large for one cloud is not a wrong request: another cloud may take it
    assert error.reach is Reach.PROVIDER and error.local


def test_sizes_count_bytes_as_each_cloud_does() -> None:
    text = "é" * 10  # 20 bytes of UTF-8
    assert bootstrap_size(text, "aws") == bootstrap_size(text, "gcp") == 20
    assert bootstrap_size(text, "azure") == len(base64.b64encode(text.encode())) == 28
    check_bootstrap_size("x" * 10**6, "sim")  # no limit: nothing to check
    check_bootstrap_size(None, "aws")  # no script: nothing to check


def test_a_script_too_large_for_aws_is_taken_by_gcp_and_azure() -> None:
    text = script() + "#" * AWS_USER_DATA_LIMIT  # a script padded past 16 KB
    with pytest.raises(BootstrapTooLargeError, match="UserData"):
        check_bootstrap_size(text, "aws")
    check_bootstrap_size(text, "gcp")
    check_bootstrap_size(text, "azure")
    huge = script() + "#" * 50_000
    with pytest.raises(BootstrapTooLargeError, match="customData"):
        check_bootstrap_size(huge, "azure")
    check_bootstrap_size(huge, "gcp")


# -- running it ------------------------------------------------------------------------------


def test_the_script_downloads_the_agent_and_starts_it_detached(tmp_path: Path) -> None:
    booted = run(script_for(tmp_path), tmp_path)

    assert booted.result.returncode == 0, booted.result.stderr
    (call,) = booted.calls
    assert call.argv[0] == str(tmp_path / "bin" / "python3")
    assert call.argv[1:] == agent_argv(booted.install_dir)
    assert call.session == call.pid  # setsid: its own session, no controlling terminal
    assert call.cwd == str(booted.install_dir)
    assert (booted.install_dir / "agent.pid").read_text().strip() == str(call.pid)
    # one download, by the python the script chose, with the node token from its file
    assert booted.fetched_with == [str(tmp_path / "bin" / "python3")]
    assert route_of(tmp_path).gets == [f"Bearer {NODE_TOKEN}"]
    # the files
    assert (booted.install_dir / "agent.py").read_bytes() == AGENT
    token = booted.install_dir / "node-token"
    assert token.read_text() == NODE_TOKEN
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE((booted.install_dir / "agent.py").stat().st_mode) == 0o600
    assert stat.S_IMODE(booted.install_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in booted.install_dir.iterdir()) == [
        "agent.pid",
        "agent.py",
        "node-token",
    ]
    # the log: what the script did and the agent's own output; never the token
    log = booted.log
    assert f"installing the node agent of cluster {CLUSTER}" in log
    assert f"downloaded the agent ({len(AGENT)} bytes, sha256 {agent_sha256(AGENT)})" in log
    assert "started the agent with" in log and "stand-in python started" in log
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ burst-broker-bootstrap: downl", log, re.M)
    assert stat.S_IMODE(booted.log_file.stat().st_mode) == 0o600
    for shown in (log, booted.result.stdout, booted.result.stderr):
        assert NODE_TOKEN not in shown


def test_running_it_again_replaces_the_agent_or_keeps_the_one_in_place(tmp_path: Path) -> None:
    """GCE runs startup-script at every boot: a second run overwrites, it does not fail; an
    agent already in place with the pinned hash starts even when the service is away."""
    first = run(script_for(tmp_path, agent_source=b"print(1)\n"), tmp_path)
    assert (first.install_dir / "agent.py").read_bytes() == b"print(1)\n"
    token = first.install_dir / "node-token"
    token.chmod(0o644)  # loosened since: the next boot tightens it again
    text = script_for(tmp_path)
    second = run(text, tmp_path, expect_calls=2)

    assert second.result.returncode == 0, second.result.stderr
    assert len(second.calls) == 2
    assert (second.install_dir / "agent.py").read_bytes() == AGENT
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(route_of(tmp_path).gets) == 1

    route_of(tmp_path).status = 503  # the service is down at the next reboot
    third = run(text, tmp_path, expect_calls=3)

    assert third.result.returncode == 0, third.result.stderr
    assert len(third.calls) == 3 and len(route_of(tmp_path).gets) == 1  # no download
    assert "the agent is already in place" in third.log


def test_an_old_python3_is_passed_over_for_a_newer_python3_n(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    stub_python(bin_dir, tmp_path / "calls", "python3", new=False)
    stub_python(bin_dir, tmp_path / "calls", "python3.9")
    path = [bin_dir, tools_dir(tmp_path / "tools")]

    booted = run(script_for(tmp_path), tmp_path, path=path)

    assert booted.result.returncode == 0, booted.result.stderr
    (call,) = booted.calls
    assert call.argv[0] == str(bin_dir / "python3.9")
    assert call.argv[1:] == agent_argv(booted.install_dir)
    assert booted.fetched_with == [str(bin_dir / "python3.9")]  # the download too


def test_without_python_3_8_the_script_refuses_clearly(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    stub_python(bin_dir, tmp_path / "calls", "python3", new=False)  # a 3.6
    path = [bin_dir, tools_dir(tmp_path / "tools")]  # and no python of this machine

    booted = run(script_for(tmp_path), tmp_path, path=path, expect_calls=0)

    assert booted.result.returncode == 1
    assert booted.calls == []  # the agent was never started
    assert booted.fetched_with == [] and route_of(tmp_path).gets == []  # nor downloaded
    assert "refusing to start the agent: no python3 >= 3.8 on this node" in booted.log
    assert f"cluster {CLUSTER} cannot run here" in booted.log
    assert "no python3 >= 3.8" in booted.result.stderr  # also where cloud-init keeps output
    assert not (booted.install_dir / "agent.pid").exists()


def test_an_agent_that_is_not_the_pinned_one_is_never_started(tmp_path: Path) -> None:
    text = script_for(tmp_path)
    route_of(tmp_path).agent = AGENT + b"\nimport os; os.system('id')\n"  # altered on the way

    booted = run(text, tmp_path, expect_calls=0)

    assert booted.result.returncode == 1
    assert booted.calls == []
    assert not (booted.install_dir / "agent.py").exists()
    assert not (booted.install_dir / "agent.py.new").exists()
    wrong = agent_sha256(route_of(tmp_path).agent)
    line = (
        f"refusing to start the agent: {service_for(tmp_path)}{AGENT_ROUTE} sent "
        f"{len(route_of(tmp_path).agent)} bytes of sha256 {wrong}, "
        f"not the pinned {agent_sha256(AGENT)}"
    )
    assert line in booted.log
    assert line in booted.result.stderr
    assert len(route_of(tmp_path).gets) == 1  # not retried: the same bytes would come back


def test_a_service_not_answering_yet_is_retried_with_backoff(tmp_path: Path) -> None:
    text = script_for(tmp_path)
    route_of(tmp_path).failures = 2  # 503, 503, then the agent

    started = time.monotonic()
    booted = run(text, tmp_path)

    assert booted.result.returncode == 0, booted.result.stderr
    assert time.monotonic() - started >= 3  # waited 1 s, then 2 s
    assert len(booted.calls) == 1
    assert (booted.install_dir / "agent.py").read_bytes() == AGENT
    assert route_of(tmp_path).gets == [f"Bearer {NODE_TOKEN}"] * 3
    log = booted.log
    assert "no agent yet (try 1: HTTP 503 Service Unavailable); trying again in 1 s" in log
    assert "no agent yet (try 2: HTTP 503 Service Unavailable); trying again in 2 s" in log
    assert "downloaded the agent" in log


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def test_an_unreachable_service_is_retried_then_given_up_clearly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    text = script_for(tmp_path, service_url=url, fetch_window=2)

    started = time.monotonic()
    booted = run(text, tmp_path, expect_calls=0)

    assert booted.result.returncode == 1
    assert 2 <= time.monotonic() - started < 8
    assert booted.calls == []
    assert not (booted.install_dir / "agent.py").exists()
    log = booted.log
    assert log.count("no agent yet (try ") >= 2  # retried
    assert re.search(
        rf"giving up on {re.escape(url + AGENT_ROUTE)} after \d+ tries in 2 s "
        r"\(last: URLError: .*refused.*\): the agent is not started",
        log,
    ), log
    assert "giving up on" in booted.result.stderr


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (401, "HTTP 401 Unauthorized (node token refused: has the cluster ended?)"),
        (403, "HTTP 403 Forbidden (node token refused: has the cluster ended?)"),
        (404, "HTTP 404 Not Found"),
    ],
)
def test_a_refusal_is_not_retried(tmp_path: Path, status: int, says: str) -> None:
    text = script_for(tmp_path)
    route_of(tmp_path).status = status

    booted = run(text, tmp_path, expect_calls=0)

    assert booted.result.returncode == 1
    assert booted.calls == [] and len(route_of(tmp_path).gets) == 1
    assert f"refusing to start the agent: {service_for(tmp_path)}{AGENT_ROUTE} answered {says}" in (
        booted.log
    )


def test_a_wrong_token_is_refused_by_the_service(tmp_path: Path) -> None:
    text = script_for(tmp_path)
    serve(tmp_path, AGENT, token="bbn_" + "another" * 6)  # the service knows another token

    booted = run(text, tmp_path, expect_calls=0)

    assert booted.result.returncode == 1 and booted.calls == []
    assert route_of(tmp_path).gets == [f"Bearer {NODE_TOKEN}"]
    assert "answered HTTP 401" in booted.log and NODE_TOKEN not in booted.log


def test_the_token_never_follows_a_redirect(tmp_path: Path) -> None:
    """A redirect to another place gets the request without the node token."""
    elsewhere = tmp_path / "elsewhere"
    trap = serve(elsewhere, AGENT)
    text = script_for(tmp_path)
    route_of(tmp_path).location = service_for(elsewhere) + AGENT_ROUTE

    booted = run(text, tmp_path, expect_calls=0)

    assert booted.result.returncode == 1 and booted.calls == []
    assert route_of(tmp_path).gets == [f"Bearer {NODE_TOKEN}"]
    assert trap.gets == [None]  # followed, but without the token: refused there
    assert "answered HTTP 401" in booted.log


def test_a_fetch_window_out_of_range_is_refused() -> None:
    for window in (0, -1, 86_401, True):
        with pytest.raises(InvalidBootstrapValue, match="fetch window"):
            script(fetch_window=window)
    assert '"$LOG" 1 || exit 1\n' in script(fetch_window=1)


# -- with the real agent ---------------------------------------------------------------------


def _running(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


@pytest.mark.skipif(not PACKAGED.exists(), reason="broker/agent/agent.py is not written yet")
def test_the_real_agent_is_downloaded_started_and_calls_the_service_with_the_node_token(
    tmp_path: Path,
) -> None:
    """The script with the packaged agent and this machine's python: it downloads the agent
    from the service, the agent reads the token file and registers at the service URL for
    the cluster (refused: it exits 3)."""
    text = script_for(tmp_path, agent_source=None)  # the service serves the packaged agent
    route = route_of(tmp_path)
    search = [Path(sys.executable).parent, *map(Path, os.environ["PATH"].split(os.pathsep))]

    booted = run(text, tmp_path, path=search, expect_calls=0)
    assert booted.result.returncode == 0, booted.result.stderr
    assert (booted.install_dir / "agent.py").read_bytes() == PACKAGED.read_bytes()
    pid = int((booted.install_dir / "agent.pid").read_text())
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not route.posts or _running(pid)):
            time.sleep(0.05)
        assert not _running(pid), "the agent did not end after its token was refused"
    finally:
        if _running(pid):
            os.killpg(pid, signal.SIGKILL)  # its own session and group (setsid)

    assert route.gets == [f"Bearer {NODE_TOKEN}"]
    first = route.posts[0]
    assert first["path"] == f"/{service_for(tmp_path).rsplit('/', 1)[1]}/v1/agent/register"
    assert first["auth"] == f"Bearer {NODE_TOKEN}"
    assert json.loads(first["body"])["cluster_id"] == CLUSTER
    log = booted.log
    assert "downloaded the agent" in log
    assert "refused the node token" in log
    assert NODE_TOKEN not in log
