"""Artifacts and inputs: where an experiment's files live in the artifact store, and which
objects the service signs URLs for, for whom.

Layout under the store's prefix (``[artifacts] url``; default ``file://<state dir>/artifacts``):

- ``<org>/experiments/<experiment-id>/<kind>/rank-<r>/<path>``: what rank r wrote under a
  kind's directory; kinds ``checkpoints`` (``$OUTPUT_PATH`` = ``$CHECKPOINT_ARTIFACT_PATH``,
  ``/mnt/checkpoints``), ``crud`` (``/mnt/crud``), ``lossy`` (``/mnt/lossy``) and ``logs``
  (``/mnt/logs``). The experiment id is the cluster id: it stays the same across cycles
  (``broker restart``), so a restarted experiment finds its checkpoints.
- ``<org>/datasets/<dataset-id>/<path>``: a dataset of ``dataset_id_list``, at
  ``/data/<dataset-id>/<path>`` on every node.
- An input artifact id (``input_artifact_id_list``) is ``<experiment-id>.<kind>``: that
  earlier experiment's files of that kind, every rank, at ``/data/<artifact-id>/rank-<r>/
  <path>`` on every node.

``<org>`` is the organisation (``_local`` for clusters made without one). A node asks only
for its own experiment's objects: every key is built here from the node token's cluster, the
rank and a checked relative path, never taken from the node.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.diagnostics import Diagnostic
from broker.errors import InvalidRequest

if TYPE_CHECKING:
    from broker.state import ClusterRecord
    from providers.storage.base import ArtifactStore

KINDS = ("checkpoints", "crud", "lossy", "logs")
KIND_PATHS = {
    "checkpoints": "/mnt/checkpoints",
    "crud": "/mnt/crud",
    "lossy": "/mnt/lossy",
    "logs": "/mnt/logs",
}
SYNC_SECONDS: Mapping[str, float] = {  # the seed's intervals
    "checkpoints": 600.0,
    "crud": 600.0,
    "lossy": 30.0,
    "logs": 10.0,
}
LOCAL_ORG = "_local"
MAX_PATH = 1024
_ARTIFACT_ID = re.compile(r"(bb-[0-9a-f]{12})\.(checkpoints|crud|lossy|logs)")


def org_part(org: str | None) -> str:
    return org if org and org != "-" else LOCAL_ORG


def experiment_prefix(cluster: ClusterRecord) -> str:
    return f"{org_part(cluster.org)}/experiments/{cluster.id}/"


def output_key(cluster: ClusterRecord, kind: str, rank: int, path: str) -> str:
    return f"{experiment_prefix(cluster)}{kind}/rank-{rank}/{path}"


def dataset_prefix(org: str | None, dataset_id: str) -> str:
    return f"{org_part(org)}/datasets/{dataset_id}/"


def input_artifact_prefix(org: str | None, artifact_id: str) -> str | None:
    """The store prefix of ``<experiment-id>.<kind>`` (None: not such an id)."""
    match = _ARTIFACT_ID.fullmatch(artifact_id)
    if match is None:
        return None
    return f"{org_part(org)}/experiments/{match[1]}/{match[2]}/"


def clean_path(path: object, field: str = "path") -> str:
    """A node's relative path: ``/``-separated, no empty, ``.`` or ``..`` part, no leading
    ``/``, at most 1024 characters; InvalidRequest (422) otherwise."""
    ok = isinstance(path, str) and 0 < len(path) <= MAX_PATH
    parts = path.split("/") if isinstance(path, str) else []
    if not ok or any(p in ("", ".", "..") for p in parts) or "\\" in str(path) or "\0" in str(path):
        raise InvalidRequest(
            [Diagnostic(field=field, message=f"{str(path)[:100]!r} is not a relative path")]
        )
    return str(path)


def check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise InvalidRequest(
            [Diagnostic(field="kind", message=f"kind must be one of {', '.join(KINDS)}")]
        )
    return str(kind)


def _inputs_of(cluster: ClusterRecord) -> list[tuple[str, str | None]]:
    """(id, store prefix or None when the id is not an artifact id) for each dataset and
    input artifact of the experiment."""
    experiment = cluster.experiment or {}
    pairs: list[tuple[str, str | None]] = [
        (str(d), dataset_prefix(cluster.org, str(d)))
        for d in experiment.get("dataset_id_list") or ()
    ]
    pairs += [
        (str(a), input_artifact_prefix(cluster.org, str(a)))
        for a in experiment.get("input_artifact_id_list") or ()
    ]
    return pairs


def missing_inputs(
    store: ArtifactStore, org: str | None, experiment: Mapping[str, Any]
) -> list[Diagnostic]:
    """A diagnostic per dataset or input artifact of ``experiment`` that the store does not
    hold (an empty prefix is missing): refused at submit, before any GPU is paid for."""
    problems: list[Diagnostic] = []
    for key, what in (("dataset_id_list", "dataset"), ("input_artifact_id_list", "artifact")):
        for item in experiment.get(key) or ():
            prefix = (
                dataset_prefix(org, str(item))
                if what == "dataset"
                else input_artifact_prefix(org, str(item))
            )
            if prefix is None:
                problems.append(
                    Diagnostic(
                        field=key,
                        message=f"{item!r} is not an artifact id (<experiment-id>.<kind>, "
                        f"kind one of {', '.join(KINDS)}, e.g. bb-0123456789ab.checkpoints)",
                    )
                )
            elif not store.list(prefix):
                problems.append(
                    Diagnostic(field=key, message=f"no {what} {item!r} in the artifact store")
                )
    return problems


def input_files(
    store: ArtifactStore, cluster: ClusterRecord, rank: int, expires: float
) -> dict[str, Any]:
    """The ``inputs`` answer for ``rank``: every file to download before the command, with
    a signed GET each: datasets and input artifacts under ``/data/<id>/``, and on a restarted
    experiment (cycle > 1) this rank's latest checkpoints under ``/mnt/checkpoints/``."""
    files: list[dict[str, Any]] = []
    missing: list[str] = []
    sources = list(_inputs_of(cluster))
    for ident, prefix in sources:
        found = store.list(prefix) if prefix is not None else []
        if not found:
            missing.append(ident)
        for obj in found:
            rel = obj.key[len(prefix or "") :]
            files.append(
                {
                    "dest": f"/data/{ident}/{rel}",
                    "size": obj.size,
                    "request": store.download(obj.key, expires=expires).to_json_dict(),
                }
            )
    if cluster.cycle > 1:
        prefix = f"{experiment_prefix(cluster)}checkpoints/rank-{rank}/"
        for obj in store.list(prefix):
            files.append(
                {
                    "dest": f"{KIND_PATHS['checkpoints']}/{obj.key[len(prefix) :]}",
                    "size": obj.size,
                    "request": store.download(obj.key, expires=expires).to_json_dict(),
                }
            )
    return {
        "files": files,
        "total_bytes": sum(int(f["size"]) for f in files),
        "missing": missing,
    }


@dataclass(frozen=True)
class Artifact:
    """One file an experiment wrote: ``path`` is ``<kind>/rank-<r>/<path>``."""

    path: str
    kind: str
    rank: int
    size: int
    modified: float

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "rank": self.rank,
            "size": self.size,
            "modified": self.modified,
        }


def list_artifacts(
    store: ArtifactStore, cluster: ClusterRecord, kind: str | None = None
) -> list[Artifact]:
    """Every file the experiment wrote (of ``kind``), sorted by path."""
    base = experiment_prefix(cluster)
    out: list[Artifact] = []
    for obj in store.list(base + (f"{kind}/" if kind else "")):
        path = obj.key[len(base) :]
        kind_part, rank_part, _ = [*path.split("/", 2), "", ""][:3]
        if kind_part not in KINDS or not rank_part.startswith("rank-"):
            continue
        try:
            rank = int(rank_part[5:])
        except ValueError:
            continue
        out.append(Artifact(path, kind_part, rank, obj.size, obj.modified))
    return out


def artifact_key(cluster: ClusterRecord, path: str) -> str:
    """The store key of ``<kind>/rank-<r>/<path>`` of this experiment (InvalidRequest when
    ``path`` is not such a path)."""
    clean = clean_path(path)
    kind_part, _, rest = clean.partition("/")
    check_kind(kind_part)
    if not rest.startswith("rank-") or "/" not in rest:
        raise InvalidRequest(
            [Diagnostic(field="path", message="an artifact path is <kind>/rank-<r>/<file>")]
        )
    return experiment_prefix(cluster) + clean


__all__ = [
    "KINDS",
    "KIND_PATHS",
    "SYNC_SECONDS",
    "Artifact",
    "artifact_key",
    "check_kind",
    "clean_path",
    "dataset_prefix",
    "experiment_prefix",
    "input_artifact_prefix",
    "input_files",
    "list_artifacts",
    "missing_inputs",
    "output_key",
]
