"""The quote path's modules load no pydantic, SQLAlchemy or cloud SDK (each costs more than
starting Python), even after a whole quote; a launch file's module only when one is read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import shapes, shapes.catalog, shapes.model, shapes.checks, shapes.errors, shapes.gpus
import broker.diagnostics, broker.errors, broker.quote, broker.ranking, broker.views
from broker.quote import QuoteRequest, quote
from broker.ranking import RankRequest
from shapes.catalog import load_catalog
q = quote(QuoteRequest(rank=RankRequest(gpus=16)), load_catalog(None))
json.dumps(broker.views.quote_document(q), allow_nan=False)
heavy = ("pydantic", "pydantic_core", "sqlalchemy", "boto3", "botocore", "azure", "google",
         "broker.launchfile", "broker.state", "tomllib")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))
"""


def test_quote_path_imports_no_pydantic_sqlalchemy_or_sdk() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []
