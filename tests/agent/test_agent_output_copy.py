"""The node agent's ``--output-copy FILE``: every line of the command's output (never the
agent's own lines) appended to a local file as it is read, bounded by
``--output-copy-limit`` (64 MiB by default) with one line saying where the copy stopped.
Real ``python3 -I agent.py`` processes against the scripted service stub of test_agent.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.agent import agent
from tests.agent import test_agent
from tests.agent.test_agent import CLUSTER, WAIT, Stub, finish, run_answer, wait_until
from tests.agent.test_agent_artifacts import Blobs, serve_inputs

# test_agent's fixtures: its service stubs and agent processes, cleaned up after each test.
agents, run_agent, stubs = test_agent.agents, test_agent.run_agent, test_agent.stubs

STOPPED = "[burst-agent] output copy stopped: the file reached {} bytes"


@pytest.fixture
def blobs() -> Any:
    made = Blobs()
    yield made
    made.stop()


def scenario(stubs: list[Stub], command: str, **overrides: Any) -> Stub:
    stub = Stub([WAIT, run_answer(command, **overrides)]).start()
    stubs.append(stub)
    return stub


def command_lines(stub: Stub) -> list[str]:
    return [line for line in stub.lines() if not line.startswith(agent.AGENT_LINE)]


def test_the_copy_holds_the_commands_lines_and_none_of_the_agents(
    stubs: list[Stub], blobs: Blobs, run_agent: Any, tmp_path: Path
) -> None:
    copy = tmp_path / "logs" / "command.log"  # its directory is made
    command = (
        "echo one; echo two >&2; printf 'caf\\xc3\\xa9 \\xff\\n'; "
        "head -c 5000 /dev/zero | tr '\\0' x; echo; printf 'no newline at the end'"
    )
    stub = scenario(stubs, command, inputs=True)
    serve_inputs(stub, blobs, {"/data/ds1/a.txt": b"hello"})  # agent lines in the log
    code, err = finish(run_agent(stub.url, "--output-copy", str(copy)))
    assert code == 0, err
    assert any(line.startswith("[burst-agent] inputs: 1 file(s)") for line in stub.lines())
    expected = ["one", "two", "café \ufffd", "x" * agent.MAX_LINE_CHARS, "no newline at the end"]
    assert command_lines(stub) == expected  # what the service got, cut and decoded
    assert copy.read_text(encoding="utf-8") == "".join(line + "\n" for line in expected)
    assert stub.exit()["reason"] == "exited"


def test_a_second_run_appends_and_lines_arrive_while_the_command_runs(
    stubs: list[Stub], run_agent: Any, tmp_path: Path
) -> None:
    copy = tmp_path / "command.log"
    copy.write_text("an earlier run\n")
    stub = scenario(stubs, "echo first; sleep 2; echo second")
    proc = run_agent(stub.url, "--output-copy", str(copy))
    # The line is in the file while the command still sleeps, not at its end.
    wait_until(lambda: copy.read_text() == "an earlier run\nfirst\n", timeout=8)
    assert "exit" not in stub.names()
    code, err = finish(proc)
    assert code == 0, err
    assert copy.read_text() == "an earlier run\nfirst\nsecond\n"


def test_the_copy_stops_at_its_limit_with_one_line_saying_so(
    stubs: list[Stub], run_agent: Any, tmp_path: Path
) -> None:
    copy = tmp_path / "command.log"
    limit = 4096
    stub = scenario(stubs, 'for i in $(seq 1 300); do echo "line $i of the command"; done')
    code, err = finish(
        run_agent(stub.url, "--output-copy", str(copy), "--output-copy-limit", "4096")
    )
    assert code == 0, err
    sent = command_lines(stub)
    assert len(sent) == 300  # the service gets every line; only the copy is bounded
    copied = copy.read_text().splitlines()
    assert copied[-1] == STOPPED.format(limit)
    kept = copied[:-1]
    assert kept == sent[: len(kept)]
    body = sum(len(line) + 1 for line in kept)
    assert body <= limit < body + len(sent[len(kept)]) + 1  # as many whole lines as fit
    assert copy.stat().st_size == body + len(copied[-1]) + 1
    assert f"output copy: {copy} reached {limit} bytes; the copy stops" in err


def test_a_file_already_at_the_limit_is_left_as_it_is(
    stubs: list[Stub], run_agent: Any, tmp_path: Path
) -> None:
    copy = tmp_path / "command.log"
    copy.write_bytes(b"y" * 2048)
    stub = scenario(stubs, "echo hello")
    code, err = finish(
        run_agent(stub.url, "--output-copy", str(copy), "--output-copy-limit", "2048")
    )
    assert code == 0, err
    assert copy.read_bytes() == b"y" * 2048
    assert command_lines(stub) == ["hello"]
    assert "holds 2048 bytes already: not copied" in err


def test_a_copy_that_cannot_be_written_never_hurts_the_run(
    stubs: list[Stub], run_agent: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    stub = scenario(stubs, "echo one; echo two; exit 5")
    code, err = finish(run_agent(stub.url, "--output-copy", str(blocker / "command.log")))
    assert code == 0, err
    assert command_lines(stub) == ["one", "two"]
    assert stub.exit()["exit_code"] == 5
    assert err.count("output copy: cannot write") == 1  # said once, not per line
    assert "Traceback" not in err


def test_the_default_limit_is_64_mib(tmp_path: Path) -> None:
    assert agent.OUTPUT_COPY_LIMIT == 64 * 1024 * 1024
    path = tmp_path / "command.log"
    copy = agent.OutputCopy(str(path), agent.OUTPUT_COPY_LIMIT)
    line = "z" * (agent.MAX_LINE_CHARS - 1)  # 4 KiB with its newline
    for _ in range(agent.OUTPUT_COPY_LIMIT // agent.MAX_LINE_CHARS + 3):
        copy.write(line)
    copy.close()
    size = path.stat().st_size
    note = STOPPED.format(agent.OUTPUT_COPY_LIMIT) + "\n"
    assert size == agent.OUTPUT_COPY_LIMIT + len(note)  # every line that fits, then the note
    with path.open("rb") as handle:
        handle.seek(-len(note) - agent.MAX_LINE_CHARS, 2)
        assert handle.read().decode() == line + "\n" + note
    copy.write("more")  # stopped for good
    assert path.stat().st_size == size


def test_the_copy_flags(tmp_path: Path) -> None:
    base = ["--service", "http://127.0.0.1:1", "--cluster", CLUSTER, "--token-file", "t"]
    assert agent.parse_args(base).output_copy is None
    args = agent.parse_args([*base, "--output-copy", "rel/command.log"])
    assert args.output_copy == str(Path("rel/command.log").resolve())
    assert args.output_copy_limit == agent.OUTPUT_COPY_LIMIT
    for bad in (["--output-copy-limit", "100"], ["--output-copy", " "]):
        with pytest.raises(SystemExit) as raised:
            agent.parse_args([*base, *bad])
        assert raised.value.code == 2
