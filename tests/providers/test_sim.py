"""The simulated cloud: the provider contract, scenario files, scripted errors, capacity,
partial gangs, lost launches, and one cloud shared by several processes."""

from __future__ import annotations

import ipaddress
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from providers.base import TAG_CLUSTER, LaunchRequest, NodeState, Provider
from providers.errors import (
    AuthError,
    CallTimeoutError,
    CapacityError,
    ConfigError,
    GlobalQuotaError,
    InvalidLaunchError,
    ProviderError,
    QuotaError,
    Reach,
    ScenarioError,
    ThrottledError,
    TransientError,
)
from providers.sim import (
    DB_FILENAME,
    ERROR_KINDS,
    SimDefaults,
    SimProvider,
    SimScenario,
    SimShapeRule,
    load_scenario,
    sim_exists,
)
from shapes.catalog import Catalog, load_catalog
from shapes.errors import BrokerError, Exit
from shapes.model import Shape
from tests.conftest import make_shape
from tests.providers.contract import ProviderContract, ids, new_cluster_id

REPO = Path(__file__).resolve().parents[2]

P5_SPOT = make_shape(
    "p5.48xlarge",
    gpu="H100",
    price=30.0,
    provisioning="spot",
    zones=("use1-az1", "use1-az2", "use1-az4"),
)
P5 = make_shape("p5.48xlarge", gpu="H100", price=55.0, zones=P5_SPOT.zones)
G6 = make_shape("g6.xlarge", gpu="L4", gpus=1, price=0.8)
A3_SPOT = make_shape(
    "a3-highgpu-8g",
    provider="gcp",
    region="us-central1",
    gpu="H100",
    price=30.0,
    provisioning="spot",
    zones=("us-central1-a", "us-central1-b"),
)
CATALOG = Catalog.of([P5_SPOT, P5, G6, A3_SPOT])


def sim(tmp_path: Path, toml: str | None = None, **defaults: object) -> SimProvider:
    """A sim on ``tmp_path/state`` with this scenario (TOML text, or [default] keys)."""
    if toml is not None:
        scenario = SimScenario.from_toml_text(textwrap.dedent(toml))
    else:
        scenario = SimScenario(default=SimDefaults.model_validate(defaults))
    return SimProvider(tmp_path / "state", CATALOG, scenario)


def request(
    shape: Shape = P5_SPOT,
    zone: str | None = None,
    count: int = 1,
    *,
    cluster: str | None = None,
    token: str | None = None,
) -> LaunchRequest:
    return LaunchRequest(
        shape=shape,
        zone=zone or shape.zones[0],
        count=count,
        token=token or str(uuid.uuid4()),
        tags={"broker": "test", TAG_CLUSTER: cluster or new_cluster_id(), "broker-attempt": "1"},
    )


# -- the contract ----------------------------------------------------------------------------


class TestSimContract(ProviderContract):
    def make_provider(self, tmp_path: Path) -> Provider:
        return SimProvider(tmp_path / "state", CATALOG)

    def provider_with_no_capacity(self, tmp_path: Path) -> Provider:
        return sim(tmp_path, capacity_nodes=0)


class TestPartialSimContract(TestSimContract):
    """A non-atomic cloud: a shortfall keeps what fitted (the contract's other branch)."""

    all_or_nothing = False

    def provider_with_no_capacity(self, tmp_path: Path) -> Provider:
        return sim(tmp_path, capacity_nodes=self.gang_size - 1, partial=True)


# -- scenario files --------------------------------------------------------------------------

SPEC_EXAMPLE = """
[default]            # applies to every shape not matched below
capacity_nodes = 1000  # per (shape, zone): max nodes alive at once
latency_ms = 0         # per launch call
[shapes."aws:us-east-1:p5.48xlarge:spot"]     # exact id (case-insensitive) or an fnmatch glob
capacity_nodes = 0                             # fewer than asked -> CapacityError
errors = ["throttle", "throttle"]             # consumed one per launch call, then normal
zones = { "use1-az4" = 0 }                     # optional per-zone capacity override
partial = true
terminate_errors = ["server_error"]
"""


def test_default_scenario() -> None:
    scenario = load_scenario(None)
    assert scenario == SimScenario()
    rule = scenario.rule_for(P5_SPOT.id)
    assert (rule.capacity_nodes, rule.latency_ms, rule.errors, rule.partial) == (1000, 0, (), False)


def test_scenario_file_parses(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(SPEC_EXAMPLE)
    scenario = load_scenario(path)
    assert scenario == SimScenario.from_toml(str(path))
    assert scenario.shapes["aws:us-east-1:p5.48xlarge:spot"] == SimShapeRule(
        capacity_nodes=0,
        errors=("throttle", "throttle"),
        zones={"use1-az4": 0},
        partial=True,
        terminate_errors=("server_error",),
    )
    rule = scenario.rule_for("aws:us-east-1:p5.48xlarge:spot")
    assert (rule.capacity("use1-az4"), rule.capacity("use1-az1"), rule.latency_ms) == (0, 0, 0)
    assert scenario.rule_for(P5.id).capacity_nodes == 1000  # not matched: [default]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[default]\ncapacity = 5\n", r"default\.capacity: unknown key 'capacity'.*\(line 2\)"),
        (
            '[default]\nlatency_ms = 1\n[shapes."aws:*"]\ncapacity_nodes = 1\nretries = 2\n',
            r"shapes\.\"aws:\*\"\.retries: unknown key 'retries'.*\(line 5\)",
        ),
        ("[defaults]\ncapacity_nodes = 1\n", r"unknown key 'defaults'.*\(line 1\)"),
        (
            '[shapes."aws:*"]\nerrors = ["throttle", "trottle"]\n',
            r"shapes\.\"aws:\*\"\.errors\[1\]: unknown error kind 'trottle'.*\(line 2\)",
        ),
        (
            '[shapes."aws:*"]\nterminate_errors = ["oops"]\n',
            r"terminate_errors\[0\]: unknown error kind 'oops'",
        ),
        ("[default]\ncapacity_nodes = -1\n", r"default\.capacity_nodes: .*greater than or equal"),
        ('[default]\ncapacity_nodes = "3"\n', r"default\.capacity_nodes: .*integer"),
        ('[default]\npartial = "yes"\n', r"default\.partial: .*boolean"),
        ('[default]\nerrors = "throttle"\n', r"default\.errors: .*tuple"),
        ('[shapes."aws:*"]\nzones = { "use1-az4" = -2 }\n', r"zones\.use1-az4: .*line 2"),
        ('[shapes."aws:us-east-1:p5.48xlarge"]\n', r"'aws:us-east-1:p5\.48xlarge' is not a shape"),
        ("[default\n", r"invalid TOML.*line 1"),
        (
            "[default]\nlatency_ms = inf\n",
            r"default\.latency_ms: .*finite number.*2",
        ),
        (
            "[default]\nlatency_ms = nan\n",
            r"default\.latency_ms: .*finite number.*2",
        ),
        ("[default]\nlatency_ms = -inf\n", r"default\.latency_ms: .*finite number"),
        ("[default]\nlatency_ms = -5\n", r"default\.latency_ms: .*greater than or equal to 0"),
        (
            '[default]\nlatency_ms = "5"\n',
            r"latency_ms: .*valid number \(got '5'\)",
        ),
        (
            '[shapes."aws:*"]\nlatency_ms = inf\n',
            r"shapes\.\"aws:\*\"\.latency_ms: .*finite",
        ),
    ],
)
def test_bad_scenarios_name_the_file_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError, match=expected) as caught:
        SimScenario.from_toml_text(text, source="bad.toml")
    assert str(caught.value).startswith("sim scenario bad.toml: ")


def test_a_bad_scenario_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latency.toml"
    path.write_text("[default]\nlatency_ms = inf\n")
    with pytest.raises(ScenarioError, match=re.escape(str(path)) + r".*latency_ms") as caught:
        load_scenario(path)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, BrokerError)
    assert caught.value.exit_code == Exit.INVALID


def test_a_missing_scenario_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"cannot read sim scenario .*missing\.toml"):
        load_scenario(tmp_path / "missing.toml")


def test_first_matching_entry_in_file_order_wins() -> None:
    scenario = SimScenario.from_toml_text(
        """
        [shapes."aws:*:*:spot"]
        capacity_nodes = 1
        [shapes."aws:us-east-1:p5.48xlarge:spot"]
        capacity_nodes = 2
        [shapes."aws:us-east-1:p5.48xlarge:on-demand"]
        capacity_nodes = 3
        [shapes."aws:*"]
        capacity_nodes = 4
        latency_ms = 7
        """.replace("        ", "")
    )
    assert scenario.entry_for(P5_SPOT.id) == "aws:*:*:spot"
    assert scenario.rule_for(P5_SPOT.id).capacity_nodes == 1  # the glob comes first
    assert scenario.rule_for(P5.id).capacity_nodes == 3  # the exact id comes before aws:*
    assert scenario.rule_for(P5.id).latency_ms == 0  # not from aws:*: only one entry applies
    assert scenario.rule_for(G6.id).capacity_nodes == 4
    assert scenario.rule_for(A3_SPOT.id).capacity_nodes == 1000
    assert scenario.entry_for(A3_SPOT.id) is None


def test_ids_and_globs_match_case_insensitively() -> None:
    scenario = SimScenario.from_toml_text(
        '[shapes."AWS:US-EAST-1:P5.48XLARGE:SPOT"]\ncapacity_nodes = 5\n'
        '[shapes."GCP:*:*:SPOT"]\ncapacity_nodes = 6\n'
    )
    assert scenario.rule_for("aws:us-east-1:p5.48xlarge:spot").capacity_nodes == 5
    assert scenario.rule_for("Aws:Us-East-1:p5.48XLarge:Spot").capacity_nodes == 5
    assert scenario.rule_for(A3_SPOT.id).capacity_nodes == 6


def test_omitted_keys_fall_back_to_default() -> None:
    scenario = SimScenario.from_toml_text(
        '[default]\ncapacity_nodes = 7\nlatency_ms = 3\nzones = { "use1-az2" = 1 }\n'
        'errors = ["quota"]\n[shapes."aws:*"]\nerrors = ["auth"]\n'
    )
    rule = scenario.rule_for(P5.id)
    assert (rule.capacity("use1-az1"), rule.capacity("use1-az2"), rule.latency_ms) == (7, 1, 3)
    assert rule.errors == ("auth",)
    assert scenario.rule_for(A3_SPOT.id).errors == ("quota",)


# -- scripted errors -------------------------------------------------------------------------

EXPECTED_ERRORS: dict[str, tuple[type[ProviderError], Reach, str]] = {
    "capacity": (CapacityError, Reach.ZONE, "InsufficientCapacity"),
    "quota": (QuotaError, Reach.REGION, "QuotaExceeded"),
    "throttle": (ThrottledError, Reach.CALL, "Throttling"),
    "server_error": (TransientError, Reach.CALL, "InternalError"),
    "timeout": (CallTimeoutError, Reach.CALL, "RequestTimeout"),
    "auth": (AuthError, Reach.PROVIDER, "AuthFailure"),
    "global_quota": (GlobalQuotaError, Reach.PROVIDER, "GlobalQuotaExceeded"),
    "invalid": (InvalidLaunchError, Reach.REQUEST, "InvalidParameterValue"),
}


def test_every_error_kind_is_covered() -> None:
    assert set(EXPECTED_ERRORS) == set(ERROR_KINDS)


@pytest.mark.parametrize("kind", sorted(EXPECTED_ERRORS))
def test_error_kind_raises_its_type_once_then_normal(tmp_path: Path, kind: str) -> None:
    cls, reach, code = EXPECTED_ERRORS[kind]
    provider = sim(tmp_path, f'[shapes."{P5_SPOT.id}"]\nerrors = ["{kind}"]\n')
    req = request(count=2)

    with pytest.raises(ProviderError) as caught:
        provider.launch(req, timeout=5)

    assert type(caught.value) is cls
    assert (caught.value.reach, caught.value.code, caught.value.provider) == (reach, code, "sim")
    assert provider.all_nodes(include_terminated=True) == []
    nodes = provider.launch(req, timeout=5)  # the same token: now the cloud behaves
    assert [n.state for n in nodes] == [NodeState.RUNNING] * 2
    assert [c["outcome"] for c in provider.calls()] == [code, "ok"]


def test_errors_are_consumed_one_per_launch_call(tmp_path: Path) -> None:
    provider = sim(tmp_path, '[shapes."aws:*:*:spot"]\nerrors = ["throttle", "quota"]\n')
    with pytest.raises(ThrottledError):
        provider.launch(request(P5_SPOT), timeout=5)
    provider.launch(request(P5), timeout=5)  # another entry ([default]): nothing scripted
    with pytest.raises(QuotaError):  # the entry's list is shared by every shape it matches
        provider.launch(request(P5_SPOT, count=4), timeout=5)
    assert len(provider.launch(request(P5_SPOT, count=4), timeout=5)) == 4
    again = SimProvider(tmp_path / "state", CATALOG, provider.scenario)
    assert len(again.launch(request(P5_SPOT), timeout=5)) == 1  # used up, in the db


def test_editing_an_error_list_starts_it_afresh(tmp_path: Path) -> None:
    first = sim(tmp_path, f'[shapes."{P5_SPOT.id}"]\nerrors = ["throttle"]\n')
    with pytest.raises(ThrottledError):
        first.launch(request(), timeout=5)
    edited = sim(tmp_path, f'[shapes."{P5_SPOT.id}"]\nerrors = ["quota"]\n')
    with pytest.raises(QuotaError):
        edited.launch(request(), timeout=5)


# -- invalid requests and idempotency --------------------------------------------------------


def test_shape_outside_the_catalog_or_zone_outside_the_shape_is_invalid(tmp_path: Path) -> None:
    provider = SimProvider(tmp_path / "state", CATALOG)
    unknown = make_shape("p4d.24xlarge", zones=("use1-az1",))
    for req in (request(unknown), request(P5_SPOT, zone="use1-az9")):
        with pytest.raises(InvalidLaunchError) as caught:
            provider.launch(req, timeout=5)
        assert caught.value.reach is Reach.REQUEST
    assert provider.all_nodes(include_terminated=True) == []


def test_token_reused_for_another_gang_is_rejected(tmp_path: Path) -> None:
    provider = SimProvider(tmp_path / "state", CATALOG)
    token = str(uuid.uuid4())
    provider.launch(request(count=2, token=token), timeout=5)
    with pytest.raises(InvalidLaunchError) as caught:
        provider.launch(request(count=3, token=token), timeout=5)
    assert caught.value.code == "IdempotentParameterMismatch"
    assert len(provider.all_nodes()) == 2


def test_token_of_a_terminated_gang_launches_anew(tmp_path: Path) -> None:
    provider = SimProvider(tmp_path / "state", CATALOG)
    req = request(count=2)
    first = provider.launch(req, timeout=5)
    provider.terminate(first)
    second = provider.launch(req, timeout=5)
    assert not set(ids(first)) & set(ids(second))
    assert [c["outcome"] for c in provider.calls() if c["op"] == "launch"] == ["ok", "ok"]


def test_repeated_token_is_recorded_as_idempotent(tmp_path: Path) -> None:
    provider = SimProvider(tmp_path / "state", CATALOG)
    req = request(count=2)
    nodes = provider.launch(req, timeout=5)
    assert provider.launch(req, timeout=5) == nodes
    calls = provider.calls()
    assert [(c["op"], c["outcome"], c["nodes"]) for c in calls] == [
        ("launch", "ok", ids(nodes)),
        ("launch", "idempotent", []),
    ]
    assert (calls[0]["shape_id"], calls[0]["zone"], calls[0]["token"]) == (
        P5_SPOT.id,
        "use1-az1",
        req.token,
    )


# -- capacity --------------------------------------------------------------------------------


def test_capacity_is_per_shape_and_zone(tmp_path: Path) -> None:
    provider = sim(tmp_path, capacity_nodes=2)
    held = provider.launch(request(zone="use1-az1", count=2), timeout=5)
    with pytest.raises(CapacityError) as caught:
        provider.launch(request(zone="use1-az1"), timeout=5)
    assert caught.value.reach is Reach.ZONE
    assert "room for 0" in caught.value.message
    provider.launch(request(zone="use1-az2", count=2), timeout=5)  # another zone
    provider.launch(request(P5, zone="use1-az1", count=2), timeout=5)  # another shape
    with pytest.raises(CapacityError):
        provider.launch(request(zone="use1-az2", count=1), timeout=5)

    provider.terminate(held[:1])  # terminating frees capacity
    provider.launch(request(zone="use1-az1"), timeout=5)
    assert len(provider.all_nodes()) == 6


def test_zone_override(tmp_path: Path) -> None:
    provider = sim(
        tmp_path,
        f"""
        [default]
        capacity_nodes = 1
        [shapes."{P5_SPOT.id}"]
        zones = {{ "use1-az4" = 0, "use1-az2" = 3 }}
        """,
    )
    with pytest.raises(CapacityError):
        provider.launch(request(zone="use1-az4"), timeout=5)
    assert len(provider.launch(request(zone="use1-az2", count=3), timeout=5)) == 3
    assert len(provider.launch(request(zone="use1-az1"), timeout=5)) == 1
    with pytest.raises(CapacityError):
        provider.launch(request(zone="use1-az1"), timeout=5)


def test_partial_gang_keeps_exactly_what_fits(tmp_path: Path) -> None:
    provider = sim(tmp_path, f'[shapes."{P5_SPOT.id}"]\ncapacity_nodes = 3\npartial = true\n')
    provider.launch(request(count=1), timeout=5)
    req = request(count=4)

    with pytest.raises(CapacityError, match="partial gang"):
        provider.launch(req, timeout=5)

    left = provider.describe(req.tags[TAG_CLUSTER])
    assert len(left) == 2
    assert all(n.tags == req.tags and n.state is NodeState.RUNNING for n in left)
    assert provider.calls()[-1]["nodes"] == ids(left)
    with pytest.raises(CapacityError, match="new token"):  # same token: same outcome
        provider.launch(req, timeout=5)
    assert ids(provider.describe(req.tags[TAG_CLUSTER])) == ids(left)
    with pytest.raises(CapacityError):  # full now: a partial gang of nothing
        provider.launch(request(count=1), timeout=5)
    assert len(provider.all_nodes()) == 3


# -- latency and lost launches ---------------------------------------------------------------


def test_latency_is_waited_out(tmp_path: Path) -> None:
    provider = sim(tmp_path, latency_ms=40)
    start = time.monotonic()
    nodes = provider.launch(request(count=2), timeout=5)
    assert time.monotonic() - start >= 0.04
    assert {n.state for n in nodes} == {NodeState.RUNNING}


def test_latency_beyond_timeout_is_a_lost_launch(tmp_path: Path) -> None:
    provider = sim(tmp_path, latency_ms=300, capacity_nodes=2)
    req = request(count=2)

    start = time.monotonic()
    with pytest.raises(CallTimeoutError) as caught:
        provider.launch(req, timeout=0.02)
    assert time.monotonic() - start < 0.25
    assert caught.value.reach is Reach.CALL

    pending = provider.describe(req.tags[TAG_CLUSTER])
    assert [n.state for n in pending] == [NodeState.PENDING] * 2
    assert all(n.tags == req.tags for n in pending)
    assert set(ids(pending)) <= set(ids(provider.list_tagged()))
    with pytest.raises(CapacityError):  # pending nodes hold capacity
        provider.launch(request(), timeout=5)

    nodes = provider.launch(req, timeout=5)  # the same token finds the launch and waits it out
    assert ids(nodes) == ids(pending)
    assert {n.state for n in nodes} == {NodeState.RUNNING}
    assert time.monotonic() - start >= 0.3
    assert [c["outcome"] for c in provider.calls()] == [
        "RequestTimeout",
        "InsufficientCapacity",
        "idempotent",
    ]


# -- terminate -------------------------------------------------------------------------------


def test_terminate_errors_are_consumed_per_call(tmp_path: Path) -> None:
    provider = sim(tmp_path, f'[shapes."{P5_SPOT.id}"]\nterminate_errors = ["server_error"]\n')
    other = provider.launch(request(P5), timeout=5)
    nodes = provider.launch(request(count=2), timeout=5)
    provider.terminate(other)  # another shape: nothing scripted

    with pytest.raises(TransientError) as caught:
        provider.terminate(nodes)
    assert (caught.value.code, caught.value.reach) == ("InternalError", Reach.CALL)
    assert ids(provider.all_nodes()) == ids(nodes)  # nothing was terminated

    provider.terminate(nodes)
    assert provider.all_nodes() == []
    states = {n.provider_id: n.state for n in provider.all_nodes(include_terminated=True)}
    assert set(states.values()) == {NodeState.TERMINATED} and len(states) == 3


def test_terminate_ignores_unknown_nodes(tmp_path: Path) -> None:
    provider = sim(tmp_path, terminate_errors=["server_error"])
    ghost = provider.launch(request(), timeout=5)[0].model_copy(
        update={"provider_id": "sim-000000000000"}
    )
    provider.terminate([ghost])  # touches no live node: no scripted error consumed
    with pytest.raises(TransientError):
        provider.terminate(provider.all_nodes())


# -- addresses and ids -----------------------------------------------------------------------


def test_ids_and_addresses_are_unique_and_private(tmp_path: Path) -> None:
    provider = sim(tmp_path)
    nodes = provider.launch(request(count=300), timeout=5)
    provider.terminate(nodes[:10])
    nodes += provider.launch(request(A3_SPOT, count=5), timeout=5)

    assert all(re.fullmatch(r"sim-[0-9a-f]{12}", n.provider_id) for n in nodes)
    assert len(set(ids(nodes))) == len(nodes)
    addresses = [ipaddress.IPv4Address(n.private_ip) for n in nodes]
    assert len(set(addresses)) == len(nodes)
    network = ipaddress.IPv4Network("10.0.0.0/8")
    assert all(a in network and a.packed[-1] not in (0, 255) for a in addresses)


def test_bundled_catalog_and_the_documented_example(tmp_path: Path) -> None:
    scenario = SimScenario.from_toml_text(SPEC_EXAMPLE)
    provider = SimProvider(tmp_path, load_catalog(), scenario)
    p5_spot = load_catalog().get("AWS:us-east-1:p5.48xlarge:SPOT")
    assert p5_spot is not None and provider.list_shapes() == list(load_catalog().shapes)
    for expected in (ThrottledError, ThrottledError, CapacityError):
        with pytest.raises(expected):
            provider.launch(request(p5_spot, "use1-az4"), timeout=5)
    p5 = load_catalog().get("aws:us-east-1:p5.48xlarge:on-demand")
    assert p5 is not None
    assert provider.launch(request(p5, "use1-az4"), timeout=5)[0].shape_id == p5.id


# -- one cloud, several processes ------------------------------------------------------------


def test_two_instances_on_one_directory_share_the_cloud(tmp_path: Path) -> None:
    a = SimProvider(tmp_path / "state", CATALOG)
    b = SimProvider(tmp_path / "state", CATALOG)
    nodes = a.launch(request(count=2), timeout=5)
    assert b.describe(nodes[0].cluster_id or "") == nodes
    assert ids(b.list_tagged()) == ids(nodes)
    assert b.launch(request(count=2, token=a.calls()[0]["token"]), timeout=5) == nodes
    b.terminate(nodes)
    assert a.list_tagged() == []


def test_concurrent_threads_never_overcommit(tmp_path: Path) -> None:
    sim(tmp_path, capacity_nodes=3, errors=["throttle", "throttle"])
    outcomes: list[str] = []

    def launch() -> None:
        provider = sim(tmp_path, capacity_nodes=3, errors=["throttle", "throttle"])
        try:
            provider.launch(request(), timeout=5)
            outcomes.append("ok")
        except ProviderError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=launch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == sorted(
        ["Throttling"] * 2 + ["ok"] * 3 + ["InsufficientCapacity"] * 3
    )


CHILD = """
import json, sys, time, uuid
from pathlib import Path
from providers.base import LaunchRequest
from providers.errors import ProviderError
from providers.sim import SimProvider, SimScenario
from shapes.catalog import Catalog
from shapes.model import Shape

state, shape_json, index = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
shape = Shape.from_json_dict(json.loads(shape_json))
scenario = SimScenario.model_validate({"default": {"capacity_nodes": 2}})
provider = SimProvider(state, Catalog.of([shape]), scenario)
req = LaunchRequest(shape=shape, zone=shape.zones[0], count=1, token=str(uuid.uuid4()),
                    tags={"broker-cluster": "c" + index})
(state / f"ready-{index}").touch()
deadline = time.monotonic() + 30
while not (state / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.001)
try:
    print(json.dumps(["ok", provider.launch(req, timeout=5)[0].private_ip]))
except ProviderError as exc:
    print(json.dumps([exc.code, None]))
"""


def test_concurrent_processes_never_overcommit(tmp_path: Path) -> None:
    state = tmp_path / "state"
    shape = json.dumps(P5_SPOT.to_json_dict())
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(state), shape, str(i)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        deadline = time.monotonic() + 30
        while len(list(state.glob("ready-*"))) < 4 and time.monotonic() < deadline:
            if any(c.poll() is not None for c in children):
                break
            time.sleep(0.005)
        (state / "go").touch()
        results = [c.communicate(timeout=30) for c in children]
    finally:
        for c in children:
            c.kill()
    outcomes = []
    for out, err in results:
        assert out.strip(), err
        outcomes.append(json.loads(out)[0])
    assert sorted(outcomes) == ["InsufficientCapacity", "InsufficientCapacity", "ok", "ok"]

    provider = SimProvider(state, CATALOG)
    alive = provider.list_tagged()
    assert len(alive) == 2 and len({n.private_ip for n in alive}) == 2
    assert sorted(c["outcome"] for c in provider.calls()) == sorted(outcomes)


# -- pruning and the file ---------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_terminated_nodes_their_tokens_and_calls_are_pruned_after_an_hour(tmp_path: Path) -> None:
    clock = Clock()
    provider = SimProvider(tmp_path / "state", CATALOG, clock=clock)
    token = str(uuid.uuid4())
    gone = provider.launch(request(count=2, token=token), timeout=5)
    provider.terminate(gone)
    kept = provider.launch(request(count=1), timeout=5)  # alive: never pruned

    clock.now += 3599
    provider.terminate([])  # any write prunes; nothing is old enough yet
    assert len(provider.all_nodes(include_terminated=True)) == 3 and len(provider.calls()) == 4

    clock.now += 2
    provider.terminate([])
    assert ids(provider.all_nodes(include_terminated=True)) == ids(kept)
    assert [c["op"] for c in provider.calls()] == ["terminate", "terminate"]  # the recent ones
    assert provider.describe(kept[0].cluster_id or "") == kept
    # the token is forgotten with its gang: using it again starts a new gang, no mismatch
    again = provider.launch(request(G6, count=1, token=token), timeout=5)
    assert again[0].shape_id == G6.id


def test_the_file_stays_bounded_over_many_cycles(tmp_path: Path) -> None:
    clock = Clock()
    provider = SimProvider(tmp_path / "state", CATALOG, clock=clock, prune_after=60)
    db = tmp_path / "state" / DB_FILENAME

    def cycles(n: int) -> None:
        for _ in range(n):
            provider.terminate(provider.launch(request(count=4), timeout=5))
            clock.now += 10

    def rows() -> int:
        with closing(sqlite3.connect(db)) as conn:
            return sum(
                conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("nodes", "tokens", "calls")
            )

    cycles(50)
    after_50 = rows()
    cycles(250)
    # a minute of cycles, at most: 7 gangs of 4 nodes, their tokens and 2 calls each
    assert rows() == after_50 <= 7 * (4 + 1 + 2)
    assert len(provider.all_nodes(include_terminated=True)) <= 7 * 4
    assert provider.list_tagged() == []


def test_a_version_1_file_is_migrated_and_its_terminated_nodes_pruned_later(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    old = SimProvider(state, CATALOG)
    old.terminate(old.launch(request(count=2), timeout=5))
    alive = old.launch(request(count=1), timeout=5)
    with closing(sqlite3.connect(state / DB_FILENAME, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.execute("DROP INDEX nodes_by_end")
        conn.execute("DROP INDEX calls_by_at")
        conn.execute("ALTER TABLE nodes DROP COLUMN ended_at")
        conn.execute("ALTER TABLE calls DROP COLUMN at")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")

    clock = Clock(time.time())
    provider = SimProvider(state, CATALOG, clock=clock)
    assert ids(provider.list_tagged()) == ids(alive)
    assert len(provider.all_nodes(include_terminated=True)) == 3
    clock.now += 3601
    provider.terminate([])
    assert ids(provider.all_nodes(include_terminated=True)) == ids(alive)


def test_an_unknown_schema_version_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    SimProvider(state, CATALOG)
    with closing(sqlite3.connect(state / DB_FILENAME)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigError, match=re.escape(str(state / DB_FILENAME)) + ".*version 99"):
        SimProvider(state, CATALOG)


def test_a_file_that_is_not_a_database_is_a_config_error_naming_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_FILENAME).write_bytes(b"not a database, just bytes " * 100)
    with pytest.raises(ConfigError, match=re.escape(str(state / DB_FILENAME))):
        SimProvider(state, CATALOG)
    assert (state / DB_FILENAME).read_bytes().startswith(b"not a database")  # left alone


def test_sim_exists_only_once_the_simulated_cloud_was_used(tmp_path: Path) -> None:
    from providers.registry import sim_exists as registry_sim_exists

    state = tmp_path / "state"
    assert not sim_exists(state) and not registry_sim_exists(state) and not state.exists()
    SimProvider(state, CATALOG)
    assert sim_exists(state) and registry_sim_exists(state)


def test_open_provider_takes_a_loaded_scenario(tmp_path: Path) -> None:
    from providers.config import BrokerConfig
    from providers.registry import open_provider

    scenario = SimScenario(default=SimDefaults(capacity_nodes=0))
    provider = open_provider(
        "sim", state_dir=tmp_path, catalog=CATALOG, config=BrokerConfig(), sim_scenario=scenario
    )
    assert isinstance(provider, SimProvider) and provider.scenario is scenario
    with pytest.raises(CapacityError):
        provider.launch(request(), timeout=5)
