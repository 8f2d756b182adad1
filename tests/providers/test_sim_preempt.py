"""The simulated cloud preempts (issue 16): the scenario's ``preempt_*`` keys, and nodes that
run for real (a launch with ``LaunchRequest.agent``: real ``python3 -I agent.py`` processes,
each under providers/sim_node.py's supervisor) against the scripted agent service stub of
tests/agent/test_agent.py. The stub hears ``preempted`` from the agent's GCP watcher, the node
leaves ``describe()``, a ``preempt`` call is recorded and no process of the node is left.
"""

from __future__ import annotations

import re
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.base import TAG_CLUSTER, AgentLaunch, LaunchRequest, Node
from providers.errors import ScenarioError
from providers.sim import SimDefaults, SimPreemption, SimProvider, SimScenario
from providers.sim_node import Metadata
from providers.sim_nodes import (
    COMMAND_PID_FILE,
    NODES_DIR,
    OUTPUT_COPY_FILE,
    PID_FILE,
    sandbox,
    stop_agents,
)
from tests.agent.test_agent import AGENT, TOKEN, WAIT, Stub, run_answer, wait_until
from tests.providers.test_sim import A3_SPOT, CATALOG, P5_SPOT

# -- the scenario keys -----------------------------------------------------------------------


def scenario(text: str) -> SimScenario:
    return SimScenario.from_toml_text(textwrap.dedent(text), source="s.toml")


def test_no_trigger_no_preemption() -> None:
    assert SimScenario().rule_for(P5_SPOT.id).preemption is None
    # The other keys alone preempt nothing: a trigger is what turns it on.
    quiet = scenario("[default]\npreempt_nodes = 3\npreempt_notice_s = 9\n")
    assert quiet.rule_for(P5_SPOT.id).preemption is None


def test_the_preempt_keys_fall_back_to_default_key_by_key() -> None:
    parsed = scenario(
        """
        [default]
        preempt_after_s = 30
        preempt_notice_s = 0.5
        [shapes."aws:*:*:spot"]
        preempt_on_line = "epoch 2 done"
        preempt_zones = ["use1-az2", "use1-az4"]
        preempt_nodes = 2
        [shapes."gcp:*"]
        preempt_zones = []
        """
    )
    aws = parsed.rule_for(P5_SPOT.id).preemption
    assert aws == SimPreemption(
        after_s=30.0,
        on_line="epoch 2 done",
        zones=frozenset({"use1-az2", "use1-az4"}),
        nodes=2,
        notice_s=0.5,
    )
    assert aws.applies_to("use1-az4") and not aws.applies_to("use1-az1")
    gcp = parsed.rule_for(A3_SPOT.id).preemption
    assert gcp is not None and not gcp.applies_to("us-central1-a")  # []: no zone
    other = parsed.rule_for("azure:eastus:Standard_ND96isr_H100_v5:spot").preemption
    assert other == SimPreemption(30.0, None, None, 1, 0.5)  # [default]'s, every zone
    assert other.applies_to("anywhere")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[default]\npreempt_after_s = -1\n",
            r"default\.preempt_after_s: .*greater than or equal to 0.*line 2",
        ),
        ("[default]\npreempt_after_s = inf\n", r"default\.preempt_after_s: .*finite number"),
        ('[default]\npreempt_after_s = "3"\n', r"preempt_after_s: .*valid number \(got '3'\)"),
        ('[default]\npreempt_on_line = ""\n', r"default\.preempt_on_line: .*at least 1 character"),
        ("[default]\npreempt_on_line = 3\n", r"default\.preempt_on_line: .*valid string"),
        (
            '[shapes."aws:*"]\npreempt_on_line = "a\\nb"\n',
            r"shapes\.\"aws:\*\"\.preempt_on_line: a line of output holds no line break.*line 2",
        ),
        ('[default]\npreempt_zones = "use1-az1"\n', r"default\.preempt_zones: .*tuple"),
        ('[default]\npreempt_zones = ["use1-az1", ""]\n', r"preempt_zones\[1\]: .*at least 1"),
        ("[default]\npreempt_nodes = 0\n", r"default\.preempt_nodes: .*greater than or equal to 1"),
        ("[default]\npreempt_nodes = 1.5\n", r"default\.preempt_nodes: .*integer"),
        (
            '[shapes."gcp:*"]\npreempt_notice_s = -0.5\n',
            r"shapes\.\"gcp:\*\"\.preempt_notice_s: .*greater than or equal to 0",
        ),
        (
            "[default]\npreempt_after = 3\n",
            r"default\.preempt_after: unknown key 'preempt_after' \(known keys: .*preempt_after_s",
        ),
    ],
)
def test_bad_preempt_keys_are_named(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError, match=expected) as caught:
        SimScenario.from_toml_text(text, source="bad.toml")
    assert str(caught.value).startswith("sim scenario bad.toml: ")


def test_the_module_docstring_documents_every_preempt_key() -> None:
    import providers.sim

    doc = providers.sim.__doc__ or ""
    for key in (k for k in SimDefaults.model_fields if k.startswith("preempt_")):
        assert re.search(rf"^\s+{key} = ", doc, re.MULTILINE), key
    assert scenario(_doc_example(doc)).rule_for(P5_SPOT.id).preemption is not None


def _doc_example(doc: str) -> str:
    """The TOML of the module docstring's example, its comments dropped."""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    return "\n".join(re.sub(r"\s+#.*", "", line) for line in textwrap.dedent(block).splitlines())


# -- nodes that run, preempted ---------------------------------------------------------------

CLUSTER = "c-agenttest"  # the stub's: it checks nothing else


@pytest.fixture
def stubs() -> Iterator[list[Stub]]:
    made: list[Stub] = []
    yield made
    for stub in made:
        stub.stop()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The sim's state directory; every node process under it is killed at the end."""
    path = tmp_path / "state"
    yield path
    nodes = path / NODES_DIR
    if nodes.is_dir():
        stop_agents(path, [p.name for p in nodes.iterdir()], grace=0.2)


def service(stubs: list[Stub], command: str) -> Stub:
    stub = Stub([WAIT, run_answer(command)]).start()
    stubs.append(stub)
    return stub


def launch(cloud: SimProvider, stub: Stub, zone: str = "use1-az1", count: int = 1) -> list[Node]:
    return cloud.launch(
        LaunchRequest(
            shape=P5_SPOT,
            zone=zone,
            count=count,
            token=str(uuid.uuid4()),
            tags={TAG_CLUSTER: CLUSTER},
            agent=AgentLaunch(stub.url, CLUSTER, TOKEN, agent_path=AGENT),
        ),
        timeout=10,
    )


def groups_of(state: Path, nodes: list[Node]) -> set[int]:
    """The process groups of these nodes as they run now: each node's leader (its pid file)
    and its command's, once it started."""
    found = set()
    for node in nodes:
        root = sandbox(state, node.provider_id)
        for name in (PID_FILE, COMMAND_PID_FILE):
            path = root / name
            if path.exists():
                found.add(int(path.read_text()))
    return found


def processes_in(groups: set[int]) -> list[str]:
    """The live processes (not zombies) of these process groups, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) in groups and state != "Z":
            found.append(stat.split(")", 1)[0] + ")")
    return found


def preempt_calls(cloud: SimProvider) -> list[list[str]]:
    return [c["nodes"] for c in cloud.calls() if c["op"] == "preempt"]


def test_a_node_is_preempted_after_n_seconds(state: Path, stubs: list[Stub]) -> None:
    cloud = SimProvider(state, CATALOG, scenario("[default]\npreempt_after_s = 1.5\n"))
    stub = service(stubs, "echo running; sleep 30")
    launched = time.monotonic()
    (node,) = launch(cloud, stub)
    wait_until(lambda: "started" in stub.names(), timeout=8)
    groups = groups_of(state, [node])
    assert len(groups) == 2  # the node's (supervisor and agent) and the command's
    assert len(processes_in(groups)) >= 3

    wait_until(lambda: "preempted" in stub.names(), timeout=8)
    assert cloud.describe(CLUSTER) == [node]  # the notice's window: the node is still there
    noticed = next(t for t, name, _, _ in stub.calls if name == "preempted")
    assert noticed - launched >= 1.5
    (body,) = stub.bodies("preempted")
    assert (body["cloud"], body["action"], body["not_before"]) == ("gcp", "preempt", None)

    wait_until(lambda: cloud.describe(CLUSTER) == [], timeout=8)
    assert time.monotonic() - noticed >= 1.0  # preempt_notice_s: 2 s by default
    assert preempt_calls(cloud) == [[node.provider_id]]
    (ended,) = cloud.all_nodes(include_terminated=True)
    assert ended.state.value == "terminated"
    wait_until(lambda: processes_in(groups) == [], timeout=3)
    assert not (sandbox(state, node.provider_id) / PID_FILE).exists()
    assert "running" in stub.lines()
    assert len(stub.bodies("preempted")) == 1


def test_a_node_is_preempted_when_its_command_prints_a_line(state: Path, stubs: list[Stub]) -> None:
    cloud = SimProvider(
        state,
        CATALOG,
        scenario('[default]\npreempt_on_line = "step 3 "\npreempt_notice_s = 0.5\n'),
    )
    command = 'for i in $(seq 1 20); do echo "step $i of 20"; sleep 0.25; done; echo finished'
    stub = service(stubs, command)
    (node,) = launch(cloud, stub)
    wait_until(lambda: "started" in stub.names(), timeout=8)
    groups = groups_of(state, [node])
    wait_until(lambda: "preempted" in stub.names(), timeout=8)
    wait_until(lambda: cloud.describe(CLUSTER) == [], timeout=8)
    wait_until(lambda: processes_in(groups) == [], timeout=3)
    assert preempt_calls(cloud) == [[node.provider_id]]
    lines = stub.lines()
    assert "step 3 of 20" in lines
    assert "step 12 of 20" not in lines and "finished" not in lines  # cut short
    # The agent's copy of the output, which the supervisor followed.
    copied = (sandbox(state, node.provider_id) / OUTPUT_COPY_FILE).read_text().splitlines()
    assert copied[:3] == ["step 1 of 20", "step 2 of 20", "step 3 of 20"]
    assert not any(line.startswith("[burst-agent]") for line in copied)


def test_preempt_zones_and_preempt_nodes_choose_which_nodes(state: Path, stubs: list[Stub]) -> None:
    cloud = SimProvider(
        state,
        CATALOG,
        scenario(
            """
            [default]
            preempt_after_s = 0.5
            preempt_notice_s = 0.3
            preempt_zones = ["use1-az2"]
            preempt_nodes = 2
            """
        ),
    )
    there = service(stubs, "sleep 30")
    elsewhere = service(stubs, "sleep 30")
    gang = launch(cloud, there, zone="use1-az2", count=3)
    spared = launch(cloud, elsewhere, zone="use1-az1", count=2)
    wait_until(lambda: len(preempt_calls(cloud)) == 2, timeout=8)
    preempted = sorted(i for ids in preempt_calls(cloud) for i in ids)
    assert preempted == sorted(n.provider_id for n in gang[:2])  # the first two created
    time.sleep(0.8)  # well past the trigger and the notice: nothing else goes
    assert len(preempt_calls(cloud)) == 2
    alive = {n.provider_id for n in cloud.all_nodes()}
    assert alive == {gang[2].provider_id, *(n.provider_id for n in spared)}
    assert len(there.bodies("preempted")) == 2
    assert "preempted" not in elsewhere.names()
    # The nodes left are there for real, and go with a terminate, as before.
    rest = [gang[2], *spared]
    wait_until(lambda: len(groups_of(state, rest)) == 2 * len(rest), timeout=8)
    groups = groups_of(state, rest)
    assert processes_in(groups)
    for each in rest:  # no supervisor where nothing is preempted: the agent, as before
        pid = (sandbox(state, each.provider_id) / PID_FILE).read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[2].decode() == AGENT
    cloud.terminate(rest)
    wait_until(lambda: processes_in(groups) == [], timeout=3)
    assert cloud.all_nodes() == []


def test_a_terminate_during_the_notice_ends_the_node_without_a_preempt_call(
    state: Path, stubs: list[Stub]
) -> None:
    cloud = SimProvider(
        state,
        CATALOG,
        scenario("[default]\npreempt_after_s = 0.2\npreempt_notice_s = 30\n"),
    )
    stub = service(stubs, "sleep 30")
    (node,) = launch(cloud, stub)
    wait_until(lambda: "started" in stub.names(), timeout=8)
    groups = groups_of(state, [node])
    wait_until(lambda: "preempted" in stub.names(), timeout=8)
    cloud.terminate([node])  # the broker gives up on the node first
    wait_until(lambda: processes_in(groups) == [], timeout=3)
    assert cloud.describe(CLUSTER) == []
    assert [c["op"] for c in cloud.calls()] == ["launch", "terminate"]


def test_a_line_that_never_comes_preempts_nothing(state: Path, stubs: list[Stub]) -> None:
    cloud = SimProvider(state, CATALOG, scenario('[default]\npreempt_on_line = "never"\n'))
    stub = service(stubs, "echo one; echo two")
    (node,) = launch(cloud, stub)
    supervisor = int((sandbox(state, node.provider_id) / PID_FILE).read_text())
    wait_until(lambda: "exit" in stub.names(), timeout=8)
    wait_until(lambda: processes_in({supervisor}) == [], timeout=3)  # it ends with the agent
    assert "preempted" not in stub.names() and stub.exit()["reason"] == "exited"
    assert cloud.describe(CLUSTER) == [node]  # the machine stays until terminated
    assert preempt_calls(cloud) == []
    log = (sandbox(state, node.provider_id) / "agent.log").read_text()
    assert "the agent ended (0) before any preemption" in log
    cloud.terminate([node])


# -- the supervisor's metadata endpoint, as GCP answers ---------------------------------------


def test_the_metadata_endpoint_answers_as_gcp_does() -> None:
    meta = Metadata()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path: str, flavor: bool = True) -> tuple[int, str, str]:
        headers = {"Metadata-Flavor": "Google"} if flavor else {}
        request = urllib.request.Request(meta.url + path, headers=headers)
        try:
            with opener.open(request, timeout=5) as answer:
                return answer.status, answer.read().decode(), answer.headers["ETag"]
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), ""

    try:
        key = "/computeMetadata/v1/instance/preempted"
        assert get(key, flavor=False)[:2] == (403, "Missing Metadata-Flavor:Google header.")
        assert get("/computeMetadata/v1/instance/nope")[0] == 404
        assert get("/computeMetadata/v1/instance/maintenance-event")[:2] == (200, "NONE")
        status, value, etag = get(key)
        assert (status, value) == (200, "FALSE") and etag
        # An unchanged value holds the answer until timeout_sec...
        started = time.monotonic()
        assert get(f"{key}?wait_for_change=true&timeout_sec=0.3&last_etag={etag}")[1] == "FALSE"
        assert time.monotonic() - started >= 0.3
        # ... and a change answers at once, with a new ETag.
        threading.Timer(0.2, meta.preempt).start()
        started = time.monotonic()
        status, value, fresh = get(f"{key}?wait_for_change=true&timeout_sec=30&last_etag={etag}")
        assert (status, value) == (200, "TRUE") and fresh != etag
        assert time.monotonic() - started < 5
        assert get(f"{key}?wait_for_change=true&last_etag={etag}")[1] == "TRUE"  # changed already
    finally:
        meta.stop()
