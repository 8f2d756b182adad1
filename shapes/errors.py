"""The root of every error burst-broker raises on purpose, and the exit codes they map to.

It lives in the lowest layer (``shapes``) so that every layer above (``providers``,
``broker``) can derive from it without importing upwards. The whole tree, with each class's
CLI exit code and HTTP status, is drawn in :mod:`broker.errors`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class Exit(IntEnum):
    """The ``broker`` command's exit codes (documented in the README and ``broker --help``)."""

    OK = 0
    ERROR = 1  # an error we could not name more precisely
    INVALID = 2  # invalid input: flags, launch file, configuration, catalog, unknown cluster
    NO_SHAPE = 3  # no shape can serve the request / none could be provisioned
    LEAK = 4  # nodes may be left running: run `broker reconcile`
    CONFLICT = 5  # someone else moved the cluster (stopped or released it meanwhile)
    UNAVAILABLE = 6  # the state store cannot be opened or reached
    EXPERIMENT_FAILED = 7  # `broker run`: the experiment's command failed (or its node)
    NO_CREDITS = 8  # the organisation's credits cannot pay for the request's first hour
    SIGINT = 130  # interrupted by Ctrl-C (128 + SIGINT)
    SIGTERM = 143  # terminated by SIGTERM (128 + SIGTERM)


class BrokerError(Exception):
    """Something burst-broker can name went wrong. ``exit_code`` is what the CLI exits
    with, ``http_status`` what the HTTP API answers; subclasses set both."""

    exit_code: ClassVar[int] = Exit.ERROR
    http_status: ClassVar[int] = 500


class CatalogError(BrokerError):
    """A catalog file is missing, unreadable or malformed (the message names the file)."""

    exit_code = Exit.INVALID
    http_status = 500


__all__ = ["BrokerError", "CatalogError", "Exit"]
