"""Run a node boot script for real, in a temporary directory, with a stand-in ``python3``.

The script is generated with ``install_dir`` and ``log_file`` inside the test's directory
(so it never touches /opt or /var/log), written to a file and executed through its ``#!``
line. The stand-in python answers the script's version check (yes or no, as told) and, for
any other call, records its argv (NUL-separated, so every value comes back exactly), its
session id and its working directory, then prints a line (which must land in the log).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from broker.agent.bootstrap import bootstrap_script

SERVICE = "https://broker.internal.example:8443"
CLUSTER = "bb-0a1b2c3d4e5f"
NODE_TOKEN = "bbn_" + "Zq9-_x" * 7 + "A"  # the shape of a real one: bbn_ + 43 characters
AGENT = b'#!/usr/bin/env python3\n"""a stand-in agent"""\nprint(\'agent\')\n' + bytes(range(256))
# What the script needs besides python3 (for a PATH without any real python).
TOOLS = ("date", "mkdir", "chmod", "rm", "base64", "gzip", "mv", "setsid", "nohup")

STUB = """#!/bin/sh
# a stand-in python3 {version}
if [ "$1" = "-I" ] && [ "$2" = "-c" ]; then
    exit {answer}
fi
read -r _pid _comm _state _ppid _pgrp sid _rest </proc/$$/stat
out={record}/call.$$
printf '%s\\0' "$0" "$@" >"$out.argv"
printf '%s %s\\n' "$$" "$sid" >"$out.session"
pwd >"$out.cwd"
mv "$out.argv" "$out.args"
echo "stand-in python started"
"""


@dataclass
class Call:
    """One call of the stand-in python (not the version check)."""

    argv: list[str]  # argv[0] is the python the script chose
    pid: int
    session: int
    cwd: str


@dataclass
class BootRun:
    root: Path
    install_dir: Path
    log_file: Path
    result: subprocess.CompletedProcess[str]
    calls: list[Call]

    @property
    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


def paths(root: Path) -> tuple[Path, Path]:
    """(install directory, log file) of a run under ``root``."""
    return root / "opt" / "burst-broker", root / "var" / "log" / "burst-broker-agent.log"


def script_for(root: Path, **overrides: object) -> str:
    """A boot script installing under ``root`` (the stand-in agent unless told otherwise)."""
    install_dir, log_file = paths(root)
    values: dict[str, object] = {
        "service_url": SERVICE,
        "cluster_id": CLUSTER,
        "node_token": NODE_TOKEN,
        "agent_source": AGENT,
        "install_dir": str(install_dir),
        "log_file": str(log_file),
    }
    values.update(overrides)
    return bootstrap_script(**values)  # type: ignore[arg-type]


def stub_python(bin_dir: Path, record: Path, name: str = "python3", *, new: bool = True) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    record.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / name
    stub.write_text(
        STUB.format(version="3.12" if new else "3.6", answer=0 if new else 1, record=record)
    )
    stub.chmod(0o755)
    return stub


def tools_dir(where: Path) -> Path:
    """A directory with the script's tools and nothing else (no python of this machine)."""
    where.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run boot scripts"
        (where / tool).symlink_to(found)
    return where


def run(
    script: str,
    root: Path,
    *,
    path: list[Path] | None = None,
    expect_calls: int = 1,
    timeout: float = 10.0,
) -> BootRun:
    """Run ``script`` (made by :func:`script_for` with this ``root``) and wait for the
    stand-in python to be called ``expect_calls`` times (it runs detached)."""
    record = root / "calls"
    if path is None:
        stub_python(root / "bin", record)
        search = [root / "bin", *(Path(p) for p in os.environ["PATH"].split(os.pathsep) if p)]
    else:
        search = path
    file = root / "boot.sh"
    file.write_text(script)
    file.chmod(0o700)
    result = subprocess.run(
        [str(file)],
        env={"PATH": os.pathsep.join(map(str, search)), "LANG": "C"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=root,
    )
    deadline = time.monotonic() + timeout
    found: list[Path] = []
    while time.monotonic() < deadline:
        found = sorted(record.glob("call.*.args")) if record.exists() else []
        if len(found) >= expect_calls:
            break
        time.sleep(0.02)
    if expect_calls == 0:
        time.sleep(0.2)  # long enough for a wrongly started agent to show up
        found = sorted(record.glob("call.*.args")) if record.exists() else []
    calls = []
    for args in found:
        stem = str(args)[: -len(".args")]
        pid, session = Path(stem + ".session").read_text().split()
        calls.append(
            Call(
                argv=[a.decode() for a in args.read_bytes().split(b"\0")[:-1]],
                pid=int(pid),
                session=int(session),
                cwd=Path(stem + ".cwd").read_text().strip(),
            )
        )
    install_dir, log_file = paths(root)
    # the stand-in's echo is appended to the log by the detached process: give it a moment
    end = time.monotonic() + timeout
    while calls and time.monotonic() < end and "stand-in python started" not in _read(log_file):
        time.sleep(0.02)
    return BootRun(root, install_dir, log_file, result, calls)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def agent_argv(install_dir: Path, service: str = SERVICE, cluster: str = CLUSTER) -> list[str]:
    """The agent's arguments after the interpreter (what the issue's protocol asks for)."""
    return [
        "-I",
        str(install_dir / "agent.py"),
        "--service",
        service,
        "--cluster",
        cluster,
        "--token-file",
        str(install_dir / "node-token"),
    ]
