"""The simulated cloud (provider name ``sim``): dry runs, demos and integration tests.

It sells the catalog's shapes under their real ids (it simulates every cloud) and launches
gangs that exist only as rows in a SQLite file in the caller's state directory, so separate
processes see one simulated cloud. Nodes get private 10.0.0.0/8 addresses that nothing ever
contacts. A TOML *scenario* scripts what the cloud does per shape: capacity per zone,
launch latency, errors consumed one per call, and non-atomic (partial) gangs::

    [default]                   # every shape not matched below
    capacity_nodes = 1000       # per (shape, zone): nodes alive at once
    latency_ms = 0              # per launch call, failed ones too
    [shapes."aws:*:*:spot"]     # exact id (case-insensitive) or fnmatch glob; first match wins
    errors = ["throttle"]       # one per launch call, then normal
    zones = { "use1-az4" = 0 }  # per-zone capacity
    partial = true              # on a shortfall create what fits, then raise CapacityError
    terminate_errors = ["server_error"]
    preempt_after_s = 30        # preempt a node 30 s after its agent started, and/or
    preempt_on_line = "step 5"  # when a line of the command's output contains this
    preempt_zones = ["use1-az1"]  # only gangs launched there (left out: every zone; []: none)
    preempt_nodes = 1           # how many nodes of each gang (the first ones created)
    preempt_notice_s = 2.0      # seconds from the notice to the node's end
    [regions."us-east-1"]       # quota of a region, per market (left out: no limit)
    quota_vcpus = { on-demand = 192, spot = 96 }
    quota_gpus = { on-demand = 8 }
    quota_readable = true       # false: reading it fails as a missing permission does

Preemption needs nodes that run (a launch with ``LaunchRequest.agent``: see
:mod:`providers.sim_nodes`). Without a trigger (``preempt_after_s``, ``preempt_on_line``) nothing
is preempted. A node to preempt runs under a supervisor (:mod:`providers.sim_node`) that serves
it a GCP-style metadata endpoint: on the trigger ``instance/preempted`` turns TRUE (the agent
reports ``preempted`` and starts its final sync); ``preempt_notice_s`` later the node is
terminated in this file (a ``preempt`` call is recorded) and its processes are killed, as a
terminate does.

A launch that would take a region's vCPUs or GPUs of its market past the quota is refused
with a QuotaError (``QuotaExceeded``), as the clouds do; :meth:`SimProvider.quotas` reads the
limits and what the live nodes use, so the provisioner can skip the region first.

Every read-modify-write runs in ``BEGIN IMMEDIATE`` ... ``COMMIT``, so concurrent processes
never double-allocate capacity or addresses, or consume a scripted error twice. Each write
also prunes what is long gone: nodes terminated more than ``prune_after`` seconds ago (an
hour by default), their idempotency tokens, and calls recorded before then, so the file
stays bounded however many gangs come and go.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import secrets
import sqlite3
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypedDict, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from providers.base import TAG_CLUSTER, LaunchRequest, Node, NodeState
from providers.errors import (
    AuthError,
    CallTimeoutError,
    CapacityError,
    ConfigError,
    GlobalQuotaError,
    InvalidLaunchError,
    ProviderError,
    QuotaError,
    ScenarioError,
    ThrottledError,
    TransientError,
)
from providers.quotas import QuotaReport, QuotaUnit, ReportBuilder, sim_bucket
from shapes.catalog import Catalog
from shapes.model import Shape, parse_shape_id, shape_key

if TYPE_CHECKING:
    from providers.base import Provider, QuotaSource

__all__ = [
    "DB_FILENAME",
    "ERROR_KINDS",
    "ErrorKind",
    "SimCall",
    "SimDefaults",
    "SimPreemption",
    "SimProvider",
    "SimRegionQuota",
    "SimRule",
    "SimScenario",
    "SimShapeRule",
    "load_scenario",
    "sim_exists",
]

PROVIDER = "sim"
DB_FILENAME = "sim-cloud.sqlite3"
_SCHEMA_VERSION = 2  # 2: nodes.ended_at and calls.at, for pruning
PRUNE_AFTER = 3600.0  # seconds a terminated node (and its calls) is kept

ErrorKind = Literal[
    "capacity", "quota", "throttle", "server_error", "timeout", "auth", "global_quota", "invalid"
]

# kind -> (exception, the code a real cloud would report)
ERROR_KINDS: Mapping[ErrorKind, tuple[type[ProviderError], str]] = {
    "capacity": (CapacityError, "InsufficientCapacity"),
    "quota": (QuotaError, "QuotaExceeded"),
    "throttle": (ThrottledError, "Throttling"),
    "server_error": (TransientError, "InternalError"),
    "timeout": (CallTimeoutError, "RequestTimeout"),
    "auth": (AuthError, "AuthFailure"),
    "global_quota": (GlobalQuotaError, "GlobalQuotaExceeded"),
    "invalid": (InvalidLaunchError, "InvalidParameterValue"),
}
assert set(ERROR_KINDS) == set(get_args(ErrorKind))


_Count = Annotated[StrictInt, Field(ge=0)]
_Millis = Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]  # an integer is fine too
_GLOB_CHARS = frozenset("*?[")


def _check_pattern(pattern: str) -> str:
    if not _GLOB_CHARS & set(pattern):
        parse_shape_id(pattern)  # an exact id must be a well-formed one: catches typos
    return pattern


_Pattern = Annotated[str, AfterValidator(_check_pattern)]
_Seconds = Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]  # an integer is fine too


def _check_line(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError(f"a line of output holds no line break (got {text!r})")
    return text


_Line = Annotated[StrictStr, Field(min_length=1), AfterValidator(_check_line)]
_Zone = Annotated[StrictStr, Field(min_length=1)]


class SimDefaults(BaseModel):
    """``[default]``: what every shape gets unless its ``[shapes.*]`` entry says otherwise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    capacity_nodes: _Count = 1000
    latency_ms: _Millis = 0
    errors: tuple[ErrorKind, ...] = ()
    zones: dict[str, _Count] = Field(default_factory=dict)
    partial: StrictBool = False
    terminate_errors: tuple[ErrorKind, ...] = ()
    preempt_after_s: _Seconds | None = None
    preempt_on_line: _Line | None = None
    preempt_zones: tuple[_Zone, ...] | None = None  # None: every zone
    preempt_nodes: Annotated[StrictInt, Field(ge=1)] = 1
    preempt_notice_s: _Seconds = 2.0


class SimShapeRule(BaseModel):
    """One ``[shapes."<id or glob>"]`` entry; a key left out (None) falls back to [default]."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    capacity_nodes: _Count | None = None
    latency_ms: _Millis | None = None
    errors: tuple[ErrorKind, ...] | None = None
    zones: dict[str, _Count] | None = None
    partial: StrictBool | None = None
    terminate_errors: tuple[ErrorKind, ...] | None = None
    preempt_after_s: _Seconds | None = None
    preempt_on_line: _Line | None = None
    preempt_zones: tuple[_Zone, ...] | None = None
    preempt_nodes: Annotated[StrictInt, Field(ge=1)] | None = None
    preempt_notice_s: _Seconds | None = None


@dataclass(frozen=True)
class SimPreemption:
    """When the sim preempts nodes of a shape: ``after_s`` seconds after a node's agent
    started and/or when a line of its command's output contains ``on_line`` (at least one of
    them), in gangs launched in ``zones`` (None: every zone), the first ``nodes`` nodes of each
    gang, ``notice_s`` seconds after the notice."""

    after_s: float | None
    on_line: str | None
    zones: frozenset[str] | None
    nodes: int
    notice_s: float

    def applies_to(self, zone: str) -> bool:
        return self.zones is None or zone in self.zones


@dataclass(frozen=True)
class SimRule:
    """What the sim does for one shape: the first matching entry, completed by [default].

    ``errors_entry``/``terminate_errors_entry`` name the entry whose list is used: the
    error counters are per entry, so shapes sharing one entry's list consume it together.
    """

    capacity_nodes: int
    latency_ms: float
    errors: tuple[ErrorKind, ...]
    errors_entry: str
    zones: Mapping[str, int]
    partial: bool
    terminate_errors: tuple[ErrorKind, ...]
    terminate_errors_entry: str
    preemption: SimPreemption | None = None  # None: its nodes are never preempted

    def capacity(self, zone: str) -> int:
        return self.zones.get(zone, self.capacity_nodes)


Market = Literal["on-demand", "spot"]


class SimRegionQuota(BaseModel):
    """One ``[regions."<region>"]`` entry: the region's quota per market (a market left
    out has none), and whether reading it works."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quota_vcpus: dict[Market, _Count] = Field(default_factory=dict)
    quota_gpus: dict[Market, _Count] = Field(default_factory=dict)
    quota_readable: StrictBool = True


class SimScenario(BaseModel):
    """A scripted simulated cloud. The default scenario has plenty of capacity, no errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: SimDefaults = Field(default_factory=SimDefaults)
    shapes: dict[_Pattern, SimShapeRule] = Field(default_factory=dict)  # file order matters
    regions: dict[str, SimRegionQuota] = Field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> SimScenario:
        """Read a scenario file; a ScenarioError (a ConfigError, and a ValueError) names the
        file, the key and (if found) the line."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(f"cannot read sim scenario {os.fspath(path)}: {exc}") from exc
        return cls.from_toml_text(text, source=os.fspath(path))

    @classmethod
    def from_toml_text(cls, text: str, *, source: str = "<scenario>") -> SimScenario:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # its message carries line and column
            raise ScenarioError(f"sim scenario {source}: invalid TOML: {exc}") from None
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            problems = [_describe_problem(err, text) for err in exc.errors()]
            raise ScenarioError(f"sim scenario {source}: " + "; ".join(problems)) from None

    def entry_for(self, shape_id: str) -> str | None:
        """The pattern of the first ``[shapes.*]`` entry matching this id, None if none does."""
        key = shape_key(shape_id)
        for pattern in self.shapes:
            wanted = pattern.strip().lower()
            if key == wanted or (_GLOB_CHARS & set(wanted) and fnmatch.fnmatchcase(key, wanted)):
                return pattern
        return None

    def rule_for(self, shape_id: str) -> SimRule:
        """What the sim does for this shape: its entry's keys, the others from [default]."""
        d = self.default
        pattern = self.entry_for(shape_id)
        r = SimShapeRule() if pattern is None else self.shapes[pattern]
        entry = f"shapes.{pattern}"
        return SimRule(
            capacity_nodes=d.capacity_nodes if r.capacity_nodes is None else r.capacity_nodes,
            latency_ms=d.latency_ms if r.latency_ms is None else r.latency_ms,
            errors=d.errors if r.errors is None else r.errors,
            errors_entry="default" if r.errors is None else entry,
            zones=d.zones if r.zones is None else r.zones,
            partial=d.partial if r.partial is None else r.partial,
            terminate_errors=d.terminate_errors
            if r.terminate_errors is None
            else r.terminate_errors,
            terminate_errors_entry="default" if r.terminate_errors is None else entry,
            preemption=_preemption(d, r),
        )


def _preemption(d: SimDefaults, r: SimShapeRule) -> SimPreemption | None:
    """The preemption of a shape: each key from its entry, else from [default]."""
    after_s = d.preempt_after_s if r.preempt_after_s is None else r.preempt_after_s
    on_line = d.preempt_on_line if r.preempt_on_line is None else r.preempt_on_line
    if after_s is None and on_line is None:
        return None
    zones = d.preempt_zones if r.preempt_zones is None else r.preempt_zones
    return SimPreemption(
        after_s=after_s,
        on_line=on_line,
        zones=None if zones is None else frozenset(zones),
        nodes=d.preempt_nodes if r.preempt_nodes is None else r.preempt_nodes,
        notice_s=d.preempt_notice_s if r.preempt_notice_s is None else r.preempt_notice_s,
    )


def load_scenario(path: str | os.PathLike[str] | None) -> SimScenario:
    """The scenario in this TOML file, or the default scenario for None; a ScenarioError
    (a ConfigError) for a missing, unreadable or invalid file."""
    return SimScenario() if path is None else SimScenario.from_toml(path)


def sim_exists(state_dir: Path) -> bool:
    """Has the simulated cloud been used in this state directory? Opens nothing."""
    return (state_dir / DB_FILENAME).exists()


def _toml_key(part: str) -> str:
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)


def _describe_problem(err: Mapping[str, Any], text: str) -> str:
    loc = [p for p in err["loc"] if p != "[key]"]
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else ("." if where else "") + _toml_key(part)
    if err["type"] == "extra_forbidden":
        if len(loc) <= 1:
            allowed = list(SimScenario.model_fields)
        elif loc[0] == "default":
            allowed = list(SimDefaults.model_fields)
        elif loc[0] == "regions":
            allowed = list(SimRegionQuota.model_fields)
        else:
            allowed = list(SimShapeRule.model_fields)
        what = f"unknown key {loc[-1]!r} (known keys: {', '.join(allowed)})"
    elif err["type"] == "literal_error" and loc and loc[0] == "regions":
        what = f"unknown market {err['input']!r} (known markets: on-demand, spot)"
    elif err["type"] == "literal_error":
        what = f"unknown error kind {err['input']!r} (known kinds: {', '.join(ERROR_KINDS)})"
    elif err["type"] == "value_error":
        what = str(err["ctx"]["error"])
    else:
        what = f"{err['msg']} (got {err['input']!r})"
    line = _line_of(text, [p for p in loc if isinstance(p, str)])
    return f"{where or 'top level'}: {what}" + (f" (line {line})" if line else "")


def _line_of(text: str, keys: Sequence[str]) -> int | None:
    """Best effort: the line of the innermost key, looked for inside its table."""
    if not keys:
        return None

    def defines(line: str, key: str) -> bool:
        return re.search(rf"(?:^|[\s{{,.\[\"]){re.escape(key)}\"?\s*[=.\]]", line) is not None

    lines = text.splitlines()
    table = keys[:2] if keys[0] == "shapes" and len(keys) > 1 else keys[:1]
    header = next(
        (
            i
            for i, line in enumerate(lines)
            if line.lstrip().startswith("[") and all(defines(line, k) for k in table)
        ),
        None,
    )
    start = header or 0
    for i in range(start, len(lines)):
        if i > start and lines[i].lstrip().startswith("["):
            break
        if defines(lines[i], keys[-1]):
            return i + 1
    return None if header is None else header + 1


class SimCall(TypedDict):
    """One recorded call: ``outcome`` is "ok", "idempotent" or the error code raised. A
    ``preempt`` is the simulated cloud's own: a node it preempted (``nodes``), terminated."""

    op: Literal["launch", "terminate", "preempt"]
    shape_id: str | None
    zone: str | None
    token: str | None
    count: int  # nodes asked for (launch) or given (terminate); 1 (preempt)
    nodes: list[str]  # ids created (launch) or terminated (terminate, preempt) by this call
    outcome: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    provider_id TEXT NOT NULL UNIQUE,
    shape_id TEXT NOT NULL,
    shape_key TEXT NOT NULL,
    region TEXT NOT NULL,
    zone TEXT NOT NULL,
    state TEXT NOT NULL,
    private_ip TEXT NOT NULL UNIQUE,
    tags TEXT NOT NULL,
    cluster TEXT,
    token TEXT NOT NULL,
    ready_at REAL NOT NULL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS nodes_by_shape_zone ON nodes (shape_key, zone, state);
CREATE INDEX IF NOT EXISTS nodes_by_cluster ON nodes (cluster, state);
CREATE INDEX IF NOT EXISTS nodes_by_token ON nodes (token);
CREATE INDEX IF NOT EXISTS nodes_by_end ON nodes (ended_at) WHERE ended_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, shape_key TEXT NOT NULL, zone TEXT NOT NULL, count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, used INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, shape_id TEXT, zone TEXT,
    token TEXT, count INTEGER NOT NULL, nodes TEXT NOT NULL, outcome TEXT NOT NULL, at REAL
);
CREATE INDEX IF NOT EXISTS calls_by_at ON calls (at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_ALIVE = (NodeState.PENDING.value, NodeState.RUNNING.value)
_ALIVE_SQL = "state IN ('pending', 'running')"
_MAX_HOST = (1 << 24) - 2  # 10.255.255.254


def _error(kind: ErrorKind, message: str) -> ProviderError:
    cls, code = ERROR_KINDS[kind]
    return cls(f"simulated {code}: {message}", code=code, provider=PROVIDER)


class SimProvider:
    """The simulated cloud; implements :class:`providers.base.Provider`."""

    name: str = PROVIDER

    def __init__(
        self,
        state_dir: Path | str,
        catalog: Catalog,
        scenario: SimScenario | None = None,
        *,
        clock: Callable[[], float] = time.time,
        prune_after: float = PRUNE_AFTER,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.catalog = catalog
        self.scenario = scenario if scenario is not None else SimScenario()
        self.db_path = self.state_dir / DB_FILENAME
        self.clock = clock
        self.prune_after = prune_after
        self._rules: dict[str, SimRule] = {}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._init_schema()
        except sqlite3.DatabaseError as exc:  # not a database, or not ours
            raise ConfigError(
                f"{self.db_path}: cannot open the simulated cloud's file ({exc}); "
                "move it away to start a fresh simulated cloud"
            ) from None

    def _init_schema(self) -> None:
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, _SCHEMA_VERSION):
                db.execute("ROLLBACK")
                raise ConfigError(
                    f"{self.db_path}: unknown simulated cloud schema version {version} "
                    f"(this burst-broker knows {_SCHEMA_VERSION}; a newer one wrote it?)"
                )
            if version == 1:  # before pruning: what is terminated now ends now
                db.execute("ALTER TABLE nodes ADD COLUMN ended_at REAL")
                db.execute("ALTER TABLE calls ADD COLUMN at REAL")
                now = self.clock()
                db.execute("UPDATE nodes SET ended_at = ? WHERE state = 'terminated'", (now,))
                db.execute("UPDATE calls SET at = ?", (now,))
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            db.execute("COMMIT")

    # -- the Provider interface ------------------------------------------------------------

    def list_shapes(self) -> list[Shape]:
        return list(self.catalog.shapes)

    def launch(self, request: LaunchRequest, *, timeout: float) -> list[Node]:
        shape = self.catalog.get(request.shape.id)
        if shape is None or request.zone not in shape.zones:
            with self._write() as db:
                self._record(db, request, [], "InvalidParameterValue")
            if shape is None:
                raise _error("invalid", f"shape {request.shape.id} is not sold here")
            raise _error("invalid", f"zone {request.zone!r} is not one of {shape.id}'s zones")

        rule = self._rule(shape.id)
        error: ProviderError | None = None
        created: list[str] = []  # nodes this call creates; a repeated token creates none
        with self._write() as db:
            existing = [row["provider_id"] for row in self._token_nodes(db, request.token)]
            if existing:  # the same token again: the gang it made, if it is whole
                error = self._check_repeat(db, request, shape.key, len(existing))
                ids = existing
            else:
                created, error = self._launch_new(db, request, shape, rule)
                ids = created
            if error is not None:
                self._record(db, request, created, error.code)
            ready_at = max((row["ready_at"] for i in ids if (row := self._row(db, i))), default=0)
        if error is not None:
            # A cloud takes its time to say no, too: a failed call costs the same latency
            # (bounded by the call's timeout), so failover timings are realistic.
            time.sleep(min(rule.latency_ms / 1000, max(timeout, 0.0)))
            raise error

        wait = ready_at - self.clock()
        if wait > timeout:  # the call gives up; the cloud keeps the pending nodes (lost launch)
            time.sleep(max(timeout, 0.0))
            with self._write() as db:
                self._record(db, request, created, "RequestTimeout")
            raise _error(
                "timeout", f"{request.count} x {shape.id} still pending after {timeout:g}s"
            )
        if wait > 0:
            time.sleep(wait)
        with self._write() as db:
            db.executemany(
                "UPDATE nodes SET state = 'running' WHERE provider_id = ? AND state = 'pending'",
                [(i,) for i in ids],
            )
            self._record(db, request, created, "idempotent" if existing else "ok")
            rows = [self._row(db, i) for i in ids]
        nodes = [_node(row) for row in rows if row is not None]
        if request.agent is not None and created:  # each new node boots its agent
            from providers.sim_nodes import NodePreemption, start_agents

            fresh = set(created)
            preemptions: dict[str, NodePreemption] = {}
            rule_preemption = rule.preemption
            if rule_preemption is not None and rule_preemption.applies_to(request.zone):
                for provider_id in created[: rule_preemption.nodes]:  # the first ones created
                    preemptions[provider_id] = NodePreemption(
                        sim_db=self.db_path,
                        after_s=rule_preemption.after_s,
                        on_line=rule_preemption.on_line,
                        notice_s=rule_preemption.notice_s,
                    )
            start_agents(
                self.state_dir,
                [(n.provider_id, n.private_ip or "") for n in nodes if n.provider_id in fresh],
                request.agent,
                preemptions,
            )
        return nodes

    def describe(self, cluster_id: str) -> list[Node]:
        return self._select(f"cluster = ? AND {_ALIVE_SQL}", (cluster_id,))

    def terminate(self, nodes: Sequence[Node]) -> None:
        ids = list(dict.fromkeys(n.provider_id for n in nodes))
        error: ProviderError | None = None
        with self._write() as db:
            rows = [row for i in ids if (row := self._row(db, i)) and row["state"] in _ALIVE]
            seen: set[str] = set()
            for row in rows:
                rule = self._rule(row["shape_id"])
                if rule.terminate_errors_entry in seen:
                    continue
                seen.add(rule.terminate_errors_entry)
                kind = self._consume(
                    db, rule.terminate_errors_entry, "terminate", rule.terminate_errors
                )
                if kind is not None and error is None:
                    error = _error(kind, f"scripted terminate error for {row['shape_id']}")
            done = [] if error is not None else [row["provider_id"] for row in rows]
            now = self.clock()
            db.executemany(
                "UPDATE nodes SET state = 'terminated', ended_at = ? WHERE provider_id = ?",
                [(now, i) for i in done],
            )
            db.execute(
                "INSERT INTO calls (op, count, nodes, outcome, at) "
                "VALUES ('terminate', ?, ?, ?, ?)",
                (len(ids), json.dumps(done), "ok" if error is None else error.code, now),
            )
        if error is not None:
            raise error
        if done:  # a terminated machine takes its processes with it
            from providers.sim_nodes import stop_agents

            stop_agents(self.state_dir, done)

    def list_tagged(self) -> list[Node]:
        return self._select(f"cluster IS NOT NULL AND {_ALIVE_SQL}", ())

    def quotas(self, region: str) -> QuotaReport:
        """The scenario's quotas of ``region`` with what its live nodes use (none: the
        region has no limit); ``quota_readable = false`` reads as a missing permission."""
        found = ReportBuilder(PROVIDER, region)
        entry = self.scenario.regions.get(region)
        if entry is None:
            return found.report()
        if not entry.quota_readable:
            found.warn(f"the quotas of {region} could not be read: permission missing (simulated)")
            return found.report()
        with closing(self._connect()) as db:
            used = self._usage(db, region)
        for unit, limits in (
            (QuotaUnit.VCPU, entry.quota_vcpus),
            (QuotaUnit.GPU, entry.quota_gpus),
        ):
            for market, limit in sorted(limits.items()):
                bucket = sim_bucket(market, unit)
                found.add(
                    bucket,
                    f"simulated {market} {unit.value}s",
                    unit,
                    market,
                    limit,
                    used.get(bucket, 0.0),
                )
        return found.report()

    # -- for tests and `broker util` -------------------------------------------------------

    def all_nodes(self, include_terminated: bool = False) -> list[Node]:
        return self._select("1" if include_terminated else _ALIVE_SQL, ())

    def calls(self) -> list[SimCall]:
        """Every launch and terminate call made against this simulated cloud, and every
        node it preempted, oldest first."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM calls ORDER BY seq").fetchall()
        return [
            SimCall(
                op=row["op"],
                shape_id=row["shape_id"],
                zone=row["zone"],
                token=row["token"],
                count=row["count"],
                nodes=json.loads(row["nodes"]),
                outcome=row["outcome"],
            )
            for row in rows
        ]

    # -- internals -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # One connection per operation: safe across threads and forked processes.
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: safe against crashes, no fsync per commit
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: the database lock is held from the first read to COMMIT."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                self._prune(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _prune(self, db: sqlite3.Connection) -> None:
        """Forget what ended more than ``prune_after`` seconds ago (inside the caller's
        transaction): terminated nodes, tokens no node uses any more, old calls."""
        before = self.clock() - self.prune_after
        gone = db.execute(
            "DELETE FROM nodes WHERE ended_at IS NOT NULL AND ended_at < ? AND state = ?",
            (before, NodeState.TERMINATED.value),
        ).rowcount
        if gone:
            db.execute("DELETE FROM tokens WHERE token NOT IN (SELECT token FROM nodes)")
        db.execute("DELETE FROM calls WHERE at < ?", (before,))

    def _rule(self, shape_id: str) -> SimRule:
        key = shape_key(shape_id)
        rule = self._rules.get(key)
        if rule is None:
            rule = self._rules[key] = self.scenario.rule_for(shape_id)
        return rule

    def _launch_new(
        self, db: sqlite3.Connection, request: LaunchRequest, shape: Shape, rule: SimRule
    ) -> tuple[list[str], ProviderError | None]:
        """Steps 2-4 of a launch, inside the caller's transaction: (nodes created, error)."""
        kind = self._consume(db, rule.errors_entry, "launch", rule.errors)
        if kind is not None:
            return [], _error(kind, f"scripted for {shape.id} in {request.zone}")
        over = self._over_quota(db, shape, request.count)
        if over is not None:
            return [], _error("quota", over)
        capacity = rule.capacity(request.zone)
        free = max(capacity - self._alive_count(db, shape.key, request.zone), 0)
        if free >= request.count:
            ready_at = self.clock() + rule.latency_ms / 1000
            return self._create(
                db, request, shape.key, request.count, NodeState.PENDING, ready_at
            ), None
        # A non-atomic cloud keeps what it managed to create before running out.
        created = self._create(
            db, request, shape.key, free if rule.partial else 0, NodeState.RUNNING, self.clock()
        )
        message = (
            f"{shape.id} in {request.zone}: {request.count} node(s) asked, room for {free} "
            f"(capacity {capacity})"
        )
        if created:
            message += f"; {len(created)} created and left running (partial gang)"
        return created, _error("capacity", message)

    def _usage(self, db: sqlite3.Connection, region: str) -> dict[str, float]:
        """vCPUs and GPUs of the live nodes of ``region``, by quota bucket (market, unit)."""
        used: dict[str, float] = {}
        rows = db.execute(
            f"SELECT shape_id, COUNT(*) AS n FROM nodes WHERE region = ? AND {_ALIVE_SQL} "
            "GROUP BY shape_id",
            (region,),
        )
        for row in rows.fetchall():
            shape = self.catalog.get(row["shape_id"])
            if shape is None:
                continue
            market = shape.provisioning.value
            for unit, each in ((QuotaUnit.VCPU, shape.vcpus), (QuotaUnit.GPU, shape.gpus_per_node)):
                bucket = sim_bucket(market, unit)
                used[bucket] = used.get(bucket, 0.0) + each * row["n"]
        return used

    def _over_quota(self, db: sqlite3.Connection, shape: Shape, count: int) -> str | None:
        """Why a gang of ``count`` x ``shape`` would exceed its region's quota, or None."""
        entry = self.scenario.regions.get(shape.region)
        if entry is None:
            return None
        market = shape.provisioning.value
        used = self._usage(db, shape.region)
        for unit, limits, each in (
            (QuotaUnit.VCPU, entry.quota_vcpus, shape.vcpus),
            (QuotaUnit.GPU, entry.quota_gpus, shape.gpus_per_node),
        ):
            limit = limits.get(market)  # type: ignore[call-overload]
            if limit is None:
                continue
            in_use = used.get(sim_bucket(market, unit), 0.0)
            if in_use + count * each > limit:
                return (
                    f"{count} x {shape.id} need {count * each} {unit.value}s; {market} quota "
                    f"of {shape.region} is {limit}, {in_use:g} in use"
                )
        return None

    def _select(self, where: str, params: tuple[str, ...]) -> list[Node]:
        with closing(self._connect()) as db:
            rows = db.execute(f"SELECT * FROM nodes WHERE {where} ORDER BY seq", params)
            return [_node(row) for row in rows.fetchall()]

    @staticmethod
    def _row(db: sqlite3.Connection, provider_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM nodes WHERE provider_id = ?", (provider_id,)
        ).fetchone()
        return row

    @staticmethod
    def _token_nodes(db: sqlite3.Connection, token: str) -> list[sqlite3.Row]:
        return db.execute(
            f"SELECT * FROM nodes WHERE token = ? AND {_ALIVE_SQL} ORDER BY seq", (token,)
        ).fetchall()

    @staticmethod
    def _check_repeat(
        db: sqlite3.Connection, request: LaunchRequest, key: str, alive: int
    ) -> ProviderError | None:
        """A repeated token: fine if it names the same gang and that gang is whole."""
        row = db.execute("SELECT * FROM tokens WHERE token = ?", (request.token,)).fetchone()
        if row is not None and (row["shape_key"], row["zone"], row["count"]) != (
            key,
            request.zone,
            request.count,
        ):
            return InvalidLaunchError(
                f"token {request.token!r} was used for {row['count']} x {row['shape_key']} "
                f"in {row['zone']}",
                code="IdempotentParameterMismatch",
                provider=PROVIDER,
            )
        if alive < request.count:
            return _error(
                "capacity",
                f"token {request.token!r} already made a partial gang of {alive} of "
                f"{request.count} nodes; launch again with a new token",
            )
        return None

    @staticmethod
    def _consume(
        db: sqlite3.Connection, entry: str, op: str, kinds: tuple[ErrorKind, ...]
    ) -> ErrorKind | None:
        """The next scripted error of this entry's list (None once used up), consumed."""
        if not kinds:
            return None
        # The list is part of the key: an edited scenario starts its list afresh.
        digest = hashlib.sha256(json.dumps(kinds).encode()).hexdigest()[:12]
        key = f"{op}|{entry}|{digest}"
        row = db.execute("SELECT used FROM counters WHERE key = ?", (key,)).fetchone()
        used = 0 if row is None else int(row["used"])
        if used >= len(kinds):
            return None
        db.execute(
            "INSERT INTO counters (key, used) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET used = excluded.used",
            (key, used + 1),
        )
        return kinds[used]

    @staticmethod
    def _alive_count(db: sqlite3.Connection, key: str, zone: str) -> int:
        row = db.execute(
            f"SELECT COUNT(*) FROM nodes WHERE shape_key = ? AND zone = ? AND {_ALIVE_SQL}",
            (key, zone),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _create(
        db: sqlite3.Connection,
        request: LaunchRequest,
        key: str,
        count: int,
        state: NodeState,
        ready_at: float,
    ) -> list[str]:
        if count <= 0:
            return []
        row = db.execute("SELECT value FROM meta WHERE key = 'next_ip'").fetchone()
        host = 1 if row is None else int(row["value"])
        hosts: list[int] = []
        while len(hosts) < count:
            if host & 0xFF not in (0, 255):  # skip .0 and .255: they look like no host
                hosts.append(host)
            host += 1
        if hosts[-1] > _MAX_HOST:
            raise CapacityError(
                "the simulated 10.0.0.0/8 network has no free addresses",
                code="InsufficientFreeAddressesInSubnet",
                provider=PROVIDER,
            )
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('next_ip', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (host,),
        )
        tags = dict(request.tags)
        ids: list[str] = []
        for h in hosts:
            provider_id = f"sim-{secrets.token_hex(6)}"
            while SimProvider._row(db, provider_id) is not None:
                provider_id = f"sim-{secrets.token_hex(6)}"
            db.execute(
                "INSERT INTO nodes (provider_id, shape_id, shape_key, region, zone, state, "
                "private_ip, tags, cluster, token, ready_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    provider_id,
                    request.shape.id,
                    key,
                    request.shape.region,
                    request.zone,
                    state.value,
                    str(IPv4Address(0x0A000000 + h)),
                    json.dumps(tags, sort_keys=True),
                    tags.get(TAG_CLUSTER),
                    request.token,
                    ready_at,
                ),
            )
            ids.append(provider_id)
        db.execute(
            "INSERT OR REPLACE INTO tokens (token, shape_key, zone, count) VALUES (?, ?, ?, ?)",
            (request.token, key, request.zone, request.count),
        )
        return ids

    def _record(
        self, db: sqlite3.Connection, request: LaunchRequest, ids: list[str], outcome: str
    ) -> None:
        db.execute(
            "INSERT INTO calls (op, shape_id, zone, token, count, nodes, outcome, at) "
            "VALUES ('launch', ?, ?, ?, ?, ?, ?, ?)",
            (
                request.shape.id,
                request.zone,
                request.token,
                request.count,
                json.dumps(ids),
                outcome,
                self.clock(),
            ),
        )


def _node(row: sqlite3.Row) -> Node:
    return Node(
        provider=PROVIDER,
        provider_id=row["provider_id"],
        shape_id=row["shape_id"],
        region=row["region"],
        zone=row["zone"],
        state=NodeState(row["state"]),
        private_ip=row["private_ip"],
        tags=json.loads(row["tags"]),
    )


if TYPE_CHECKING:

    def _implements_provider(sim: SimProvider) -> Provider:
        return sim

    def _implements_quotas(sim: SimProvider) -> QuotaSource:
        return sim
