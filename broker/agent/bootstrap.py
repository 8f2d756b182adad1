"""The boot script that downloads and starts the node agent on a cloud node.

Every node of a cluster that has a command boots with :func:`bootstrap_script`'s output:
AWS ``UserData``, GCP ``startup-script`` metadata, Azure ``customData`` (each adapter passes
``LaunchRequest.bootstrap`` through). The script, run as root by cloud-init (or GCE's guest
agent):

1. writes the cluster's node token to ``/opt/burst-broker/node-token`` (``umask 077``: the
   directory 0700, the token 0600);
2. finds ``python3`` 3.8 or newer (``python3``, then ``python3.14`` ... ``python3.8`` on
   ``PATH``), or says why it cannot in ``/var/log/burst-broker-agent.log`` and exits 1;
3. with that python's standard library (no curl or wget assumed), downloads the agent from
   ``GET <service>/v1/agent/agent.py`` (``Authorization: Bearer`` the node token, read from
   its file), retrying with backoff for :data:`FETCH_WINDOW` seconds while the service cannot
   be reached or answers 5xx/408/425/429 (the token never follows a redirect); a refused
   token or another 4xx ends it at once. The bytes must have the SHA-256 the script
   pins (the agent this service ships when it made the script): otherwise it refuses to start
   them, says so in the log and exits 1. An agent already in place with that SHA-256 (a
   reboot: GCE runs ``startup-script`` at every boot) is used without a download;
4. starts ``python3 -I /opt/burst-broker/agent.py --service URL --cluster ID --token-file
   /opt/burst-broker/node-token --cloud CLOUD --output-copy /var/log/burst-broker-command.log``
   detached (``setsid nohup``, output appended to the log); CLOUD (aws, gcp, azure or none)
   is read from the firmware's vendor (``/sys/class/dmi/id/sys_vendor``), for the agent's
   preemption watcher; the command's output is also kept on the node (bounded) for whoever
   logs in to look.

Every value goes into the script through :func:`shlex.quote`, after a check of its form
(an http(s) URL without user, query or fragment; a cluster id ``bb-<hex>``; a node token
``bbn_...``), so a value can never become shell code. The only secret in the script is the
node token (scoped to this cluster's agent calls, valid until the cluster ends); nothing
here ever reads a cloud credential. The script prints no secret: the token is written by a
shell builtin (never in a process's argv), read from its file by the download and passed to
the agent as a file.

The script is the same bytes for the same inputs, so a launch retried with the same token
sends the same ``UserData``. It carries no copy of the agent, so its size (under 4 KB)
does not grow with the agent's; :func:`check_bootstrap_size` still checks it per cloud (and
each adapter again before it calls the cloud).

The service, launching a cluster that has a command::

    script = bootstrap_script(service_url=public_url, cluster_id=cluster.id, node_token=token)
    check_bootstrap_size(script, "aws")  # optional: the adapter refuses it the same way
    LaunchRequest(shape=..., zone=..., count=..., token=..., tags=..., bootstrap=script)

and serves the agent's bytes (:func:`packaged_agent`) at :data:`AGENT_ROUTE` to node tokens.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from importlib import resources
from urllib.parse import urlsplit

from providers.base import (
    AWS_USER_DATA_LIMIT,
    AZURE_CUSTOM_DATA_LIMIT,
    BOOTSTRAP_LIMITS,
    GCP_METADATA_VALUE_LIMIT,
    bootstrap_size,
)
from providers.base import check_bootstrap as check_bootstrap_size
from providers.errors import BootstrapTooLargeError

__all__ = [
    "AGENT_ROUTE",
    "AWS_USER_DATA_LIMIT",
    "AZURE_CUSTOM_DATA_LIMIT",
    "BOOTSTRAP_LIMITS",
    "FETCH_WINDOW",
    "GCP_METADATA_VALUE_LIMIT",
    "INSTALL_DIR",
    "LOG_FILE",
    "BootstrapTooLargeError",
    "InvalidBootstrapValue",
    "agent_sha256",
    "bootstrap_script",
    "bootstrap_size",
    "check_bootstrap_size",
    "packaged_agent",
    "pinned_agent",
]

INSTALL_DIR = "/opt/burst-broker"
LOG_FILE = "/var/log/burst-broker-agent.log"
OUTPUT_COPY_FILE = "burst-broker-command.log"  # next to the log: the command's output, bounded
AGENT_FILE = "agent.py"
TOKEN_FILE = "node-token"
AGENT_ROUTE = "/v1/agent/agent.py"  # where the service serves the agent (node tokens only)
FETCH_WINDOW = 300  # seconds a node keeps trying to download the agent
PYTHONS = ("python3", *(f"python3.{minor}" for minor in range(14, 7, -1)))

CLUSTER_ID = re.compile(r"bb-[0-9a-f]+")
NODE_TOKEN = re.compile(r"bbn_[A-Za-z0-9_-]+")
# http(s)://host[:port][/path]: a DNS name, an IPv4 address or a bracketed IPv6 address, and
# a path of unreserved characters and %-escapes only (no user, query or fragment).
_SERVICE_URL = re.compile(
    r"https?://(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%/-]*)?"
)
_ABSOLUTE_PATH = re.compile(r"/[A-Za-z0-9._/-]*")
_PINNED = re.compile(r"^AGENT_SHA256=([0-9a-f]{64})$", re.MULTILINE)
_MAX_URL = 2048


class InvalidBootstrapValue(ValueError):
    """A value that cannot go into a boot script (the message names it, never a token)."""


def packaged_agent() -> bytes:
    """The bytes of ``broker/agent/agent.py``, as shipped with the package."""
    found = resources.files("broker.agent").joinpath(AGENT_FILE)
    try:
        return found.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the node agent {found} is missing: it ships with the broker package "
            "(broker/agent/agent.py)"
        ) from None


def agent_sha256(source: bytes | None = None) -> str:
    """The SHA-256 (hex) of ``source``, by default of the packaged agent."""
    return hashlib.sha256(packaged_agent() if source is None else source).hexdigest()


def pinned_agent(script: str) -> str:
    """The agent's SHA-256 a boot script pins (for tests and for inspecting a node's script)."""
    found = _PINNED.search(script)
    if found is None:
        raise ValueError("not a burst-broker boot script (no pinned agent SHA-256)")
    return found.group(1)


def _service_url(url: str) -> str:
    if len(url) > _MAX_URL or not _SERVICE_URL.fullmatch(url):
        raise InvalidBootstrapValue(
            f"service URL {url[:200]!r} is not an http(s)://host[:port][/path] URL (no user, "
            "query, fragment, space or shell character): set [service] public_url to the "
            "address nodes reach the service at"
        )
    try:
        port = urlsplit(url).port
    except ValueError:
        port = 0
    if port == 0:
        raise InvalidBootstrapValue(f"service URL {url!r}: the port is out of range")
    return url.rstrip("/")


def _plain_path(path: str, what: str) -> str:
    """An absolute path without ``..`` or any character a shell or a reader could trip on."""
    parts = path.strip("/").split("/")
    if not _ABSOLUTE_PATH.fullmatch(path) or not parts[0] or ".." in parts or "." in parts:
        raise InvalidBootstrapValue(f"{what} {path!r} is not a plain absolute path")
    return "/" + "/".join(p for p in parts if p)


def bootstrap_script(
    *,
    service_url: str,
    cluster_id: str,
    node_token: str,
    agent_source: bytes | None = None,
    install_dir: str = INSTALL_DIR,
    log_file: str = LOG_FILE,
    fetch_window: int = FETCH_WINDOW,
) -> str:
    """The boot script of a node of ``cluster_id``: download the agent, check it, start it.

    ``agent_source``: the agent whose SHA-256 the script pins (default: ``broker/agent/
    agent.py`` of this package, the bytes this service serves at :data:`AGENT_ROUTE`).
    ``install_dir``, ``log_file`` and ``fetch_window`` (seconds of download retries) are for
    tests (a node uses the defaults). Raises InvalidBootstrapValue for a value of the wrong
    form. The caller checks the size for the cloud it launches on with
    :func:`check_bootstrap_size` (the adapters check it too).
    """
    url = _service_url(service_url)
    if not CLUSTER_ID.fullmatch(cluster_id):
        raise InvalidBootstrapValue(f"cluster id {cluster_id[:100]!r} is not bb-<hex>")
    if not NODE_TOKEN.fullmatch(node_token):
        raise InvalidBootstrapValue("the node token is not a node token (bbn_...)")
    directory = _plain_path(install_dir, "install directory")
    log = _plain_path(log_file, "log file")
    if isinstance(fetch_window, bool) or not 1 <= fetch_window <= 86_400:
        raise InvalidBootstrapValue(f"fetch window {fetch_window!r} is not 1..86400 seconds")
    source = packaged_agent() if agent_source is None else agent_source
    if not source:
        raise InvalidBootstrapValue("the agent source is empty")
    q = shlex.quote
    return _TEMPLATE.format(
        cluster=cluster_id,
        dir=q(directory),
        log=q(log),
        log_dir=q(posixpath.dirname(log)),
        service=q(url),
        cluster_q=q(cluster_id),
        token=q(node_token),
        agent=AGENT_FILE,
        token_file=TOKEN_FILE,
        output_copy=OUTPUT_COPY_FILE,
        route=AGENT_ROUTE,
        size=len(source),
        sha256=agent_sha256(source),
        window=int(fetch_window),
        pythons=" ".join(PYTHONS),
        fetch=_FETCH,
    )


# The download, run as `python -I -c FETCH URL SHA256 DEST TOKEN_FILE LOG WINDOW`: Python 3.8's
# standard library only, no single quote (it sits in a single-quoted shell word), no brace
# (the template is str.format'ed), one-space indents (it counts against UserData's 16 KB).
# Exit 0: DEST holds the pinned bytes; 1: LOG says why not.
_FETCH = """\
import hashlib as H, os, sys, time, urllib.error as E, urllib.request as R
url, want, dest, tok, log, win = sys.argv[1:]
end = time.monotonic() + float(win)
def say(m):
 m = "burst-broker-bootstrap: " + m + "\\n"
 sys.stderr.write(m)
 try:
  with open(log, "a") as f:
   f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + m)
 except OSError:
  pass
def sha(b):
 return H.sha256(b).hexdigest()
if os.path.isfile(dest):
 with open(dest, "rb") as f:
  if sha(f.read()) == want:
   say("the agent is already in place")
   sys.exit(0)
req = R.Request(url)
with open(tok) as f:
 req.add_unredirected_header("Authorization", "Bearer " + f.read().strip())
n, pause = 0, 1
while True:
 n += 1
 try:
  with R.urlopen(req, timeout=max(1, min(30, end - time.monotonic()))) as r:
   body = r.read(1 << 26)
  break
 except E.HTTPError as e:
  why = "HTTP %d %s" % (e.code, e.reason)
  if e.code < 500 and e.code not in (408, 425, 429):
   if e.code in (401, 403):
    why += " (node token refused: has the cluster ended?)"
   say("refusing to start the agent: %s answered %s" % (url, why))
   sys.exit(1)
 except Exception as e:
  why = "%s: %s" % (type(e).__name__, getattr(e, "reason", e))
 left = end - time.monotonic()
 if left <= 0:
  say("giving up on %s after %d tries in %s s (last: %s): the agent is not started"
   % (url, n, win, why))
  sys.exit(1)
 say("no agent yet (try %d: %s); trying again in %.0f s" % (n, why, min(pause, left)))
 time.sleep(min(pause, left))
 pause = min(2 * pause, 30)
got = sha(body)
if got != want:
 say("refusing to start the agent: %s sent %d bytes of sha256 %s, not the pinned %s"
  % (url, len(body), got, want))
 sys.exit(1)
with open(dest + ".new", "wb") as f:
 f.write(body)
os.replace(dest + ".new", dest)
say("downloaded the agent (%d bytes, sha256 %s)" % (len(body), got))
"""
assert "'" not in _FETCH and "{" not in _FETCH and "}" not in _FETCH


# No bash-only syntax: the script runs under bash (its #! line) but any POSIX sh would do.
# Nothing in it echoes the token; `set -x` must never be added (cloud-init and GCE copy a
# boot script's output to the serial console).
_TEMPLATE = """\
#!/bin/bash
# burst-broker node bootstrap for cluster {cluster}: downloads the node agent and starts it.
# The only secret here is the cluster's node token (its agent calls only, until it ends).
set -eu
umask 077
DIR={dir}
LOG={log}
LOG_DIR={log_dir}
SERVICE={service}
CLUSTER={cluster_q}
# The agent to start: {size} bytes from $SERVICE{route}, of this SHA-256.
AGENT_SHA256={sha256}

say() {{
    printf '%s burst-broker-bootstrap: %s\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || :)" \\
        "$1" >>"$LOG" 2>/dev/null || :
    printf 'burst-broker-bootstrap: %s\\n' "$1" >&2
}}

mkdir -p "$DIR" "$LOG_DIR"
chmod 0700 "$DIR"
say "installing the node agent of cluster $CLUSTER in $DIR"

# The node token: 0600 from the start, written by a builtin (never in argv).
rm -f "$DIR/{token_file}"
printf '%s' {token} >"$DIR/{token_file}"
chmod 0600 "$DIR/{token_file}"

# python3 >= 3.8: python3, else the newest python3.N on PATH.
PY=
for name in {pythons}; do
    found=$(command -v "$name" 2>/dev/null) || continue
    if "$found" -I -c 'import sys; sys.exit(sys.version_info < (3, 8))' >/dev/null 2>&1; then
        PY=$found
        break
    fi
done
if [ -z "$PY" ]; then
    say "refusing to start the agent: no python3 >= 3.8 on this node (PATH=$PATH); \\
cluster $CLUSTER cannot run here"
    exit 1
fi

# The agent: downloaded with the token (from its file), retried for {window} s, checked.
"$PY" -I -c '{fetch}' "$SERVICE{route}" "$AGENT_SHA256" "$DIR/{agent}" "$DIR/{token_file}" \\
    "$LOG" {window} || exit 1

# Which cloud this is (for the agent's preemption watcher), from the firmware's vendor.
CLOUD=none
case "$(cat /sys/class/dmi/id/sys_vendor 2>/dev/null || true)" in
    "Amazon EC2") CLOUD=aws ;;
    Google*) CLOUD=gcp ;;
    "Microsoft Corporation") CLOUD=azure ;;
esac
if [ "$CLOUD" = none ] && head -c 3 /sys/hypervisor/uuid 2>/dev/null | grep -qi '^ec2'; then
    CLOUD=aws  # older Xen-based EC2 instances
fi

# Detached: its own session (setsid), output to the log.
cd "$DIR"
SETSID=
if command -v setsid >/dev/null 2>&1; then SETSID=setsid; fi
$SETSID nohup "$PY" -I "$DIR/{agent}" --service "$SERVICE" --cluster "$CLUSTER" \\
    --token-file "$DIR/{token_file}" --cloud "$CLOUD" \\
    --output-copy "$LOG_DIR/{output_copy}" </dev/null >>"$LOG" 2>&1 &
echo "$!" >"$DIR/agent.pid"
say "started the agent with $PY (pid $!) for $SERVICE"
"""
