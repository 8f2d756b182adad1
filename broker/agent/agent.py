"""The burst-broker node agent: runs a cluster's command on one node for the broker service.

One module, Python standard library only, runnable as ``python3 -I agent.py`` on Python 3.8
or newer: the boot script downloads it from the service (checking its SHA-256) onto each
node, nothing is installed there. The contract is
docs/agent-protocol.md; in brief, every call is ``POST <service>/v1/agent/<name>`` with a
JSON body and ``Authorization: Bearer <node token>``:

1. ``register`` until the answer's state is "run" (every node of the gang has registered);
   that answer carries this node's rank, its environment, the command and the image.
2. Run the command: ``bash -c COMMAND`` in a new process group with the node's environment
   plus the service's (artifact paths re-rooted under ``--root``), or ``docker pull`` then
   ``docker run`` when there is an image. Before the command (after the pull), when the
   answer says ``inputs``, the files ``inputs`` lists are downloaded under ``--root``.
   ``started`` once it runs.
3. While it runs: ``logs`` batches (stdout and stderr merged, numbered by ``seq``, from a
   bounded spool), a ``heartbeat`` every ``heartbeat_every`` seconds, and (one thread) a sync
   of each artifact kind's directory on its interval: changed files go to the artifact store
   by signed URLs (``artifact_upload``, ``artifact_complete``, ``artifact_report``).
4. When it ended: a final sync of every kind (bounded by ``final_sync_timeout``), then ``exit``
   with the exit code (or signal), the reason and the last lines of output.

With ``--output-copy FILE``, every line of the command's output (not the agent's own lines)
is also appended to that local file as it is read, up to ``--output-copy-limit`` bytes (64 MiB;
one line then says the copy stopped), for whatever on the node wants to follow it.

With ``--cloud aws|gcp|azure``, threads watch that cloud's preemption notice in the instance
metadata (``--metadata-url``): on a notice, ``preempted`` at once, then a final sync within the
time left, while the command goes on (the service decides whether to stop it).

Connection errors and 5xx answers are retried with backoff (0.5 s doubling to 30 s) for as
long as it takes. A "stop" state in any answer stops the command (SIGTERM to its process
group, SIGKILL after ``stop_grace``); a 401 stops it too and ends the agent with exit code 3.
The agent's own diagnostics go to stderr; the token is never printed, nor is a signed URL
(the file's path is, instead). Heartbeats go on while inputs download and during the final
sync, so the service does not take a busy node for a lost one.
"""

from __future__ import annotations

import argparse
import calendar
import collections
import contextlib
import email.utils
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, TypeVar

AGENT_VERSION = "1"
EXIT_OK, EXIT_USAGE, EXIT_TOKEN = 0, 2, 3

MAX_LINE_CHARS = 4096  # longer lines are cut
MAX_BATCH_BYTES = 256 * 1024  # a logs body stays under this
LAST_LINES = 20  # lines of output in the exit report
DEFAULT_SPOOL_LINES = 20_000  # lines kept while the service cannot take them
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
HTTP_TIMEOUT = 15.0

# The variables holding artifact paths (broker/env.py's ARTIFACT_PATHS; a test keeps both equal).
ARTIFACT_VARIABLES = (
    "OUTPUT_PATH",
    "CHECKPOINT_ARTIFACT_PATH",
    "CRUD_ARTIFACT_PATH",
    "LOSSY_ARTIFACT_PATH",
    "LOG_ARTIFACT_PATH",
)

# Artifacts and inputs (docs/agent-protocol.md, v1.1).
FINAL_SYNC_TIMEOUT = 300.0  # seconds, unless the "run" answer says otherwise
SYNC_BOUNDS = (0.05, 86_400.0)  # seconds between two syncs of a kind
TRANSFER_TRIES = 3  # per signed request of an upload (transient failures) and per input file
TRANSFER_TIMEOUT = 60.0  # seconds a store's socket may stay silent
BLOCK = 1024 * 1024  # bytes read from a file or a response at a time
PROGRESS_EVERY = 5.0  # seconds between two progress lines of the inputs
URL_MARGIN = 60.0  # an input's signed URL that expires sooner than this is asked for again
REPORT_GRACE = 10.0  # seconds past the final sync's deadline for its reports
MANIFEST = "sync-manifest.json"  # in --state-dir
MANIFEST_SAVE_EVERY = 2.0  # seconds between two writes of the manifest during a sync
SYNC_STREAMS = 8  # files a sync sends at once: each is a service call and a PUT, so latency
# (not bandwidth) bounds a directory of small files sent one by one; a preemption notice
# gives the final sync 30 s
MAX_ERRORS = 5  # messages in one artifact_report
AGENT_LINE = "[burst-agent] "  # the agent's own lines in the command's log
OUTPUT_COPY_LIMIT = 64 * 1024 * 1024  # bytes --output-copy's file may reach

# Each artifact kind's directory: the variables naming it (re-rooted), else the seed's path.
KIND_DIRS = {
    "checkpoints": (("CHECKPOINT_ARTIFACT_PATH", "OUTPUT_PATH"), "/mnt/checkpoints"),
    "crud": (("CRUD_ARTIFACT_PATH",), "/mnt/crud"),
    "lossy": (("LOSSY_ARTIFACT_PATH",), "/mnt/lossy"),
    "logs": (("LOG_ARTIFACT_PATH",), "/mnt/logs"),
}

# The bounds of the timings an answer may set (see Timings).
TIMING_BOUNDS = {
    "retry_after": (0.05, 300.0),
    "heartbeat_every": (0.05, 3600.0),
    "stop_grace": (0.0, 3600.0),
    "log_batch_seconds": (0.01, 60.0),
    "log_batch_lines": (1, 100_000),
}

_who = "burst-agent"


def log(message: str) -> None:
    """One diagnostic line on stderr, with a UTC timestamp."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stderr.write(f"{stamp} {_who}: {message}\n")
    sys.stderr.flush()


class TokenRefused(Exception):
    """A 401: the cluster ended or the token is wrong."""


class CallRefused(Exception):
    """A 4xx other than 401 (or a redirect): not retried."""

    def __init__(self, name: str, status: int, detail: str) -> None:
        super().__init__(f"{name} refused with HTTP {status}: {detail}")
        self.status = status


class BadAnswer(Exception):
    """A "run" answer to ``register`` that does not say what to run."""


class Retryable(Exception):
    """A connection error, a timeout, a 5xx or an answer that is not a JSON object."""


class Signalled(Exception):
    """The agent itself got SIGTERM, SIGINT or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class Backoff:
    """0.5 s doubling to 30 s; each delay is shortened by up to a quarter at random so that
    the agents of many nodes do not all come back in the same instant."""

    def __init__(self) -> None:
        self.delay = BACKOFF_FIRST

    def sleep(self) -> None:
        time.sleep(self.delay * random.uniform(0.75, 1.0))
        self.delay = min(self.delay * 2, BACKOFF_MAX)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the token elsewhere: it is an error instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """The agent calls of one cluster: JSON over HTTP, retried while retrying can help."""

    def __init__(self, service: str, cluster_id: str, token: str) -> None:
        self.base = service.rstrip("/") + "/v1/agent/"
        self.cluster_id = cluster_id
        self._token = token
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:
        return f"Client({self.base!r}, {self.cluster_id!r})"

    def post(self, name: str, body: dict[str, Any], budget: Budget | None = None) -> dict[str, Any]:
        """The answer to ``name``, retried until it comes (or, with a ``budget``, until the
        budget runs out: Retryable); TokenRefused or CallRefused."""
        payload = dict(body, cluster_id=self.cluster_id)
        backoff = Backoff()
        while True:
            try:
                return self.post_once(name, payload)
            except Retryable as error:
                left = None if budget is None else budget.left()
                if left is not None and left < backoff.delay:
                    raise
                log(f"{name}: {error}; retrying in about {backoff.delay:.1f}s")
                backoff.sleep()

    def post_once(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        request = urllib.request.Request(
            self.base + name,
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": "Bearer " + self._token,
                "User-Agent": "burst-broker-agent/" + AGENT_VERSION,
            },
        )
        try:
            with self._opener.open(request, timeout=HTTP_TIMEOUT) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = _error_detail(error)
            if error.code == 401:
                raise TokenRefused(detail) from None
            if error.code >= 500 or error.code in (408, 429):
                raise Retryable(f"HTTP {error.code}: {detail}") from None
            raise CallRefused(name, error.code, detail) from None
        except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
            raise Retryable(f"cannot reach {self.base}: {_reason(error)}") from None
        try:
            answer = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise Retryable("the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise Retryable("the answer is not a JSON object")
        return answer


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason if reason is not None else error) or type(error).__name__


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The service's message (its ``error``/``detail``/``message``), or the status text."""
    try:
        document = json.loads(error.read(4096).decode("utf-8", "replace"))
    except (OSError, ValueError, http.client.HTTPException):
        return str(error.reason)
    if isinstance(document, dict):
        for key in ("message", "detail", "error"):
            if document.get(key):
                return str(document[key])[:300]
    return str(error.reason)


# -- moving bytes by signed URLs ------------------------------------------------------------

_T = TypeVar("_T")


class Aborted(Exception):
    """A transfer given up before its end: out of time, or the agent is stopping."""


class TransferError(Exception):
    """A signed request that failed (the message never holds the URL); ``transient`` when
    trying again may help (a connection error, a timeout, 408, 429, 5xx)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Budget:
    """When transfers must end: ``at`` (on ``time.monotonic()``; None: no limit; another
    thread may move it earlier) and ``stopping`` (the agent was told to stop)."""

    def __init__(self, stopping: Callable[[], bool] | None = None) -> None:
        self.at: float | None = None
        self._stopping = stopping

    def left(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def check(self) -> None:
        if self._stopping is not None and self._stopping():
            raise Aborted("the agent is stopping")
        left = self.left()
        if left is not None and left <= 0:
            raise Aborted("out of time")

    def timeout(self) -> float:
        """A socket timeout that does not outlive the budget by much."""
        left = self.left()
        return TRANSFER_TIMEOUT if left is None else max(0.5, min(TRANSFER_TIMEOUT, left))

    def sleep(self, seconds: float) -> None:
        left = self.left()
        if left is not None and left < seconds:
            time.sleep(max(0.0, left))
            raise Aborted("out of time")
        time.sleep(seconds)
        self.check()


class FileSlice:
    """``length`` bytes of an open file from ``offset``, as a request body: http.client reads
    it block by block (a 50 GB file is never in memory). Checks the budget at each block; a
    file that got shorter is a TransferError (the store would wait for the missing bytes)."""

    def __init__(self, handle: IO[bytes], offset: int, length: int, budget: Budget) -> None:
        handle.seek(offset)
        self.handle = handle
        self.left = length
        self.budget = budget

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        self.budget.check()
        want = self.left if size is None or size < 0 else min(size, self.left)
        data = self.handle.read(min(want, BLOCK))
        if not data:
            raise TransferError("the file got shorter while it was being sent")
        self.left -= len(data)
        return data


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """The proxy the environment names for ``scheme`` (``https_proxy``, ...), unless
    ``no_proxy`` covers ``host``: the service's calls (urllib) honour them, so do these."""
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or 80


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection for a signed URL and the request target to send on it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransferError("the signed URL is not an http(s) URL")
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    proxy = _proxy_for(parts.scheme, parts.hostname)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        host, port = proxy or (parts.hostname, parts.port)
        context = ssl.create_default_context()
        conn = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=context, blocksize=BLOCK
        )
        if proxy is not None:
            conn.set_tunnel(parts.hostname, parts.port)
    elif proxy is not None:
        conn = http.client.HTTPConnection(*proxy, timeout=timeout, blocksize=BLOCK)
        target = url  # the absolute form, for the proxy
    else:
        conn = http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=timeout, blocksize=BLOCK
        )
    return conn, target


def _store_code(detail: bytes) -> str:
    """The error code of an S3, GCS or Azure XML error body (never the body: it may echo
    what was signed)."""
    match = re.search(rb"<Code>([A-Za-z0-9._-]{1,64})</Code>", detail)
    return f" ({match.group(1).decode('ascii')})" if match else ""


def transfer(
    request: dict[str, Any],
    budget: Budget,
    body: FileSlice | bytes | None = None,
    length: int = 0,
    extra: dict[str, str] | None = None,
    sink: IO[bytes] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[int, http.client.HTTPMessage]:
    """One signed request: its status and response headers (2xx and 308 come back, anything
    else is a TransferError). Sends exactly the request's headers, plus Content-Length for a
    body and ``extra``; streams ``body``; writes a 2xx answer's body to ``sink``."""
    budget.check()
    method, url = str(request.get("method") or "GET"), str(request.get("url") or "")
    listed = request.get("headers")
    headers = {str(k): str(v) for k, v in listed.items()} if isinstance(listed, dict) else {}
    headers.update(extra or {})
    if body is not None:
        headers["Content-Length"] = str(length)
    conn, target = _connection(url, budget.timeout())
    detail = b""
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        if 200 <= response.status < 300 and sink is not None:
            while True:
                budget.check()
                chunk = response.read(BLOCK)
                if not chunk:
                    break
                sink.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        else:
            detail = response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as error:
        raise TransferError(f"{method}: {_reason(error)}", transient=True) from None
    finally:
        conn.close()
    status = response.status
    if 200 <= status < 300 or status == 308:
        return status, response.msg
    raise TransferError(
        f"{method}: HTTP {status} {response.reason}{_store_code(detail)}",
        transient=status >= 500 or status in (408, 429),
    )


def retried(what: str, budget: Budget, attempt: Callable[[], _T]) -> _T:
    """``attempt()``, tried again (up to TRANSFER_TRIES in all, with backoff) while it fails
    with a transient TransferError."""
    backoff = Backoff()
    for number in range(1, TRANSFER_TRIES + 1):
        try:
            return attempt()
        except TransferError as error:
            if number == TRANSFER_TRIES or not error.transient:
                raise
            log(f"{what}: {error}; trying again")
            budget.sleep(backoff.delay * random.uniform(0.75, 1.0))
            backoff.delay = min(backoff.delay * 2, BACKOFF_MAX)
    raise AssertionError("unreachable")


def human_bytes(count: float) -> str:
    """``1.2 GB`` (decimal units, as disks and clouds count)."""
    if count < 1000:
        return f"{int(count)} B"
    units = ("KB", "MB", "GB", "TB", "PB")
    index = 0
    count /= 1000
    while count >= 1000 and index < len(units) - 1:
        count /= 1000
        index += 1
    return f"{count:.1f} {units[index]}"


def _utf8(text: str) -> bool:
    """Whether a file name can go in JSON (a name that is not UTF-8 comes as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- the sync of artifact directories ------------------------------------------------------


class Manifest:
    """What the sync sent: each file's (size, mtime_ns) by kind and relative path, kept in
    ``<state-dir>/sync-manifest.json`` (written to a temporary name, then renamed) so that a
    restarted agent does not send a file again. It belongs to one cluster and rank: another
    owner's manifest is ignored."""

    def __init__(self, path: str, owner: dict[str, Any]) -> None:
        self.path = path
        self.owner = owner
        self.kinds: dict[str, dict[str, list[int]]] = {}
        self.lock = threading.Lock()  # the sync's streams record files as they go
        self.dirty = False
        self.saved_at = 0.0
        self.failing = False
        self.load()

    def load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                document = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            log(f"ignoring the sync manifest {self.path}: {error}")
            return
        if not isinstance(document, dict) or document.get("owner") != self.owner:
            return
        kinds = document.get("kinds")
        for kind, files in (kinds if isinstance(kinds, dict) else {}).items():
            if isinstance(files, dict):
                self.kinds[str(kind)] = {
                    str(path): [int(sig[0]), int(sig[1])]
                    for path, sig in files.items()
                    if isinstance(sig, list)
                    and len(sig) == 2
                    and all(isinstance(n, int) and not isinstance(n, bool) for n in sig)
                }

    def files(self, kind: str) -> dict[str, list[int]]:
        return self.kinds.setdefault(kind, {})

    def record(self, kind: str, path: str, size: int, mtime_ns: int) -> None:
        with self.lock:
            self.files(kind)[path] = [size, mtime_ns]
            self.dirty = True

    def forget(self, kind: str, path: str) -> None:
        with self.lock:
            if self.files(kind).pop(path, None) is not None:
                self.dirty = True

    def save(self, force: bool = False) -> None:
        """Write it if it changed (during a sync at most every MANIFEST_SAVE_EVERY seconds)."""
        with self.lock:
            self._save(force)

    def _save(self, force: bool) -> None:
        if not self.dirty or (not force and time.monotonic() - self.saved_at < MANIFEST_SAVE_EVERY):
            return
        temp = f"{self.path}.{os.getpid()}.tmp"
        document = {"version": 1, "owner": self.owner, "kinds": self.kinds}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(temp, "w", encoding="utf-8") as out:
                json.dump(document, out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except OSError as error:
            with contextlib.suppress(OSError):
                _remove(temp)
            if not self.failing:
                log(f"cannot save the sync manifest (files may be sent again): {error}")
                self.failing = True
            return
        self.dirty = False
        self.failing = False
        self.saved_at = time.monotonic()


class Vanished(Exception):
    """The file was removed before it could be sent (not a failure: nothing to keep)."""


def scan(top: str) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Every regular file under ``top`` by ``/``-separated relative path, with its (size,
    mtime_ns); symlinks are neither followed nor sent. Also the problems met (unreadable
    directories, names that are not UTF-8)."""
    found: dict[str, tuple[int, int]] = {}
    problems: list[str] = []
    if not os.path.isdir(top):
        return found, problems

    def unreadable(error: OSError) -> None:
        problems.append(f"cannot read {error.filename}: {error.strerror}")

    for folder, _, names in os.walk(top, onerror=unreadable):
        for name in names:
            full = os.path.join(folder, name)
            try:
                info = os.lstat(full)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            rel = os.path.relpath(full, top).replace(os.sep, "/")
            if not _utf8(rel):
                problems.append(f"{rel.encode('utf-8', 'replace').decode()}: not a UTF-8 name")
                continue
            found[rel] = (info.st_size, info.st_mtime_ns)
    return found, problems


class Syncer:
    """Sends each artifact kind's directory to the artifact store on the kind's interval, in
    one thread, while the command runs; then, when ``finish`` is called, a final sync of every
    kind within its budget. A file is sent when its (size, mtime_ns) is not the one the
    manifest holds; the manifest is updated only when the file did not change meanwhile."""

    def __init__(
        self, agent: Agent, dirs: dict[str, tuple[float, str]], manifest: Manifest
    ) -> None:
        self.agent = agent
        self.dirs = dirs  # kind -> (seconds between syncs, directory)
        self.manifest = manifest
        self.budget = Budget()  # no limit until finish()
        self.final_seconds = 0.0
        self.final = threading.Event()
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        self.summary: list[str] = []  # what the final sync did, for the log

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="artifact-sync", daemon=True)
        self.thread.start()

    @property
    def started(self) -> bool:
        return self.thread is not None

    def finish(self, seconds: float) -> None:
        """Ask for the final sync, within ``seconds`` from now (a later, shorter call moves
        the deadline earlier: the agent was signalled)."""
        at = time.monotonic() + seconds
        if self.budget.at is None or at < self.budget.at:
            self.budget.at = at
            self.final_seconds = seconds
        self.final.set()

    def again(self, seconds: float) -> None:
        """Another final sync of every kind within ``seconds``, after one that ended already
        (the one a preemption notice started while the command went on)."""
        budget = Budget()
        budget.at = time.monotonic() + seconds
        self.budget, self.final_seconds = budget, seconds
        self.done.clear()
        self.thread = threading.Thread(
            target=self._run, args=(False,), name="artifact-sync", daemon=True
        )
        self.thread.start()

    def _run(self, periodic: bool = True) -> None:
        try:
            due = {kind: time.monotonic() + every for kind, (every, _) in self.dirs.items()}
            while periodic and not self.final.is_set():
                kind = min(due, key=lambda k: due[k])
                wait = due[kind] - time.monotonic()
                if wait > 0:
                    self.final.wait(wait)
                    continue
                self.sync(kind, final=False)
                due[kind] = time.monotonic() + self.dirs[kind][0]
            for kind in self.dirs:
                self.sync(kind, final=True)
        except TokenRefused:
            log("artifact sync: the service refused the node token; syncing ends")
        except Exception as error:  # the thread must not die unseen
            log(f"artifact sync failed: {type(error).__name__}: {error}")
        finally:
            self.done.set()

    def sync(self, kind: str, final: bool) -> None:
        """One sync of ``kind``'s directory, and its report."""
        top = self.dirs[kind][1]
        found, errors = scan(top)
        failed = len(errors)
        sent = self.manifest.files(kind)
        for rel in [p for p in sent if p not in found]:
            self.manifest.forget(kind, rel)
        changed = [rel for rel in sorted(found) if sent.get(rel) != list(found[rel])]
        run = SyncRun(self, kind, top, found, changed, final)
        run.go(min(SYNC_STREAMS, len(changed)))
        self.manifest.save(force=True)
        failed += run.failed
        errors += run.errors
        if run.aborted and final:
            left = len(changed) - run.done
            failed += left
            errors.append(
                f"the final sync ran out of time ({self.final_seconds:g}s): {left} file(s) not sent"
            )
        if final or run.files or failed:
            self.report(kind, final, run.files, run.bytes, failed, errors)

    def report(
        self, kind: str, final: bool, files: int, size: int, failed: int, errors: list[str]
    ) -> None:
        body = {
            "kind": kind,
            "final": final,
            "files": files,
            "bytes": size,
            "failed": failed,
            "errors": [e[:300] for e in errors[:MAX_ERRORS]],
        }
        budget = Budget()
        if self.budget.at is not None:
            budget.at = self.budget.at + REPORT_GRACE
        try:
            self.agent.ask("artifact_report", body, budget)
        except (CallRefused, Retryable) as error:
            log(f"artifact_report of {kind}: {error}")
        if final and (files or failed):
            line = f"final sync of {kind}: {files} file(s), {human_bytes(size)} sent"
            if failed:
                line += f"; {failed} NOT sent: " + "; ".join(errors[:2])
            self.summary.append(line)

    def send(self, kind: str, top: str, rel: str, signature: tuple[int, int]) -> int:
        """Send one file per the service's plan; the bytes sent."""
        size = signature[0]
        full = os.path.join(top, *rel.split("/"))
        try:
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise Vanished(rel) from None
        with os.fdopen(fd, "rb") as handle:
            body = {"kind": kind, "path": rel, "size": size}
            answer = self.agent.ask("artifact_upload", body, self.budget)
            plan = answer.get("plan")
            requests = _plan_requests(plan, size)
            assert isinstance(plan, dict)
            what = f"{kind}/{rel}"
            if plan["kind"] == "single":
                self.put(what, requests[0], handle, 0, size)
            elif plan["kind"] == "parts":
                etags = self.put_parts(what, requests, handle, size, int(plan["part_size"]))
                body = {"kind": kind, "path": rel, "plan": plan, "etags": etags}
                self.agent.ask("artifact_complete", body, self.budget)
            else:
                self.put_resumable(what, requests[0], handle, size, int(plan["part_size"]))
        try:
            after = os.lstat(full)
        except FileNotFoundError:
            return size
        if (after.st_size, after.st_mtime_ns) == signature:
            self.manifest.record(kind, rel, *signature)
        else:
            log(f"artifact sync: {kind}/{rel} changed while it was sent: sent again next time")
        return size

    def put(
        self,
        what: str,
        request: dict[str, Any],
        handle: IO[bytes],
        offset: int,
        length: int,
        extra: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage]:
        def attempt() -> tuple[int, http.client.HTTPMessage]:
            body = FileSlice(handle, offset, length, self.budget)
            return transfer(request, self.budget, body, length, extra)

        return retried(what, self.budget, attempt)

    def put_parts(
        self,
        what: str,
        requests: list[dict[str, Any]],
        handle: IO[bytes],
        size: int,
        part_size: int,
    ) -> list[str]:
        """Each part in turn; their ETags, in part order ("" where the store gives none)."""
        etags: list[str] = []
        for number, request in enumerate(requests):
            offset = number * part_size
            length = min(part_size, size - offset)
            status, headers = self.put(f"{what} part {number + 1}", request, handle, offset, length)
            if status == 308:
                raise TransferError(f"PUT part {number + 1}: HTTP 308")
            etags.append(headers.get("ETag") or "")
        return etags

    def put_resumable(
        self, what: str, request: dict[str, Any], handle: IO[bytes], size: int, part_size: int
    ) -> None:
        """Consecutive chunks with Content-Range; a 308 answer says how much the store kept
        (its Range header), and the next chunk starts there."""
        offset = 0
        while True:
            length = min(part_size, size - offset)
            last = offset + length >= size
            span = f"bytes {offset}-{offset + length - 1}/{size}" if length else f"bytes */{size}"
            status, headers = self.put(
                f"{what} at {offset}", request, handle, offset, length, {"Content-Range": span}
            )
            if status != 308:
                if not last:
                    raise TransferError(f"the store ended the upload at byte {offset + length}")
                return
            kept = re.fullmatch(r"bytes=0-(\d+)", headers.get("Range") or "")
            following = int(kept.group(1)) + 1 if kept else offset + length
            if last and following >= size:
                raise TransferError("the store did not finish the upload after its last chunk")
            if following <= offset:
                raise TransferError(f"the store kept nothing past byte {offset}")
            offset = following


class SyncRun:
    """One sync of one kind: the changed files sent by up to SYNC_STREAMS threads, in name
    order. It stops taking files when the budget runs out (``aborted``) or, for a periodic
    sync, when the final one is asked for (which takes over from there). A refused token
    (or a bug) in any stream ends the others and is raised again by ``go``."""

    def __init__(
        self,
        syncer: Syncer,
        kind: str,
        top: str,
        found: dict[str, tuple[int, int]],
        changed: list[str],
        final: bool,
    ) -> None:
        self.syncer, self.kind, self.top, self.found = syncer, kind, top, found
        self.changed, self.final = changed, final
        self.lock = threading.Lock()
        self.next = 0
        self.done = 0  # files sent, failed or gone
        self.files = self.bytes = self.failed = 0
        self.errors: list[str] = []
        self.aborted = False
        self.stopped = False
        self.raised: BaseException | None = None

    def go(self, streams: int) -> None:
        if streams <= 1:
            self.stream()
        else:
            threads = [
                threading.Thread(target=self.stream, name=f"sync-{self.kind}-{i}", daemon=True)
                for i in range(streams)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if self.raised is not None:
            raise self.raised

    def take(self) -> str | None:
        with self.lock:
            if self.stopped or self.next >= len(self.changed):
                return None
            if not self.final and self.syncer.final.is_set():
                self.stopped = True  # the final sync takes over from here
                return None
            rel = self.changed[self.next]
            self.next += 1
            return rel

    def stream(self) -> None:
        syncer, kind = self.syncer, self.kind
        while (rel := self.take()) is not None:
            try:
                syncer.budget.check()
                size = syncer.send(kind, self.top, rel, self.found[rel])
                with self.lock:
                    self.files += 1
                    self.bytes += size
                    self.done += 1
            except Vanished:
                with self.lock:
                    self.done += 1
            except Aborted:
                with self.lock:
                    self.aborted = self.stopped = True
                return
            except (TransferError, CallRefused, Retryable, OSError) as error:
                with self.lock:
                    self.failed += 1
                    self.done += 1
                    self.errors.append(f"{rel}: {error}")
                log(f"artifact sync: {kind}/{rel} not sent: {error}")
            except BaseException as error:  # TokenRefused, or a bug: every stream stops
                with self.lock:
                    self.stopped = True
                    self.raised = self.raised or error
                return
            finally:
                syncer.manifest.save()


def _plan_requests(plan: object, size: int) -> list[dict[str, Any]]:
    """The requests of an upload plan, once the plan is one this agent can follow for a file
    of ``size`` bytes (else a TransferError)."""
    if not isinstance(plan, dict):
        raise TransferError("the service gave no upload plan")
    kind, part_size, requests = plan.get("kind"), plan.get("part_size"), plan.get("requests")
    if (
        kind not in ("single", "parts", "resumable")
        or not isinstance(requests, list)
        or not requests
        or not all(isinstance(r, dict) and isinstance(r.get("url"), str) for r in requests)
        or plan.get("size") != size
    ):
        raise TransferError(f"an upload plan this agent cannot follow ({kind!r})")
    if kind != "single":
        if isinstance(part_size, bool) or not isinstance(part_size, int) or part_size <= 0:
            raise TransferError(f"an upload plan with part_size {part_size!r}")
        parts = max(1, -(-size // part_size))
        if kind == "parts" and len(requests) != parts:
            raise TransferError(f"an upload plan with {len(requests)} requests for {parts} parts")
    return list(requests)


# -- inputs -------------------------------------------------------------------------------


class InputFile:
    """One file of the ``inputs`` answer: where it goes (a clean absolute container path),
    its size and its signed GET."""

    def __init__(self, item: object) -> None:
        if not isinstance(item, dict):
            raise ValueError("a file that is not an object")
        dest, size, request = item.get("dest"), item.get("size"), item.get("request")
        parts = dest.split("/")[1:] if isinstance(dest, str) else []
        if (
            not isinstance(dest, str)
            or not dest.startswith("/")
            or not parts
            or any(p in ("", ".", "..") for p in parts)
            or "\0" in dest
        ):
            raise ValueError(f"dest {str(dest)[:200]!r} is not a clean absolute path")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{dest}: size {size!r}")
        if not isinstance(request, dict) or not isinstance(request.get("url"), str):
            raise ValueError(f"{dest}: no signed request")
        self.dest: str = dest
        self.size: int = size
        self.request: dict[str, Any] = request

    def stale(self) -> bool:
        """Whether its URL expires within URL_MARGIN (an expiry of 0: not said)."""
        expires = self.request.get("expires_at")
        return isinstance(expires, (int, float)) and 0 < expires < time.time() + URL_MARGIN


def parse_inputs(answer: dict[str, Any]) -> tuple[list[InputFile], int, list[str]]:
    """The files, the bytes they need (``total_bytes``, or their sum when more) and the
    missing ids of an ``inputs`` answer; ValueError when it is not one."""
    files, total, missing = answer.get("files"), answer.get("total_bytes"), answer.get("missing")
    if not isinstance(files, list):
        raise ValueError("no files list")
    if missing is not None and not isinstance(missing, list):
        raise ValueError("missing is not a list")
    found = [InputFile(item) for item in files]
    counted = total if isinstance(total, int) and not isinstance(total, bool) else 0
    return found, max(counted, sum(f.size for f in found)), [str(m) for m in missing or []]


class Progress:
    """Progress lines of the inputs in the command's log, at most every PROGRESS_EVERY s."""

    def __init__(self, say: Callable[[str], None], files: int, total: int) -> None:
        self.say = say
        self.files = files
        self.total = total
        self.done_files = 0
        self.bytes = 0
        self.started = self.last = time.monotonic()
        say(f"inputs: {files} file(s), {human_bytes(total)} to download")

    def add(self, count: int) -> None:
        self.bytes += count
        if count > 0 and time.monotonic() - self.last >= PROGRESS_EVERY:
            self.last = time.monotonic()
            self.say(
                f"inputs: {self.done_files}/{self.files} files, "
                f"{human_bytes(self.bytes)} of {human_bytes(self.total)}"
            )

    def finished(self) -> None:
        seconds = time.monotonic() - self.started
        self.say(
            f"inputs: {self.files}/{self.files} files, {human_bytes(self.bytes)} in {seconds:.1f}s"
        )


class Timings:
    """The service's pacing, taken from every answer that carries it (within TIMING_BOUNDS);
    these defaults hold until an answer says otherwise."""

    def __init__(self) -> None:
        self.retry_after = 1.0
        self.heartbeat_every = 5.0
        self.stop_grace = 20.0
        self.log_batch_seconds = 1.0
        self.log_batch_lines = 500

    def update(self, answer: dict[str, Any]) -> None:
        for name, (lowest, highest) in TIMING_BOUNDS.items():
            value = answer.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = min(max(value, lowest), highest)
                setattr(self, name, int(value) if name == "log_batch_lines" else float(value))


class Spool:
    """Output lines waiting to be sent. Bounded: when full, the oldest line is dropped and
    counted. Also keeps the last LAST_LINES lines (for the exit report) whatever is dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.dropped = 0  # since the last batch taken
        self.closed = False
        self._lines: collections.deque[str] = collections.deque()
        self._last: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self._cond = threading.Condition()
        self._wake_at = 1

    def put(self, line: str, last: bool = True) -> None:
        """A line to send; ``last``: also one of the last lines (not the agent's own lines
        while the command runs: ``last_lines`` stay the command's)."""
        with self._cond:
            if len(self._lines) >= self.cap:
                self._lines.popleft()
                self.dropped += 1
            self._lines.append(line)
            if last:
                self._last.append(line)
            if len(self._lines) >= self._wake_at:
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._lines)

    def last_lines(self) -> list[str]:
        with self._cond:
            return list(self._last)

    def wait(self, timeout: float, lines: int) -> None:
        """Until ``lines`` lines are waiting, the spool is closed, or ``timeout`` passed."""
        with self._cond:
            self._wake_at = lines
            if len(self._lines) < lines and not self.closed:
                self._cond.wait(max(0.0, timeout))

    def take(self, max_lines: int, max_bytes: int) -> tuple[list[str], int]:
        """The next batch (at least one line if any wait) and how many lines were dropped
        since the previous batch."""
        batch: list[str] = []
        size = 2
        with self._cond:
            while self._lines and len(batch) < max_lines:
                cost = len(json.dumps(self._lines[0], ensure_ascii=False).encode("utf-8")) + 1
                if batch and size + cost > max_bytes:
                    break
                batch.append(self._lines.popleft())
                size += cost
            dropped, self.dropped = self.dropped, 0
            return batch, dropped


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r\n")[:MAX_LINE_CHARS]


class OutputCopy:
    """``--output-copy``: the command's lines appended to a local file as they are read
    (each line one write: a reader following the file sees it at once) while the file stays
    within ``limit`` bytes; the line that would take it past is replaced by one line saying
    the copy stopped, the last one. A file that cannot be written is said once on stderr and
    the copy stops; the command goes on either way."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        self.stopped = False
        self._fd: int | None = None
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            if self.stopped:
                return
            try:
                fd = self._open() if self._fd is None else self._fd
                if fd is None:
                    return
                data = line.encode("utf-8", "replace") + b"\n"
                if self.size + len(data) > self.limit:
                    self.stopped = True
                    note = f"{AGENT_LINE}output copy stopped: the file reached {self.limit} bytes"
                    data = note.encode("utf-8") + b"\n"
                    log(f"output copy: {self.path} reached {self.limit} bytes; the copy stops")
                os.write(fd, data)
                self.size += len(data)
            except OSError as error:
                self.stopped = True
                log(f"output copy: cannot write {self.path}: {error}; the copy stops")
            if self.stopped:
                self._close()

    def _open(self) -> int | None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.lseek(fd, 0, os.SEEK_END)
        if self.size >= self.limit:  # full already (an earlier run): it stays as it is
            os.close(fd)
            self.stopped = True
            log(f"output copy: {self.path} holds {self.size} bytes already: not copied")
            return None
        self._fd = fd
        return fd

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        with self._lock:
            self._close()


def pump(stream: IO[bytes], spool: Spool, copy: OutputCopy | None = None) -> None:
    """Read ``stream`` line by line into ``spool`` (and ``copy``) until EOF; a line longer
    than MAX_LINE_CHARS keeps its beginning, the rest of it is skipped."""
    skipping = False
    try:
        for raw in iter(lambda: stream.readline(4 * MAX_LINE_CHARS), b""):
            if not skipping:
                line = _decode(raw)
                spool.put(line)
                if copy is not None:
                    copy.write(line)
            skipping = not raw.endswith(b"\n")
    except (OSError, ValueError) as error:
        log(f"reading the command's output failed: {error}")
    finally:
        spool.close()
        if copy is not None:
            copy.close()


class Command:
    """A child process in its own process group (session), its merged stdout and stderr
    pumped into a spool (and ``copy``) by a thread. ``on_kill`` runs when it is SIGKILLed
    (docker)."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: str,
        spool: Spool,
        on_kill: Callable[[], None] | None = None,
        copy: OutputCopy | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.on_kill = on_kill
        self.stopping = False
        self._timer: threading.Timer | None = None
        assert self.proc.stdout is not None
        self.reader = threading.Thread(
            target=pump, args=(self.proc.stdout, spool, copy), daemon=True
        )
        self.reader.start()

    def poll(self) -> int | None:
        return self.proc.poll()

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.on_kill is not None:
            self.on_kill()

    def stop(self, grace: float) -> None:
        """SIGTERM to the group now, SIGKILL after ``grace`` seconds (once)."""
        if self.stopping or self.poll() is not None:
            return
        self.stopping = True
        log(f"stopping the command: SIGTERM, SIGKILL after {grace:g}s")
        self.signal(signal.SIGTERM)
        self._timer = threading.Timer(grace, self.kill)
        self._timer.daemon = True
        self._timer.start()

    def finish(self) -> None:
        """After the leader exited: let the reader drain, stop what is left of the group."""
        self.reader.join(1.0)
        if self.reader.is_alive():
            log("processes the command started still hold its output: stopping them")
            self.signal(signal.SIGTERM)
            self.reader.join(2.0)
            self.signal(signal.SIGKILL)
            self.reader.join(2.0)
        self.signal(signal.SIGKILL)
        if self._timer is not None:
            self._timer.cancel()

    def abandon(self, grace: float) -> None:
        """Stop the command and wait for it (the agent is about to end)."""
        self.stop(grace)
        try:
            self.proc.wait(grace + 5.0)
        except subprocess.TimeoutExpired:
            self.kill()
        self.finish()


def shell_argv(command: str) -> list[str]:
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    return [shell, "-c", command]


def reroot(env: dict[str, str], root: str) -> dict[str, str]:
    """``env`` with each artifact path moved under ``root`` (``/mnt/x`` -> ``root/mnt/x``)."""
    moved = dict(env)
    for name in ARTIFACT_VARIABLES:
        value = env.get(name, "")
        if value.startswith("/"):
            moved[name] = os.path.join(root, value.lstrip("/"))
    return moved


def mounts(env: dict[str, str], root: str, datasets: Sequence[str]) -> list[tuple[str, str]]:
    """(host path, container path) for each artifact path and each dataset, no repeats."""
    pairs: list[tuple[str, str]] = []
    paths = [env[n] for n in ARTIFACT_VARIABLES if env.get(n, "").startswith("/")]
    paths += ["/data/" + d for d in datasets]
    for path in paths:
        pair = (os.path.join(root, path.lstrip("/")), path)
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def docker_run_argv(
    docker: str,
    image: str,
    command: str,
    env: dict[str, str],
    root: str,
    datasets: Sequence[str] = (),
    cidfile: str | None = None,
) -> list[str]:
    """``docker run`` for the command in ``image``: GPUs, host network and IPC, ``--init``
    (so SIGTERM reaches the command, not a PID 1 that ignores it), the service's variables
    as they are (the container sees the seed's paths) and the mounts that back them."""
    argv = [docker, "run", "--rm", "--init", "--gpus", "all", "--network", "host"]
    argv += ["--ipc", "host"]
    if cidfile is not None:
        argv += ["--cidfile", cidfile]
    for name, value in env.items():
        argv += ["-e", f"{name}={value}"]
    for host, path in mounts(env, root, datasets):
        argv += ["-v", f"{host}:{path}"]
    return [*argv, image, "bash", "-c", command]


def detect_address(service: str) -> str:
    """The source address of a UDP socket connected towards the service (nothing is sent)."""
    parts = urllib.parse.urlsplit(service)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        parts.hostname, port, type=socket.SOCK_DGRAM
    )[0]
    with socket.socket(family, kind, proto) as sock:
        sock.connect(sockaddr)
        return str(sock.getsockname()[0])


class Plan:
    """What a "run" answer to ``register`` says this node runs."""

    def __init__(self, answer: dict[str, Any]) -> None:
        rank, env, command = answer.get("rank"), answer.get("env"), answer.get("command")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank {rank!r} is not a rank")
        if not isinstance(env, dict):
            raise ValueError("env is not an object")
        if not isinstance(command, str) or not command.strip():
            raise ValueError("no command")
        image, datasets = answer.get("image"), answer.get("datasets") or []
        if image is not None and not isinstance(image, str):
            raise ValueError(f"image {image!r} is not a string")
        if not isinstance(datasets, list) or not all(_dataset_id(d) for d in datasets):
            raise ValueError(f"datasets {datasets!r} are not dataset ids")
        sync, final_sync = answer.get("sync") or {}, answer.get("final_sync_timeout")
        if not isinstance(sync, dict) or not all(_seconds(v) for v in sync.values()):
            raise ValueError(f"sync {sync!r} is not seconds by artifact kind")
        if final_sync is not None and not _seconds(final_sync, 0):
            raise ValueError(f"final_sync_timeout {final_sync!r} is not seconds")
        self.rank: int = rank
        self.env: dict[str, str] = {str(k): str(v) for k, v in env.items()}
        self.command: str = command
        self.image: str | None = image or None
        self.datasets: list[str] = list(datasets)
        low, high = SYNC_BOUNDS
        self.sync: dict[str, float] = {
            str(k): min(max(float(v), low), high) for k, v in sync.items()
        }
        self.final_sync_timeout: float = (
            FINAL_SYNC_TIMEOUT if final_sync is None else min(float(final_sync), high)
        )
        self.inputs: bool = answer.get("inputs") is True


def _seconds(value: object, lowest: float = 1e-9) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= lowest


def _dataset_id(value: object) -> bool:
    """A name that is safe as a path component and in ``-v HOST:PATH``."""
    return (
        isinstance(value, str)
        and value[:1].isalnum()
        and all(c.isalnum() or c in "._-" for c in value)
    )


# -- preemption notices -------------------------------------------------------------------

# Each cloud's metadata endpoint as nodes reach it (``--metadata-url`` replaces it).
METADATA_URLS = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal",
    "azure": "http://169.254.169.254",
}
# How long each cloud leaves between its notice and the end, when the notice gives no time.
NOTICE_WINDOW = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}
NOTICE_MARGIN = 5.0  # seconds kept free before the end: the sync stops this long before it
NOTICE_REPORT_FIRST = 3.0  # seconds `preempted` may take before the sync starts regardless
METADATA_POLL = 5.0  # seconds between two polls (AWS, Azure)
METADATA_TIMEOUT = 10.0  # seconds a metadata request may take (a long poll: its wait more)
IMDS_TOKEN_TTL = 21_600  # seconds an IMDSv2 token lives; renewed 5 minutes before it expires
IMDS_V1_STATUSES = (403, 404, 405)  # token PUT answers that mean "use IMDSv1" (as AWS SDKs do)
GCP_WAIT = 60  # timeout_sec of a GCP wait_for_change
AZURE_FIRST_TIMEOUT = 130.0  # the first Scheduled Events call may take up to 2 minutes


class Notice:
    """A preemption notice: ``key`` tells one notice from another (each is reported once),
    ``action`` is the cloud's word for what comes, ``not_before`` the end as unix seconds
    (None when the cloud does not say)."""

    def __init__(self, key: str, action: str, not_before: float | None) -> None:
        self.key = key
        self.action = action
        self.not_before = not_before
        self.seen = time.time()


class MetadataError(Exception):
    """A metadata answer that is not what the cloud sends (or none)."""


class Watcher:
    """Watches the cloud's preemption notice from the instance metadata endpoint, in daemon
    threads, and hands each new notice to ``on_notice`` (once per notice). Never raises:
    any error is logged (once until the endpoint answers again) and retried with backoff."""

    def __init__(
        self, cloud: str, base: str, poll: float, on_notice: Callable[[Notice], None]
    ) -> None:
        self.cloud = cloud
        self.base = base.rstrip("/")
        self.poll = poll
        self.on_notice = on_notice
        # No proxy (the endpoint is link-local) and no redirects.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}
        self._imds_token: str | None = None
        self._imds_token_until = 0.0
        self._imds_v1 = False
        self._vm_name: str | None = None
        self._stopped = threading.Event()
        self.threads: list[threading.Thread] = []

    def stop(self) -> None:
        """End the watch (its threads end at their next pause)."""
        self._stopped.set()

    def start(self) -> None:
        loops: list[tuple[str, Callable[[], None]]]
        if self.cloud == "aws":
            loops = [("aws", self._aws)]
        elif self.cloud == "gcp":
            loops = [("gcp-preempted", self._gcp_preempted), ("gcp-maintenance", self._gcp_maint)]
        else:
            loops = [("azure", self._azure)]
        log(f"watching {self.cloud} preemption notices at {self.base}")
        for name, step in loops:
            thread = threading.Thread(target=self._loop, args=(name, step), daemon=True)
            thread.name = "preemption-" + name
            thread.start()
            self.threads.append(thread)

    def _loop(self, name: str, step: Callable[[], None]) -> None:
        """``step`` over and over; a failure is logged once, then retried with backoff."""
        backoff = Backoff()
        while not self._stopped.is_set():
            try:
                step()
            except Exception as error:  # the watcher must never end the agent
                known = isinstance(error, MetadataError)
                message = str(error) if known else f"{type(error).__name__}: {error}"
                if self._failing.get(name) is None:
                    log(f"preemption watch ({name}): {message}; retrying quietly with backoff")
                self._failing[name] = message
                self._stopped.wait(backoff.delay * random.uniform(0.75, 1.0))
                backoff.delay = min(backoff.delay * 2, BACKOFF_MAX)
                continue
            if self._failing.pop(name, None) is not None:
                log(f"preemption watch ({name}): the metadata endpoint answers again")
            backoff = Backoff()

    def _notice(self, notice: Notice) -> None:
        with self._lock:
            if notice.key in self._seen:
                return
            self._seen.add(notice.key)
        self.on_notice(notice)

    def get(
        self, path: str, headers: dict[str, str], method: str = "GET", timeout: float = 0.0
    ) -> tuple[int, bytes, str]:
        """The status, body and ETag of one metadata request; a 2xx or a 4xx comes back,
        anything else (no answer, a 5xx, a redirect) is an error."""
        request = urllib.request.Request(
            self.base + path, method=method, headers=headers, data=b"" if method == "PUT" else None
        )
        try:
            with self._opener.open(request, timeout=timeout or METADATA_TIMEOUT) as response:
                etag = response.headers.get("ETag") or ""
                return int(response.status), response.read(64 * 1024), str(etag)
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500:
                return error.code, error.read(4096), ""
            raise MetadataError(f"{method} {path}: HTTP {error.code}") from None
        except (OSError, http.client.HTTPException) as error:
            raise MetadataError(f"{method} {path}: {_reason(error)}") from None

    # AWS: IMDSv2 spot/instance-action.

    def _aws(self) -> None:
        headers: dict[str, str] = {}
        if not self._imds_v1:
            if self._imds_token is None or time.monotonic() >= self._imds_token_until:
                self._aws_token()
            if self._imds_token is not None:
                headers["X-aws-ec2-metadata-token"] = self._imds_token
        status, body, _ = self.get("/latest/meta-data/spot/instance-action", headers)
        if status == 401:  # the token expired early (or IMDSv1 is not allowed after all)
            self._imds_token, self._imds_v1 = None, False
            raise MetadataError("spot/instance-action: HTTP 401 (a new token is needed)")
        if status == 200:
            self._notice(aws_notice(body))
        elif status != 404:
            raise MetadataError(f"spot/instance-action: HTTP {status}")
        self._stopped.wait(self.poll)

    def _aws_token(self) -> None:
        ttl = {"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL)}
        status, body, _ = self.get("/latest/api/token", ttl, method="PUT")
        if status in IMDS_V1_STATUSES:
            log(f"IMDSv2 token refused (HTTP {status}): reading the metadata with IMDSv1")
            self._imds_v1 = True
            return
        token = body.decode("ascii", "replace").strip()
        if status != 200 or not token or any(c.isspace() or not c.isprintable() for c in token):
            raise MetadataError(f"PUT /latest/api/token: HTTP {status}, no token")
        self._imds_token = token
        self._imds_token_until = time.monotonic() + IMDS_TOKEN_TTL - 300

    # GCP: instance/preempted and instance/maintenance-event, long-polled.

    def _gcp_preempted(self) -> None:
        self._gcp_wait("preempted", lambda v: "preempt" if v == "TRUE" else None, ("TRUE", "FALSE"))

    def _gcp_maint(self) -> None:
        def action(value: str) -> str | None:
            return "host_maintenance" if value == "TERMINATE_ON_HOST_MAINTENANCE" else None

        self._gcp_wait("maintenance-event", action, None)

    def _gcp_wait(
        self, key: str, action: Callable[[str], str | None], values: tuple[str, ...] | None
    ) -> None:
        """Follows one key: a plain GET for its value and ETag, then waits for changes from
        that ETag (``last_etag``: a change between two waits is not missed)."""
        headers = {"Metadata-Flavor": "Google"}
        etag = ""
        while not self._stopped.is_set():
            path = f"/computeMetadata/v1/instance/{key}"
            timeout = METADATA_TIMEOUT
            if etag:
                query = {"wait_for_change": "true", "timeout_sec": GCP_WAIT, "last_etag": etag}
                path += "?" + urllib.parse.urlencode(query)
                timeout += GCP_WAIT
            asked = time.monotonic()
            status, body, fresh = self.get(path, headers, timeout=timeout)
            if status == 404 and values is None:
                self._stopped.wait(GCP_WAIT)  # no such key here: look again now and then
                return
            if status != 200:
                raise MetadataError(f"instance/{key}: HTTP {status}")
            value = body.decode("utf-8", "replace").strip()
            if values is not None and value not in values:
                raise MetadataError(f"instance/{key}: {value[:40]!r} is not {values}")
            what = action(value)
            if what is not None:
                self._notice(Notice(f"gcp:{key}:{value}", what, None))
            if not fresh or (fresh == etag and time.monotonic() - asked < 1.0):
                self._stopped.wait(self.poll)  # no ETag, or no wait: poll, do not spin
            etag = fresh

    # Azure: Scheduled Events.

    def _azure(self) -> None:
        headers = {"Metadata": "true"}
        if self._vm_name is None:
            path = "/metadata/instance/compute/name?api-version=2021-02-01&format=text"
            try:
                status, body, _ = self.get(path, headers)
            except MetadataError:
                status, body = 0, b""
            name = body.decode("utf-8", "replace").strip() if status == 200 else ""
            if name and name.isprintable():
                self._vm_name = name
        path = "/metadata/scheduledevents?api-version=2020-07-01"
        status, body, _ = self.get(path, headers, timeout=AZURE_FIRST_TIMEOUT)
        if status != 200:
            raise MetadataError(f"scheduledevents: HTTP {status}")
        for notice in azure_notices(body, self._vm_name):
            self._notice(notice)
        self._stopped.wait(self.poll)


def aws_notice(body: bytes) -> Notice:
    """The notice in IMDS ``spot/instance-action``: ``{"action": ..., "time": ...}``."""
    try:
        document = json.loads(body.decode("utf-8"))
    except ValueError:
        raise MetadataError("spot/instance-action: the answer is not JSON") from None
    action = document.get("action") if isinstance(document, dict) else None
    if not isinstance(action, str) or not action:
        raise MetadataError("spot/instance-action: no action in the answer")
    when = document.get("time")
    not_before = None
    if isinstance(when, str):
        with contextlib.suppress(ValueError):
            not_before = float(calendar.timegm(time.strptime(when, "%Y-%m-%dT%H:%M:%SZ")))
    return Notice(f"aws:{action}:{when}", action[:40], not_before)


def azure_notices(body: bytes, vm_name: str | None) -> list[Notice]:
    """The ``Preempt`` events of a Scheduled Events document for this VM (any, when its name
    could not be read)."""
    try:
        document = json.loads(body.decode("utf-8"))
    except ValueError:
        raise MetadataError("scheduledevents: the answer is not JSON") from None
    events = document.get("Events") if isinstance(document, dict) else None
    if not isinstance(events, list):
        raise MetadataError("scheduledevents: no Events list in the answer")
    found: list[Notice] = []
    for event in events:
        if not isinstance(event, dict) or event.get("EventType") != "Preempt":
            continue
        resources = event.get("Resources")
        if vm_name is not None and not (isinstance(resources, list) and vm_name in resources):
            continue
        not_before = None
        stamp = event.get("NotBefore")
        if isinstance(stamp, str) and stamp:
            parsed = email.utils.parsedate_tz(stamp)  # "Mon, 19 Sep 2016 18:29:47 GMT"
            if parsed is not None:
                not_before = float(email.utils.mktime_tz(parsed))
        found.append(Notice(f"azure:{event.get('EventId')}", "preempt", not_before))
    return found


class Agent:
    """One node's agent: register, run, report (see the module's docstring)."""

    def __init__(self, args: argparse.Namespace, token: str) -> None:
        self.args = args
        self.client = Client(args.service, args.cluster, token)
        self.timings = Timings()
        self.rank: int | None = None
        self.command: Command | None = None
        self.pidfile: str | None = None  # <state-dir>/command.pid while the command runs
        self.stop_requested = False
        self.seq = 0
        self.plan: Plan | None = None
        self.spool = Spool(args.spool_lines)  # the command's log (and the agent's lines)
        self.log_lock = threading.Lock()  # one logs call at a time (seq)
        self.syncer: Syncer | None = None
        self.refused: TokenRefused | None = None  # by a call of the heartbeat thread
        self.watcher: Watcher | None = None
        self.notice_end: float | None = None  # when a noticed preemption ends the node (unix)
        self.notice_reports: list[threading.Thread] = []  # their `preempted` calls
        self.output_copy: OutputCopy | None = None  # --output-copy: the command's lines
        if args.output_copy:
            self.output_copy = OutputCopy(args.output_copy, args.output_copy_limit)

    def ask(self, name: str, body: dict[str, Any], budget: Budget | None = None) -> dict[str, Any]:
        """``name`` after ``register``: the answer; CallRefused when refused (and, with a
        ``budget``, Retryable when the service cannot be reached in time)."""
        answer = self.client.post(name, dict(body, rank=self.rank), budget)
        self.timings.update(answer)
        if answer.get("state") == "stop":
            self.request_stop()
        return answer

    def call(self, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """``name`` after ``register``: the answer, or None when refused (logged)."""
        try:
            return self.ask(name, body)
        except CallRefused as error:
            log(str(error))
            return None

    def say(self, text: str) -> None:
        """An agent line in the command's log (and on stderr); never among the last lines
        an exit report carries (those are the command's: a failure's detail quotes them)."""
        log(text)
        self.spool.put(AGENT_LINE + text, last=False)

    def flush_logs(self) -> None:
        while self.spool.pending():
            self.send_logs(self.spool)

    @contextlib.contextmanager
    def heartbeating(self) -> Iterator[None]:
        """Heartbeats (and the agent's log lines) from a thread while the body runs: the
        inputs download and the final sync. A token refused meanwhile is raised after it."""
        done = threading.Event()
        thread = threading.Thread(target=self._beat, args=(done,), name="heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(1.0)
        if self.refused is not None:
            raise self.refused

    def _beat(self, done: threading.Event) -> None:
        next_beat = time.monotonic() + self.timings.heartbeat_every
        try:
            while not done.is_set():
                if time.monotonic() >= next_beat:
                    self.call("heartbeat", {})
                    next_beat = time.monotonic() + self.timings.heartbeat_every
                if self.spool.pending():
                    self.send_logs(self.spool)
                pause = min(next_beat - time.monotonic(), self.timings.log_batch_seconds)
                done.wait(max(0.01, pause))
        except TokenRefused as error:
            self.refused = error
            self.request_stop()

    def request_stop(self) -> None:
        if not self.stop_requested:
            log("the service says stop")
        self.stop_requested = True
        if self.command is not None:
            self.command.stop(self.timings.stop_grace)

    def address(self) -> str:
        backoff = Backoff()
        while True:
            try:
                return detect_address(self.args.service)
            except OSError as error:
                log(f"cannot find this node's address towards the service: {error}")
                backoff.sleep()

    def register(self) -> Plan | None:
        """Poll ``register`` until "run" (a Plan) or "stop" (None)."""
        body = {
            "address": self.args.address or self.address(),
            "instance_id": self.args.instance_id,
            "agent_version": AGENT_VERSION,
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
        }
        log(f"registering {body['address']} with {self.client.base}")
        waited = False
        while True:
            answer = self.client.post("register", body)
            self.timings.update(answer)
            state = answer.get("state")
            if state == "run":
                try:
                    return Plan(answer)
                except ValueError as error:
                    raise BadAnswer(f"the service's answer to register: {error}") from None
            if state == "stop":
                return None
            if not waited:
                log("waiting for every node of the cluster to register")
                waited = True
            time.sleep(self.timings.retry_after)

    def run(self) -> int:
        plan = self.register()
        if plan is None:
            log("the service says stop before the command started: nothing to run")
            return EXIT_OK
        global _who
        self.rank = plan.rank
        _who = f"burst-agent[{self.args.cluster} rank {plan.rank}]"
        log(f"running {plan.command[:200]!r}" + (f" in {plan.image}" if plan.image else ""))
        if self.args.cloud != "none":
            self.watcher = Watcher(
                self.args.cloud, self.args.metadata_url, self.args.metadata_poll, self.preempted
            )
            self.watcher.start()
        root = self.args.root
        try:
            host_env = reroot(plan.env, root)
            datasets = [os.path.join(root, "data", d) for d in plan.datasets]
            for name in (root, *(host_env[n] for n in ARTIFACT_VARIABLES if n in host_env)):
                os.makedirs(name, exist_ok=True)
            for name in datasets:  # made here, not by docker (which would make them root's)
                os.makedirs(name, exist_ok=True)
            self.plan = plan
            self.syncer = self.make_syncer(plan, host_env)
        except OSError as error:
            return self.report("spawn_failed", None, [f"cannot create {error.filename}: {error}"])
        if plan.image is None:
            failed = self.prepare_inputs(plan)
            if failed is not None:
                return failed
            return self.execute(shell_argv(plan.command), dict(os.environ, **host_env))
        return self.run_in_docker(plan)

    def make_syncer(self, plan: Plan, host_env: dict[str, str]) -> Syncer | None:
        """The sync of the kinds the "run" answer names (None: no artifact store)."""
        dirs: dict[str, tuple[float, str]] = {}
        for kind, every in plan.sync.items():
            if kind not in KIND_DIRS:
                log(f"unknown artifact kind {kind!r}: not synced")
                continue
            names, default = KIND_DIRS[kind]
            path = next((host_env[n] for n in names if host_env.get(n, "").startswith("/")), "")
            path = path or os.path.join(self.args.root, default.lstrip("/"))
            os.makedirs(path, exist_ok=True)
            dirs[kind] = (every, path)
        if not dirs:
            return None
        owner = {"cluster": self.args.cluster, "rank": plan.rank}
        return Syncer(self, dirs, Manifest(os.path.join(self.args.state_dir, MANIFEST), owner))

    def prepare_inputs(self, plan: Plan) -> int | None:
        """Download the inputs, if the "run" answer says there are any, while heartbeats go
        on; None when the command may start (or the agent was told to stop: ``execute``
        reports it), else the result of the ``inputs_failed`` report."""
        if not plan.inputs or self.stop_requested:
            return None
        with self.heartbeating():
            reason = self.fetch_inputs(plan)
        if reason is None:
            self.flush_logs()
            return None
        self.say(reason)
        self.flush_logs()
        return self.report("inputs_failed", None, [AGENT_LINE + reason])

    def fetch_inputs(self, plan: Plan) -> str | None:
        """Every file of ``inputs`` in place under --root: None, or why not (one line)."""
        answer = self.call("inputs", {})
        if answer is None:
            return "inputs failed: the service refused to list them (see the agent's log)"
        if self.stop_requested:
            return None
        try:
            files, total, missing = parse_inputs(answer)
        except ValueError as error:
            return f"inputs failed: the service's answer to inputs is not valid: {error}"
        if missing:
            return "inputs failed: not in the artifact store: " + ", ".join(missing)
        root = self.args.root
        free = shutil.disk_usage(root).free
        if total > free:
            return (
                f"inputs failed: they need {human_bytes(total)} ({total} bytes) of disk, "
                f"{root} has {human_bytes(free)} ({free} bytes) free"
            )
        progress = Progress(self.say, len(files), total)
        budget = Budget(lambda: self.stop_requested)
        for item in files:
            try:
                mtime_ns = self.download(item, files, budget, progress)
            except Aborted:
                return None  # told to stop: execute() reports it
            except TransferError as error:
                tries = f"not downloaded after {TRANSFER_TRIES} tries"
                return f"inputs failed: {item.dest}: {tries}: {error}"
            except OSError as error:
                return f"inputs failed: {item.dest}: cannot write it: {error.strerror or error}"
            progress.done_files += 1
            self.restored(item, mtime_ns)
        progress.finished()
        if self.syncer is not None:
            self.syncer.manifest.save(force=True)
        for item in files:  # input artifacts are mounted like datasets
            parts = item.dest.split("/")
            ident = parts[2] if len(parts) > 3 and parts[1] == "data" else ""
            if _dataset_id(ident) and ident not in plan.datasets:
                plan.datasets.append(ident)
        return None

    def download(
        self, item: InputFile, files: list[InputFile], budget: Budget, progress: Progress
    ) -> int:
        """One input file to ``<root><dest>``: into a temporary name, its size checked, then
        renamed into place; tried TRANSFER_TRIES times with backoff, with fresh signed URLs
        when they are about to expire or were refused. Its mtime_ns."""
        target = os.path.join(self.args.root, item.dest.lstrip("/"))
        folder, name = os.path.split(target)
        os.makedirs(folder, exist_ok=True)
        temp = os.path.join(folder, f".{name}.{os.getpid()}.part")
        backoff = Backoff()
        error: TransferError | None = None
        for attempt in range(TRANSFER_TRIES):
            if attempt:
                log(f"input {item.dest}: {error}; trying again")
                budget.sleep(backoff.delay * random.uniform(0.75, 1.0))
                backoff.delay = min(backoff.delay * 2, BACKOFF_MAX)
            if item.stale() or (error is not None and not error.transient):
                self.refresh_inputs(files)
            received = 0

            def count(size: int) -> None:
                nonlocal received
                received += size
                progress.add(size)

            try:
                with open(temp, "wb") as sink:
                    transfer(item.request, budget, sink=sink, on_bytes=count)
                got = os.path.getsize(temp)
                if got != item.size:
                    raise TransferError(f"got {got} bytes, expected {item.size}", transient=True)
                os.replace(temp, target)
                return os.stat(target).st_mtime_ns
            except TransferError as failure:
                error = failure
                progress.add(-received)
            finally:
                _remove(temp)
        assert error is not None
        raise error

    def refresh_inputs(self, files: list[InputFile]) -> None:
        """Fresh signed URLs for ``files`` (an ``inputs`` call), where the answer has them."""
        answer = self.call("inputs", {})
        try:
            fresh = {f.dest: f.request for f in parse_inputs(answer or {})[0]}
        except ValueError:
            return
        for item in files:
            item.request = fresh.get(item.dest, item.request)

    def restored(self, item: InputFile, mtime_ns: int) -> None:
        """A downloaded file in a kind's directory (a restarted experiment's checkpoints) is
        what the store holds already: the manifest says so, and the sync does not send it."""
        if self.syncer is None:
            return
        target = os.path.join(self.args.root, item.dest.lstrip("/"))
        for kind, (_, top) in self.syncer.dirs.items():
            rel = os.path.relpath(target, top)
            if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
                self.syncer.manifest.record(kind, rel.replace(os.sep, "/"), item.size, mtime_ns)

    def run_in_docker(self, plan: Plan) -> int:
        docker = shutil.which("docker")
        if docker is None or plan.image is None:
            return self.report("spawn_failed", None, ["docker: command not found on this node"])
        pull_spool = Spool(LAST_LINES)
        try:
            self.command = Command([docker, "pull", plan.image], dict(os.environ), "/", pull_spool)
        except OSError as error:
            return self.report("spawn_failed", None, [f"cannot run {docker}: {error}"])
        code = self.supervise(self.command, pull_spool, send_logs=False)
        if self.command.stopping:
            return self.report("stopped", code, pull_spool.last_lines())
        if code != 0:
            log(f"docker pull {plan.image} failed ({code})")
            return self.report("image_pull_failed", code, pull_spool.last_lines())
        failed = self.prepare_inputs(plan)  # after the pull: see docs/agent-protocol.md
        if failed is not None:
            return failed
        cidfile = self.state_file("container.id")
        argv = docker_run_argv(
            docker, plan.image, plan.command, plan.env, self.args.root, plan.datasets, cidfile
        )

        def kill_container() -> None:
            if cidfile is not None and os.path.exists(cidfile):
                with open(cidfile) as handle:
                    cid = handle.read().strip()
                if cid:
                    subprocess.run([docker, "kill", cid], capture_output=True, timeout=30)

        return self.execute(argv, dict(os.environ), kill_container)

    def execute(
        self, argv: list[str], env: dict[str, str], on_kill: Callable[[], None] | None = None
    ) -> int:
        """Start the command, follow it to its end, report."""
        if self.stop_requested:
            return self.report("stopped", None, [])
        spool = self.spool
        try:
            self.command = Command(argv, env, self.args.root, spool, on_kill, self.output_copy)
        except OSError as error:
            return self.report("spawn_failed", None, [f"cannot start {argv[0]}: {error}"])
        self.pidfile = self.state_file("command.pid", str(self.command.pid))
        self.call("started", {"pid": self.command.pid})
        if self.syncer is not None:
            self.syncer.start()
            self.sync_before_the_end()  # a notice came during the inputs
        code = self.supervise(self.command, spool, send_logs=True)
        self.forget_pid()
        last_lines = spool.last_lines()  # the command's, before the final sync's lines
        assert self.plan is not None
        self.final_sync(self.plan.final_sync_timeout)
        reason = "stopped" if self.command.stopping else "exited"
        return self.report(reason, code, last_lines)

    def final_sync(self, seconds: float) -> None:
        """The final sync of every kind, within ``seconds`` (its reports may take
        REPORT_GRACE more), heartbeats going on; then its summary in the log."""
        syncer = self.syncer
        if syncer is None or not syncer.started:
            return
        left = self.time_left()
        if left is not None:
            seconds = min(seconds, left)
        log(f"final sync of the artifacts (at most {seconds:g}s)")
        if syncer.done.is_set():  # a preemption notice's sync ended already: send what changed
            syncer.again(seconds)
        else:
            syncer.finish(seconds)
        with self.heartbeating():
            while not syncer.done.wait(0.1):
                left = syncer.budget.left()
                if left is not None and left < -REPORT_GRACE - 1.0:
                    log("the final sync did not end in time: going on without it")
                    break
        for line in syncer.summary:
            self.say(line)
        syncer.summary.clear()
        self.flush_logs()

    def preempted(self, notice: Notice) -> None:
        """A preemption notice (the watcher's thread): ``preempted`` to the service at once,
        then the final sync of the artifacts, bounded by the time left, while the command
        goes on (the service decides whether to stop it). If the service cannot be reached
        within NOTICE_REPORT_FIRST seconds, the sync starts anyway and the call goes on
        being retried."""
        cloud = self.args.cloud
        end = notice.not_before or notice.seen + NOTICE_WINDOW[cloud]
        self.notice_end = end if self.notice_end is None else min(self.notice_end, end)
        when = time.strftime("%H:%M:%SZ", time.gmtime(end))
        said = "at" if notice.not_before else "by about"
        text = f"preemption notice from {cloud} ({notice.action}): the node ends {said} {when}"
        log(text)
        self.spool.put(AGENT_LINE + text, last=False)
        body = {"cloud": cloud, "action": notice.action, "not_before": notice.not_before}
        answered = threading.Event()

        def report() -> None:
            try:
                self.ask("preempted", body)  # retried as long as it takes
            except CallRefused as error:
                log(str(error))
            except TokenRefused:
                log("preempted: the service refused the node token")
            finally:
                answered.set()

        thread = threading.Thread(target=report, name="preempted", daemon=True)
        self.notice_reports.append(thread)
        thread.start()
        answered.wait(NOTICE_REPORT_FIRST)  # a slow or hung service does not hold the sync
        self.sync_before_the_end()

    def time_left(self) -> float | None:
        """Seconds a sync may still take before a noticed preemption (NOTICE_MARGIN kept
        free, at least 1); None without a notice."""
        if self.notice_end is None:
            return None
        return max(1.0, self.notice_end - NOTICE_MARGIN - time.time())

    def sync_before_the_end(self) -> None:
        """After a preemption notice, once the sync runs: its final sync now, bounded by the
        time left (and ``final_sync_timeout``)."""
        syncer, left = self.syncer, self.time_left()
        if syncer is None or not syncer.started or left is None or self.plan is None:
            return
        if syncer.final.is_set():
            syncer.finish(left)  # one runs already: it must end in time
            return
        seconds = min(self.plan.final_sync_timeout, left)
        log(f"final sync of the artifacts before the preemption (at most {seconds:g}s)")
        syncer.finish(seconds)

    def supervise(self, command: Command, spool: Spool, send_logs: bool) -> int:
        """Heartbeats (and log batches) until the command ended; its return code."""
        next_beat = time.monotonic() + self.timings.heartbeat_every
        last_flush = 0.0
        while True:
            code = command.poll()
            if code is not None:
                command.finish()
                while send_logs and spool.pending():
                    self.send_logs(spool)
                return code
            now = time.monotonic()
            batch_lines = self.timings.log_batch_lines
            if now >= next_beat:
                self.call("heartbeat", {})
                next_beat = time.monotonic() + self.timings.heartbeat_every
            elif (
                send_logs
                and spool.pending()
                and (
                    spool.pending() >= batch_lines
                    or now - last_flush >= self.timings.log_batch_seconds
                )
            ):
                self.send_logs(spool)
                last_flush = time.monotonic()
            else:
                deadline = next_beat
                if send_logs and spool.pending():
                    deadline = min(deadline, last_flush + self.timings.log_batch_seconds)
                spool.wait(min(deadline - now, 0.1), batch_lines if send_logs else 1 << 30)

    def send_logs(self, spool: Spool) -> None:
        """One batch. ``seq`` numbers the lines sent; ``dropped`` counts the lines lost since
        the previous batch. A retried batch is the same body (same seq); a refused one (4xx)
        leaves a gap in seq, which the service counts as lost."""
        with self.log_lock:
            lines, dropped = spool.take(self.timings.log_batch_lines, MAX_BATCH_BYTES - 1024)
            if not lines:
                return
            body = {"seq": self.seq, "lines": lines, "dropped": dropped}
            self.call("logs", body)
            self.seq += len(lines)

    def report(self, reason: str, code: int | None, last_lines: list[str]) -> int:
        """``exit``. A spawn failure says 127 (the shell's "cannot run") as its code."""
        if reason == "spawn_failed":
            code = 127
        exit_code = code if code is not None and code >= 0 else None
        signum = -code if code is not None and code < 0 else None
        body = {
            "exit_code": exit_code,
            "signal": signum,
            "reason": reason,
            "last_lines": last_lines[-LAST_LINES:],
        }
        log(f"the command ended: {reason}, exit code {exit_code}, signal {signum}")
        for thread in list(self.notice_reports):  # the service hears of a notice before exit
            thread.join()
        self.call("exit", body)
        return EXIT_OK

    def state_file(self, name: str, content: str | None = None) -> str | None:
        """A path in --state-dir (created; stale file removed), with ``content`` written;
        None when the directory cannot be used."""
        path = os.path.join(self.args.state_dir, name)
        try:
            os.makedirs(self.args.state_dir, exist_ok=True)
            _remove(path)
            if content is not None:
                with open(path, "w") as handle:
                    handle.write(content + "\n")
        except OSError as error:
            log(f"cannot use the state directory: {error}")
            return None
        return path

    def forget_pid(self) -> None:
        if self.pidfile is not None:
            _remove(self.pidfile)
            self.pidfile = None

    def abandon(self, final_sync: bool = False) -> None:
        """Stop the command, if one runs, before the agent ends; with ``final_sync`` (the
        agent was signalled: the node is going away), then a final sync of the artifacts
        bounded by ``stop_grace`` (and ``final_sync_timeout``)."""
        if self.command is not None and self.command.poll() is None:
            self.command.abandon(self.timings.stop_grace)
        self.forget_pid()
        if final_sync and self.plan is not None:
            try:
                self.final_sync(min(self.plan.final_sync_timeout, self.timings.stop_grace))
            except TokenRefused:
                log("the service refused the node token during the final sync")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="agent.py",
        description="The burst-broker node agent (docs/agent-protocol.md).",
    )
    parser.add_argument("--service", required=True, help="the service's base URL")
    parser.add_argument("--cluster", required=True, help="the cluster id")
    parser.add_argument("--token-file", required=True, help="a file holding the node token")
    parser.add_argument("--address", help="this node's private address (default: detected)")
    parser.add_argument("--instance-id", help="the cloud's instance id, for messages")
    parser.add_argument("--root", default="/", help="where the artifact paths live")
    parser.add_argument("--state-dir", help="default: <root>/var/lib/burst-broker")
    parser.add_argument(
        "--spool-lines",
        type=int,
        default=DEFAULT_SPOOL_LINES,
        help="output lines kept while the service cannot take them (tuning and tests)",
    )
    parser.add_argument(
        "--cloud",
        choices=("aws", "gcp", "azure", "none"),
        default="none",
        help="watch this cloud's preemption notice (default: none, no watch)",
    )
    parser.add_argument(
        "--metadata-url",
        help="the instance metadata endpoint (default: the cloud's; tests use a local one)",
    )
    parser.add_argument(
        "--metadata-poll",
        type=float,
        default=METADATA_POLL,
        help="seconds between two polls of the metadata (tuning and tests)",
    )
    parser.add_argument(
        "--output-copy",
        metavar="FILE",
        help="also append every line of the command's output to this local file",
    )
    parser.add_argument(
        "--output-copy-limit",
        type=int,
        default=OUTPUT_COPY_LIMIT,
        metavar="BYTES",
        help="the copy stops when the file would grow past this size (tuning and tests)",
    )
    args = parser.parse_args(argv)
    if args.metadata_url is None:
        args.metadata_url = METADATA_URLS.get(args.cloud, "")
    elif args.cloud == "none":
        parser.error("--metadata-url needs --cloud")
    else:
        meta = urllib.parse.urlsplit(args.metadata_url)
        if meta.scheme not in ("http", "https") or not meta.hostname:
            parser.error(f"--metadata-url {args.metadata_url!r} is not an http(s) URL")
    if not 0 < args.metadata_poll <= 3600:
        parser.error("--metadata-poll must be more than 0 and at most 3600 seconds")
    parts = urllib.parse.urlsplit(args.service)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parser.error(f"--service {args.service!r} is not an http(s) URL")
    if args.spool_lines < 1:
        parser.error("--spool-lines must be at least 1")
    if args.output_copy_limit < 1024:
        parser.error("--output-copy-limit must be at least 1024 bytes")
    if args.output_copy is not None:
        if not args.output_copy.strip():
            parser.error("--output-copy needs a file name")
        args.output_copy = os.path.abspath(args.output_copy)
    args.root = os.path.abspath(args.root)
    if args.state_dir is None:
        args.state_dir = os.path.join(args.root, "var", "lib", "burst-broker")
    return args


def read_token(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read(4096).strip()
    except (OSError, UnicodeDecodeError) as error:
        log(f"cannot read the token file {path}: {getattr(error, 'strerror', None) or error}")
        return None
    if not token or any(c.isspace() for c in token):
        log(f"the token file {path} does not hold a token")
        return None
    return token


def _on_signal(signum: int, frame: object) -> None:
    for each in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(each) is _on_signal:
            signal.signal(each, signal.SIG_DFL)  # a second signal ends the agent at once
    raise Signalled(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    token = read_token(args.token_file)
    if token is None:
        return EXIT_USAGE
    for each in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(each) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            signal.signal(each, _on_signal)
    agent = Agent(args, token)
    try:
        return agent.run()
    except TokenRefused as error:
        log(f"the service refused the node token (the cluster ended, or a wrong token): {error}")
        agent.abandon()
        return EXIT_TOKEN
    except (CallRefused, BadAnswer) as error:
        log(f"registration failed: {error}")
        agent.abandon()
        return EXIT_USAGE
    except Signalled as error:
        log(f"got signal {error.signum}: stopping the command and ending")
        agent.abandon(final_sync=True)
        return 128 + error.signum


if __name__ == "__main__":
    sys.exit(main())
