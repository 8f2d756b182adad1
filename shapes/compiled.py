"""Compiled catalog files: a validated parse of one catalog file, kept as plain columns.

Parsing and checking a catalog file costs about 7 us per shape (a 100k-shape catalog: most
of a second), and the same file is loaded by every quote. After a full validating parse
the loader keeps the result in a *sidecar*: a :mod:`marshal` dump of the file's columns
(lists of str/int/float, sorted by shape key), which loads in about a tenth of the time.
A sidecar is only ever written from a file that passed every check, and it is used only
when all of these match; anything else sends the loader back to the JSON file (which
rewrites the sidecar):

- the magic bytes and :data:`FORMAT_VERSION` (a sidecar of another version is ignored);
- a CRC-32 of the rest of the sidecar (a truncated or damaged one is ignored);
- the source file's absolute path, size, ``mtime_ns``, ``ctime_ns`` and inode (a changed
  or replaced file, e.g. by ``broker catalog refresh``, is parsed again);
- the size and ``mtime_ns`` of the modules whose checks the parse applied (a new version
  of the checks never trusts a sidecar the old one wrote);
- the shape of the payload itself (column types and lengths).

Where: next to a local catalog file (``.<name>.compiled``: the local catalog directory is
the broker's), else in the caller's ``cache_dir`` (a file named by a hash of the source's
path), e.g. for the bundled files or a read-only directory. No sidecar can be written (no
writable place): the file is parsed each time, as before. Nothing here reads the
environment; the caller passes ``cache_dir``.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import zlib
from pathlib import Path
from typing import NamedTuple

#: Bump when the payload's layout changes (2: spot_as_of, sanity problems, undated rows;
#: 3: each shape's price date, ``day_codes``; 4: ``undated`` counts shapes, not entries).
FORMAT_VERSION = 4
_MAGIC = b"BBCATv%03d" % FORMAT_VERSION  # the format and its version
_CRC = 4  # bytes of CRC-32 after the magic


class FileColumns(NamedTuple):
    """One catalog file's shapes as parallel lists, sorted by key, plus its stamp."""

    provider: str
    prices_as_of: str | None  # ISO date
    retrieved: str | None
    price_source: str
    notes: str
    spot_as_of: str | None  # ISO date
    problems: str  # shapes.sanity problems of a refreshed file, one a line ("" if none)
    undated: int  # shapes whose price is undated
    keys: list[str]
    region: list[str]
    region_lower: list[str]
    instance_type: list[str]
    gpu: list[str]
    gpus_per_node: list[int]
    gpu_memory_gib: list[float]
    vcpus: list[int]
    memory_gib: list[float]
    spot: list[bool]  # provisioning: True for spot, False for on-demand
    price: list[float]
    price_micros: list[int]
    zones: list[tuple[str, ...]]
    zone_prices: list[dict[str, float] | None]
    # each shape's prices_as_of and undated, as shapes.model.day_code writes them: the
    # date's ordinal, 0 for no date, -1 for undated
    day_codes: list[int]


_STRINGS = 8  # the leading scalar fields of FileColumns; the rest are lists


def file_stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a source file."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


_RULES: tuple[tuple[int, int], ...] | None = None


def _rules_stamp() -> tuple[tuple[int, int], ...]:
    """Size and mtime of the modules whose checks a sidecar's parse applied."""
    global _RULES
    if _RULES is None:
        here = Path(__file__).parent
        stamps = []
        for name in ("catalog.py", "model.py", "checks.py", "gpus.py", "compiled.py", "sanity.py"):
            try:
                st = (here / name).stat()
            except OSError:
                stamps.append((-1, -1))
            else:
                stamps.append((st.st_size, st.st_mtime_ns))
        _RULES = tuple(stamps)
    return _RULES


def sidecar_paths(source: Path, *, bundled: bool, cache_dir: Path | None) -> list[Path]:
    """Where the sidecar of ``source`` may be, in the order tried: next to a local file,
    then in ``cache_dir``. Bundled files are never written next to (the package's own
    directory is not ours to write)."""
    out = []
    if not bundled:
        out.append(source.with_name(f".{source.name}.compiled"))
    if cache_dir is not None:
        name = str(source.absolute()).encode()
        digest = (
            f"{zlib.crc32(name):08x}{zlib.adler32(name):08x}"  # a name; the sidecar checks the path
        )
        out.append(cache_dir / f"{source.name}.{digest}.compiled")
    return out


def read(
    source: Path, stamp: tuple[int, int, int, int], *, bundled: bool, cache_dir: Path | None
) -> FileColumns | None:
    """The compiled columns of ``source`` at ``stamp``, or None when no sidecar matches."""
    for path in sidecar_paths(source, bundled=bundled, cache_dir=cache_dir):
        found = _read_one(path, source, stamp)
        if found is not None:
            return found
    return None


def _read_one(path: Path, source: Path, stamp: tuple[int, int, int, int]) -> FileColumns | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = len(_MAGIC) + _CRC
    if len(data) < head or data[: len(_MAGIC)] != _MAGIC:
        return None
    body = memoryview(data)[head:]
    if zlib.crc32(body) != int.from_bytes(data[len(_MAGIC) : head], "little"):
        return None
    try:
        doc = marshal.loads(body)
    except (EOFError, ValueError, TypeError):
        return None
    if not (
        type(doc) is tuple
        and len(doc) == 4
        and doc[0] == str(source.absolute())
        and doc[1] == stamp
        and doc[2] == _rules_stamp()
    ):
        return None
    return _checked_payload(doc[3])


def _checked_payload(payload: object) -> FileColumns | None:
    """The payload as FileColumns if its layout is right (types of the fields, one length
    for every column); the values were checked before the sidecar was written."""
    n_fields = len(FileColumns._fields)
    if type(payload) is not tuple or len(payload) != n_fields:
        return None
    provider, as_of, retrieved, price_source, notes, spot_as_of, problems, undated = payload[
        :_STRINGS
    ]
    columns = payload[_STRINGS:]
    if not (
        type(provider) is str
        and (as_of is None or type(as_of) is str)
        and (retrieved is None or type(retrieved) is str)
        and type(price_source) is str
        and type(notes) is str
        and (spot_as_of is None or type(spot_as_of) is str)
        and type(problems) is str
        and type(undated) is int
    ):
        return None
    if not all(type(c) is list for c in columns):
        return None
    if len({len(c) for c in columns}) != 1:
        return None
    return FileColumns(*payload)


def write(
    source: Path,
    stamp: tuple[int, int, int, int],
    columns: FileColumns,
    *,
    bundled: bool,
    cache_dir: Path | None,
) -> Path | None:
    """Write the sidecar of ``source`` to the first place that takes it (atomically: a
    reader sees the old sidecar or the new one, never half of one); returns where, or
    None if no place did (the load goes on without one)."""
    body = marshal.dumps((str(source.absolute()), stamp, _rules_stamp(), tuple(columns)))
    data = _MAGIC + zlib.crc32(body).to_bytes(_CRC, "little") + body
    for path in sidecar_paths(source, bundled=bundled, cache_dir=cache_dir):
        if _write_one(path, data):
            return path
    return None


def _write_one(path: Path, data: bytes) -> bool:
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        import tempfile  # only when writing: a cold quote never pays for it

        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # as readable as the catalog files themselves
            f.write(data)
        os.replace(tmp, path)
        tmp = None
        return True
    except OSError:
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
