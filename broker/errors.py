"""Every error burst-broker raises on purpose, as one tree, with its exit code and HTTP status.

The CLI exits with ``exc.exit_code`` and the HTTP API answers ``exc.http_status``: this
module is the one table both read. No traceback reaches a user for an error in this tree::

    BrokerError (shapes.errors)                 exit  HTTP
    +-- InvalidRequest                             2   422  input that cannot be served as given
    +-- CatalogError (shapes.errors)               2   500  a catalog file is malformed
    +-- ConfigError (providers.errors)             2   500  the configuration file is invalid
    +-- StoreError                                 6   503  the state store cannot be used
    +-- StateError                                 2   409  the store refused a change
    |   +-- NotFoundError                          2   404  no such cluster (or id prefix)
    |   +-- ConflictError                          5   409  the cluster is elsewhere (moved)
    +-- EnvError                                   2   409  no environment for that rank
    +-- ProvisionFailed                            3   503  no shape could be provisioned
    |   +-- CleanupFailed                          4   500  a failed attempt's nodes linger
    +-- NoShape                                    3   422  no shape can serve the request
    +-- TeardownFailed                             4   502  nodes still alive after terminate
    +-- Cancelled                                  5   409  stopped by someone else meanwhile
    +-- Unauthorized                               2   401  no valid API token (missing, revoked)
    +-- Forbidden                                  2   403  the token's role may not do this
    +-- ServerExtraMissing                         2   500  `broker serve` without its extra
    +-- CannotListen                               2   500  `broker serve` cannot bind its address
    +-- ServiceUnavailable                         6   503  the broker service cannot be reached
    +-- ServiceError                               1   502  the service answered what no class names
    +-- WaitTimeout                                3   504  a remote provisioning outlasted the wait
    +-- ProviderError (providers.errors)           4   502  a cloud refused (typed by reach)
        +-- ... (the reach tree drawn in providers.errors)

    Interrupted (a BaseException, like KeyboardInterrupt)   130 / 143   SIGINT / SIGTERM

``Interrupted`` is outside the root on purpose: no ``except Exception`` may swallow a
signal, so cleanup code sees it exactly as it sees Ctrl-C.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

from providers.errors import ConfigError, ProviderError
from shapes.errors import BrokerError, CatalogError, Exit

if TYPE_CHECKING:
    from broker.diagnostics import Diagnostic
    from broker.state import AttemptRecord, ClusterRecord


class InvalidRequest(BrokerError):
    """The user's input cannot be served as given; ``errors`` name each problem."""

    exit_code = Exit.INVALID
    http_status = 422

    def __init__(
        self, errors: Sequence[Diagnostic], warnings: Sequence[Diagnostic] | None = None
    ) -> None:
        self.errors = list(errors)
        self.warnings = list(warnings or [])
        super().__init__("; ".join(e.render() for e in self.errors))


class StoreError(BrokerError):
    """The state store cannot be opened, read or reached (the message never shows a
    password)."""

    exit_code = Exit.UNAVAILABLE
    http_status = 503


class StateError(BrokerError):
    """The store refused a change (illegal or lost transition)."""

    exit_code = Exit.INVALID
    http_status = 409


class NotFoundError(StateError):
    """No cluster has that id (or the prefix matches none, or several)."""

    http_status = 404


class ConflictError(StateError):
    """The cluster is not in a state that allows this change: someone else moved it."""

    exit_code = Exit.CONFLICT
    http_status = 409


class EnvError(BrokerError):
    """The cluster has no environment for that rank (not running, or no such rank)."""

    exit_code = Exit.INVALID
    http_status = 409


class ProvisionFailed(BrokerError):
    """No shape could be provisioned; the cluster is FAILED with ``reason``."""

    exit_code = Exit.NO_SHAPE
    http_status = 503

    def __init__(self, cluster: ClusterRecord, attempts: Sequence[AttemptRecord]) -> None:
        self.cluster = cluster
        self.attempts = list(attempts)
        super().__init__(f"cluster {cluster.id} FAILED ({cluster.reason}): {cluster.detail}")


class CleanupFailed(ProvisionFailed):
    """A failed attempt's nodes could not be removed: fallback stopped, nodes may be leaking."""

    exit_code = Exit.LEAK
    http_status = 500


class NoShape(BrokerError):
    """No catalog shape can serve the request as filtered: nothing was created."""

    exit_code = Exit.NO_SHAPE
    http_status = 422


class TeardownFailed(BrokerError):
    """Nodes of a cluster are still alive after terminate: they may bill; reconcile later."""

    exit_code = Exit.LEAK
    http_status = 502


class Cancelled(BrokerError):
    """Someone else moved the cluster (stop/release) while this process provisioned it.
    ``cluster`` is the cluster as that someone left it."""

    exit_code = Exit.CONFLICT
    http_status = 409

    def __init__(self, message: str, cluster: ClusterRecord | None = None) -> None:
        self.cluster = cluster
        super().__init__(message)


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM) asked this process to stop; raised in the main thread."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.cluster: ClusterRecord | None = None  # set once the cluster was stopped
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code_of(exc: BaseException) -> int:
    """The CLI exit code for an exception (KeyboardInterrupt counts as SIGINT)."""
    if isinstance(exc, Interrupted):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return Exit.SIGINT
    if isinstance(exc, BrokerError):
        return int(exc.exit_code)
    return Exit.ERROR


class Unauthorized(BrokerError):
    """No valid credentials: a missing, malformed, unknown or revoked API token (one answer
    for all, so nothing tells them apart)."""

    exit_code = Exit.INVALID
    http_status = 401


class Forbidden(BrokerError):
    """Valid credentials without the role this needs (an organisation admin)."""

    exit_code = Exit.INVALID
    http_status = 403


class CannotListen(BrokerError):
    """``broker serve`` cannot bind its address (in use, not this host's, no permission)."""

    exit_code = Exit.INVALID
    http_status = 500


class ServerExtraMissing(BrokerError):
    """``broker serve`` (or a remote client) without the server extra installed."""

    exit_code = Exit.INVALID
    http_status = 500


class CreditsExhausted(BrokerError):
    """The organisation's remaining credits cannot pay for the request's first hour (the
    message has the numbers)."""

    exit_code = Exit.NO_CREDITS
    http_status = 402


class ServiceUnavailable(BrokerError):
    """The broker service (``broker serve``) cannot be reached: connection refused or reset,
    a timeout, a name that does not resolve. The message names the URL, never the token."""

    exit_code = Exit.UNAVAILABLE
    http_status = 503


class ServiceError(BrokerError):
    """The broker service answered with an error no class of this tree names (an internal
    error, a redirect, a status or body that is not the broker's); ``status`` is its HTTP
    status (0 when there was none)."""

    exit_code = Exit.ERROR
    http_status = 502

    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


class WaitTimeout(BrokerError):
    """A remote provisioning was not over (RUNNING or ended) within the caller's wait;
    ``cluster`` is where it was then (the service may still be provisioning it)."""

    exit_code = Exit.NO_SHAPE
    http_status = 504

    def __init__(self, message: str, cluster: ClusterRecord | None = None) -> None:
        self.cluster = cluster
        super().__init__(message)


__all__ = [
    "BrokerError",
    "Cancelled",
    "CannotListen",
    "CatalogError",
    "CleanupFailed",
    "ConfigError",
    "ConflictError",
    "CreditsExhausted",
    "EnvError",
    "Exit",
    "Forbidden",
    "Interrupted",
    "InvalidRequest",
    "NoShape",
    "NotFoundError",
    "ProviderError",
    "ProvisionFailed",
    "ServerExtraMissing",
    "ServiceError",
    "ServiceUnavailable",
    "StateError",
    "StoreError",
    "TeardownFailed",
    "Unauthorized",
    "WaitTimeout",
    "exit_code_of",
]
