"""Datasets in the artifact store: ``broker datasets upload ID DIR`` puts a directory where
experiments that list ``ID`` in ``dataset_id_list`` find it (``/data/<ID>/`` on every node).

It writes to the configured store directly (``[artifacts] url``; the store's own credentials:
the boto3 chain, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_KEY``), under the
organisation given (``local`` is the organisation of ``broker run``'s own service). A
``file://`` store is written by copying; a cloud store through the same signed uploads the
nodes use (single PUT, parts, or resumable), so no second code path talks to each cloud.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.artifacts import dataset_prefix, org_part
from broker.diagnostics import Diagnostic
from broker.errors import InvalidRequest
from providers.storage.base import ArtifactStore, StorageError, UploadPlan

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class DatasetSummary:
    dataset_id: str
    files: int
    bytes: int

    def to_json_dict(self) -> dict[str, Any]:
        return {"dataset_id": self.dataset_id, "files": self.files, "bytes": self.bytes}


def check_dataset_id(dataset_id: str) -> str:
    if not _ID.fullmatch(dataset_id):
        raise InvalidRequest(
            [
                Diagnostic(
                    field="dataset_id",
                    message=f"{dataset_id[:80]!r} is not an ID: letters, digits, '.', '_' or "
                    "'-', starting with a letter or digit, at most 128 characters",
                )
            ]
        )
    return dataset_id


def _files(source: Path) -> Iterator[tuple[Path, str]]:
    """(file, path relative to ``source`` with ``/``) for every regular file; symlinks are
    not followed."""
    for folder, dirs, names in os.walk(source):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path, path.relative_to(source).as_posix()


def _send(plan: UploadPlan, path: Path) -> list[str]:
    """Send ``path``'s bytes as ``plan`` says; each part's ETag (``parts``)."""
    etags: list[str] = []
    with path.open("rb") as src:
        if plan.kind == "resumable":
            request = plan.requests[0]
            offset = 0
            while offset < plan.size or offset == 0:
                chunk = src.read(plan.part_size)
                end = offset + len(chunk)
                headers = dict(request.headers)
                if plan.size:
                    headers["Content-Range"] = f"bytes {offset}-{end - 1}/{plan.size}"
                _put(request.url, headers, chunk, final=end >= plan.size)
                offset = end
                if not chunk:
                    break
            return etags
        for index, request in enumerate(plan.requests):
            src.seek(index * plan.part_size)
            chunk = src.read(plan.part_size if plan.kind == "parts" else plan.size)
            etags.append(_put(request.url, dict(request.headers), chunk, final=True))
    return etags


def _put(url: str, headers: dict[str, str], body: bytes, *, final: bool) -> str:
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            return str(answer.headers.get("ETag") or "")
    except urllib.error.HTTPError as exc:
        if exc.code == 308 and not final:  # a resumable chunk taken; more to come
            return ""
        raise StorageError(f"the store refused a part: HTTP {exc.code}") from None
    except OSError as exc:  # the URL carries a signature: never shown
        raise StorageError(f"the store could not be reached: {exc.__class__.__name__}") from None


def upload_dataset(
    store: ArtifactStore,
    org: str | None,
    dataset_id: str,
    source: Path,
    progress: Callable[[str], None] | None = None,
) -> DatasetSummary:
    """Put every file under ``source`` into the dataset ``dataset_id`` of ``org``."""
    from providers.storage.file import FileStore

    check_dataset_id(dataset_id)
    if not source.is_dir():
        raise InvalidRequest([Diagnostic(field="DIR", message=f"{source} is not a directory")])
    prefix = dataset_prefix(org, dataset_id)
    files = total = 0
    for path, rel in _files(source):
        key = prefix + rel
        size = path.stat().st_size
        if isinstance(store, FileStore):
            target = store.path_for(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        else:
            plan = store.upload(key, size)
            try:
                etags = _send(plan, path)
                if plan.kind == "parts":
                    store.complete(plan, etags)
            except BaseException:
                store.abort(plan)
                raise
        files += 1
        total += size
        if progress is not None:
            progress(f"{dataset_id}: {rel} ({size:,} bytes)")
    if files == 0:
        raise InvalidRequest([Diagnostic(field="DIR", message=f"{source} holds no files")])
    return DatasetSummary(dataset_id, files, total)


def list_datasets(store: ArtifactStore, org: str | None) -> list[DatasetSummary]:
    """The datasets of ``org``, with their file counts and sizes."""
    prefix = f"{org_part(org)}/datasets/"
    by_id: dict[str, list[int]] = {}
    for obj in store.list(prefix):
        dataset_id = obj.key[len(prefix) :].split("/", 1)[0]
        entry = by_id.setdefault(dataset_id, [0, 0])
        entry[0] += 1
        entry[1] += obj.size
    return [DatasetSummary(d, n, b) for d, (n, b) in sorted(by_id.items())]


__all__ = ["DatasetSummary", "check_dataset_id", "list_datasets", "upload_dataset"]
