"""`broker --help` and `broker quote` must not import any cloud SDK (they cost ~1.5 s), nor
the store's SQLAlchemy or pydantic, nor the server stack (FastAPI, uvicorn, Jinja2): the
quote costs little more than starting Python."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("boto3", "botocore", "google.cloud", "google.api_core", "azure")

PROBE = """
import sys
from broker.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore", "azure")
             or m.startswith(("google.cloud", "google.api_core")))
print("IMPORTED:" + ",".join(bad), file=sys.stderr)
heavy = sorted(m for m in ("pydantic", "sqlalchemy", "tenacity", "fastapi", "starlette",
                            "uvicorn", "jinja2", "anyio") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["quote", "--gpus", "16", "--json"],
        ["quote", "--gpus", "16"],
        ["shapes", "--json"],
        ["validate", "examples/burst16.isc"],
    ],
)
def test_no_cloud_sdk_imported(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    marker = [line for line in proc.stderr.splitlines() if line.startswith("IMPORTED:")]
    assert marker, proc.stderr
    assert marker[0] == "IMPORTED:", f"cloud SDK imported by {argv}: {marker[0]}"
    assert "Traceback" not in proc.stderr
    heavy = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY:")]
    if argv[0] != "validate":  # a launch file is read by a pydantic model
        assert heavy == ["HEAVY:"], f"{argv} loaded {heavy}"


def test_plain_quote_does_not_load_the_state_store() -> None:
    """The store (SQLAlchemy) is for provisioning; a quote stays as cheap as it can be."""
    probe = (
        "import sys\nfrom broker.cli import main\nmain(['quote', '--gpus', '16', '--json'])\n"
        "print('SQLA:' + str('sqlalchemy' in sys.modules), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert "SQLA:False" in proc.stderr, proc.stderr[-2000:]
