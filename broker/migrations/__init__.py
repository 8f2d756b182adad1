"""The store's schema migrations (Alembic), shipped with the package.

Revision ``0001`` is the schema of the last release without migrations (every table of
broker.state, with its indexes); it also adopts a store that release wrote (missing tables,
nullable columns and indexes are added, old-format blocks dropped), so a store from before
migrations upgrades like any other. ``0002`` adds the indexes of the cluster list filters.

:class:`broker.state.Store` checks the revision when it opens a store and calls
:func:`upgrade_connection` (in its own locked transaction) to create or upgrade one; this
module imports Alembic only there, so opening an up-to-date store never loads it.

A new revision: add ``versions/revNNNN_<what>.py`` (``down_revision`` = the last one), append
its id to :data:`REVISIONS`, and change the tables in broker/state.py to match
(tests/store/test_migrations.py compares the migrated schema with broker.state's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REVISIONS: tuple[str, ...] = ("0001", "0002")  # oldest first: what this release knows
HEAD = REVISIONS[-1]
LOCATION = Path(__file__).resolve().parent


def alembic_config(connection: Any = None) -> Any:
    """An Alembic ``Config`` of these migrations (no ini file), handing ``env.py`` the
    connection to run on."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_connection(connection: Any, target: str = "head") -> None:
    """Apply the migrations up to ``target`` on ``connection``, inside the transaction the
    caller holds (and commits)."""
    from alembic import command

    command.upgrade(alembic_config(connection), target)


__all__ = ["HEAD", "LOCATION", "REVISIONS", "alembic_config", "upgrade_connection"]
