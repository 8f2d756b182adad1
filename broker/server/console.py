"""The web console (placeholder until the console lands): mounts nothing yet."""

from __future__ import annotations

from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    """Add the console's routes and static files to ``app``."""
    _ = app
