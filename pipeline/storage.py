"""Where a run's state lives: a folder, or any URI Ray's storage layer (pyarrow) opens.

``runtime.storage`` names it (:meth:`pipeline.layout.Layout.state`): empty is the
workspace's ``outputs/``; otherwise a folder every Ray node mounts at the same path (NFS,
Lustre) or a URI such as ``s3://bucket/gat`` or ``gs://bucket/gat``. Ray Train and Tune
write their checkpoints there, and the run's own files (the live log, ``diverged.json``)
go beside them, read and written through :func:`location`: a :class:`pathlib.Path` for a
folder (or ``file://``), a :class:`StorePath` for any other URI. Both answer the same few
calls (``/``, ``name``, ``parent``, ``exists``, ``glob``, ``read_text``, ``unlink``,
``mkdir``), and :func:`write_text` publishes a file whole on either.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from pathlib import Path
from urllib.parse import urlparse

from pipeline.files import atomic_path


def is_uri(value: str) -> bool:
    """``scheme://...`` other than ``file://`` (a folder by another name)."""
    return "://" in value and not value.startswith("file://")


def location(value: str | os.PathLike) -> Path | StorePath:
    """A folder path or ``file://`` URI as a Path; any other URI as a :class:`StorePath`."""
    value = str(value)
    if value.startswith("file://"):
        return Path(urlparse(value).path)
    return StorePath(value) if is_uri(value) else Path(value)


class StorePath:
    """A file or folder in a pyarrow filesystem (``s3://``, ``gs://``, ``hdfs://``, ...).

    Only the URI is kept (and pickled): each process opens the filesystem itself. A query
    (``s3://bucket/gat?region=eu-west-1``) stays at the end of every child's URI. Object
    stores have no folders and no rename: ``mkdir`` is a no-op there, and a written object
    appears whole when its upload completes.
    """

    def __init__(self, uri: str):
        base, _, query = uri.partition("?")
        self.uri = base.rstrip("/") + (f"?{query}" if query else "")

    def _with_base(self, base: str) -> StorePath:
        query = self.uri.partition("?")[2]
        return StorePath(base + (f"?{query}" if query else ""))

    def __truediv__(self, part: str | os.PathLike) -> StorePath:
        return self._with_base(f"{self.uri.partition('?')[0]}/{str(part).strip('/')}")

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"StorePath({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    @property
    def name(self) -> str:
        return self.uri.partition("?")[0].rsplit("/", 1)[1]

    @property
    def parent(self) -> StorePath:
        return self._with_base(self.uri.partition("?")[0].rsplit("/", 1)[0])

    def _fs(self):
        """(filesystem, path inside it): one filesystem per bucket or host in a process."""
        parsed = urlparse(self.uri)
        filesystem, root = _filesystem(parsed.scheme, parsed.netloc, parsed.query)
        return filesystem, "/".join(p for p in (root.strip("/"), parsed.path.strip("/")) if p)

    def _info(self):
        filesystem, path = self._fs()
        return filesystem.get_file_info(path)

    def exists(self) -> bool:
        from pyarrow import fs

        return self._info().type != fs.FileType.NotFound

    def size(self) -> int | None:
        """Bytes of the file, None when it is missing."""
        from pyarrow import fs

        info = self._info()
        return None if info.type == fs.FileType.NotFound else info.size

    def is_dir(self) -> bool:
        from pyarrow import fs

        return self._info().type == fs.FileType.Directory

    def read_bytes(self) -> bytes:
        filesystem, path = self._fs()
        with filesystem.open_input_stream(path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        filesystem, path = self._fs()
        filesystem.create_dir(path.rpartition("/")[0], recursive=True)  # no-op on buckets
        with filesystem.open_output_stream(path) as f:
            f.write(data)

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        filesystem, path = self._fs()
        filesystem.delete_file(path)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        filesystem, path = self._fs()
        filesystem.create_dir(path, recursive=parents)

    def iterdir(self) -> list[StorePath]:
        from pyarrow import fs

        filesystem, path = self._fs()
        infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
        return [self / info.base_name for info in infos]

    def glob(self, pattern: str) -> list[StorePath]:
        """Matches of a relative pattern, ``*`` and ``?`` within one name (``a*/b.json``)."""
        found = [self]
        for part in pattern.split("/"):
            found = [child for folder in found for child in folder.iterdir()
                     if fnmatch.fnmatchcase(child.name, part)]
        return found


@functools.cache
def _filesystem(scheme: str, netloc: str, query: str):
    """pyarrow's filesystem for ``scheme://netloc?query`` and the path of its root in it
    (opening one resolves credentials and, for S3, the bucket's region: done once)."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(f"{scheme}://{netloc}/" + (f"?{query}" if query else ""))


def size(target: Path | StorePath) -> int | None:
    """Bytes of a file, None when it is missing (either kind of path)."""
    if isinstance(target, StorePath):
        return target.size()
    return target.stat().st_size if target.is_file() else None


def write_text(target: Path | StorePath, text: str) -> None:
    """Publish ``text`` at ``target`` whole: a rename on a filesystem, one upload on an object
    store. A reader never sees half of it."""
    if isinstance(target, StorePath):
        target.write_bytes(text.encode())
        return
    with atomic_path(target) as tmp:
        tmp.write_text(text)
