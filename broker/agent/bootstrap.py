"""The boot script that installs and starts the node agent on a cloud node.

Every node of a cluster that has a command boots with :func:`bootstrap_script`'s output:
AWS ``UserData``, GCP ``startup-script`` metadata, Azure ``customData`` (each adapter passes
``LaunchRequest.bootstrap`` through). The script, run as root by cloud-init (or GCE's guest
agent):

1. writes the agent (``broker/agent/agent.py``, carried gzip + base64) to
   ``/opt/burst-broker/agent.py`` and the cluster's node token to
   ``/opt/burst-broker/node-token`` (``umask 077``: the directory 0700, the token 0600);
2. finds ``python3`` 3.8 or newer (``python3``, then ``python3.14`` ... ``python3.8`` on
   ``PATH``), or says why it cannot in ``/var/log/burst-broker-agent.log`` and exits 1;
3. starts ``python3 -I /opt/burst-broker/agent.py --service URL --cluster ID --token-file
   /opt/burst-broker/node-token`` detached (``setsid nohup``, output appended to the log).

Every value goes into the script through :func:`shlex.quote`, after a check of its form
(an http(s) URL without user, query or fragment; a cluster id ``bb-<hex>``; a node token
``bbn_...``), so a value can never become shell code. The only secret in the script is the
node token (scoped to this cluster's agent calls, valid until the cluster ends); nothing
here ever reads a cloud credential. The script prints no secret: the token is written by a
shell builtin (never in a process's argv) and passed to the agent as a file.

The script is the same bytes for the same inputs (gzip without a timestamp), so a launch
retried with the same token sends the same ``UserData``. Its size per cloud is checked by
:func:`check_bootstrap_size` (and again by each adapter before it calls the cloud). AWS's
16 KB is the limit that binds: the script around the agent is about 2.1 KB, which leaves
about 14 KB of base64, i.e. an agent of about 10.5 KB once gzipped.

The service, launching a cluster that has a command::

    script = bootstrap_script(service_url=public_url, cluster_id=cluster.id, node_token=token)
    check_bootstrap_size(script, "aws")  # optional: the adapter refuses it the same way
    LaunchRequest(shape=..., zone=..., count=..., token=..., tags=..., bootstrap=script)
"""

from __future__ import annotations

import base64
import gzip
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
    "AWS_USER_DATA_LIMIT",
    "AZURE_CUSTOM_DATA_LIMIT",
    "BOOTSTRAP_LIMITS",
    "GCP_METADATA_VALUE_LIMIT",
    "INSTALL_DIR",
    "LOG_FILE",
    "BootstrapTooLargeError",
    "InvalidBootstrapValue",
    "bootstrap_script",
    "bootstrap_size",
    "check_bootstrap_size",
    "embedded_agent",
    "packaged_agent",
]

INSTALL_DIR = "/opt/burst-broker"
LOG_FILE = "/var/log/burst-broker-agent.log"
AGENT_FILE = "agent.py"
TOKEN_FILE = "node-token"
PAYLOAD_END = "BURST_BROKER_AGENT"  # the heredoc delimiter (never a base64 line)
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
) -> str:
    """The boot script of a node of ``cluster_id``: install the agent and start it.

    ``agent_source``: the agent's bytes (default: ``broker/agent/agent.py`` of this package).
    ``install_dir`` and ``log_file`` are for tests (a node uses the defaults). Raises
    InvalidBootstrapValue for a value of the wrong form. The caller checks the size for the
    cloud it launches on with :func:`check_bootstrap_size` (the adapters check it too).
    """
    url = _service_url(service_url)
    if not CLUSTER_ID.fullmatch(cluster_id):
        raise InvalidBootstrapValue(f"cluster id {cluster_id[:100]!r} is not bb-<hex>")
    if not NODE_TOKEN.fullmatch(node_token):
        raise InvalidBootstrapValue("the node token is not a node token (bbn_...)")
    directory = _plain_path(install_dir, "install directory")
    log = _plain_path(log_file, "log file")
    source = packaged_agent() if agent_source is None else agent_source
    if not source:
        raise InvalidBootstrapValue("the agent source is empty")
    packed = gzip.compress(source, compresslevel=9, mtime=0)
    payload = base64.encodebytes(packed).decode("ascii").rstrip("\n")
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
        size=len(source),
        pythons=" ".join(PYTHONS),
        end=PAYLOAD_END,
        payload=payload,
    )


def embedded_agent(script: str) -> bytes:
    """The agent bytes a boot script carries (for tests and for inspecting a node's script)."""
    start = f"<<'{PAYLOAD_END}'\n"
    _, found, rest = script.partition(start)
    payload, end, _rest = rest.partition(f"\n{PAYLOAD_END}\n")
    if not found or not end:
        raise ValueError("not a burst-broker boot script (no agent payload)")
    return gzip.decompress(base64.b64decode(payload))


# No bash-only syntax: the script runs under bash (its #! line) but any POSIX sh would do.
# Nothing in it echoes the token; `set -x` must never be added (cloud-init and GCE copy a
# boot script's output to the serial console).
_TEMPLATE = """\
#!/bin/bash
# burst-broker node bootstrap for cluster {cluster}: installs the node agent and starts it.
# The only secret here is the cluster's node token (its agent calls only, until it ends).
set -eu
umask 077
DIR={dir}
LOG={log}
LOG_DIR={log_dir}
SERVICE={service}
CLUSTER={cluster_q}

say() {{
    printf '%s burst-broker-bootstrap: %s\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || :)" \\
        "$1" >>"$LOG" 2>/dev/null || :
    printf 'burst-broker-bootstrap: %s\\n' "$1" >&2
}}

mkdir -p "$DIR" "$LOG_DIR"
chmod 0700 "$DIR"
say "installing the node agent of cluster $CLUSTER in $DIR"

# The node token: mode 0600 from the start (umask 077), written by a builtin (never in argv).
rm -f "$DIR/{token_file}"
printf '%s' {token} >"$DIR/{token_file}"
chmod 0600 "$DIR/{token_file}"

# The agent ({size} bytes), gzip + base64.
base64 -d >"$DIR/{agent}.gz" <<'{end}'
{payload}
{end}
gzip -dc "$DIR/{agent}.gz" >"$DIR/{agent}.new"
rm -f "$DIR/{agent}.gz"
mv -f "$DIR/{agent}.new" "$DIR/{agent}"

# python3 >= 3.8: python3, else the newest python3.N on PATH.
PY=
for name in {pythons}; do
    found=$(command -v "$name" 2>/dev/null) || continue
    if "$found" -I -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)' \\
        >/dev/null 2>&1; then
        PY=$found
        break
    fi
done
if [ -z "$PY" ]; then
    say "refusing to start the agent: no python3 >= 3.8 on this node (PATH=$PATH); \\
cluster $CLUSTER cannot run here"
    exit 1
fi

cd "$DIR"
if command -v setsid >/dev/null 2>&1; then
    setsid nohup "$PY" -I "$DIR/{agent}" --service "$SERVICE" --cluster "$CLUSTER" \\
        --token-file "$DIR/{token_file}" </dev/null >>"$LOG" 2>&1 &
else
    nohup "$PY" -I "$DIR/{agent}" --service "$SERVICE" --cluster "$CLUSTER" \\
        --token-file "$DIR/{token_file}" </dev/null >>"$LOG" 2>&1 &
fi
echo "$!" >"$DIR/agent.pid"
say "started the agent with $PY (pid $!) for $SERVICE"
"""
