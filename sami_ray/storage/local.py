"""A store in a local (or mounted) folder. Every write is a temp file in the same folder plus os.replace."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .keys import Location, norm_key

TMP_MARK = ".sami-tmp-"  # written files are invisible to list() until renamed into place


class StoreNotFound(StoreError, FileNotFoundError):
    """The key does not exist; catchable as FileNotFoundError too."""


def _fail(url: str, what: str, e: OSError) -> StoreError:
    return StoreError(f"{url}: {what} failed: {e.strerror or e}")


class LocalBackend:
    file_concurrency = 1  # a local disk gains nothing from parallel copies

    def __init__(self, loc: Location):
        self.loc = loc
        self.root = Path(loc.path)

    def __repr__(self) -> str:
        return f"LocalBackend({self.loc.uri!r})"

    def child(self, rel: str) -> LocalBackend:
        return LocalBackend(self.loc.child(rel))

    def url(self, key: str) -> str:
        return self.loc.url(key)

    def _path(self, key: str) -> Path:
        key = norm_key(key)
        return self.root / key if key else self.root

    def _atomic(self, key: str, write: Callable[[Path], None]) -> None:
        dest = self._path(key)
        tmp = dest.parent / f"{TMP_MARK}{dest.name}.{uuid.uuid4().hex[:8]}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())  # the bytes reach the disk before the name does
            os.replace(tmp, dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise _fail(self.url(key), "write", e) from e

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic(key, lambda p: p.write_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise StoreNotFound(f"{self.url(key)}: no such object") from e
        except OSError as e:
            raise _fail(self.url(key), "read", e) from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        """Every file under the folder `prefix`, keyed relative to this store, with its size."""
        base = self._path(prefix)
        if not base.is_dir():
            return {}
        out = {}
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if not name.startswith(TMP_MARK):
                    path = Path(dirpath, name)
                    out[path.relative_to(self.root).as_posix()] = path.stat().st_size
        return out

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self.list_sizes(prefix))

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as e:
                raise _fail(self.url(key), "delete", e) from e

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        try:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        except OSError as e:
            raise _fail(self.url(prefix), "delete", e) from e

    def upload_file(self, key: str, src: Path, progress: Callable[[int], None] | None = None) -> None:
        self._atomic(key, lambda p: shutil.copyfile(src, p))
        if progress:
            progress(src.stat().st_size)

    def download_file(self, key: str, dest: Path, progress: Callable[[int], None] | None = None) -> None:
        src = self._path(key)
        try:
            shutil.copyfile(src, dest)
        except FileNotFoundError as e:
            raise StoreNotFound(f"{self.url(key)}: no such object") from e
        except OSError as e:
            raise _fail(self.url(key), "read", e) from e
        if progress:
            progress(dest.stat().st_size)

    def abort_partial_uploads(self) -> int:
        """Remove temp files left by writers that died between write and rename."""
        n = 0
        if self.root.is_dir():
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    if name.startswith(TMP_MARK):
                        Path(dirpath, name).unlink(missing_ok=True)
                        n += 1
        return n

    def pyarrow_filesystem(self) -> tuple[Any, str]:
        import pyarrow.fs

        return pyarrow.fs.LocalFileSystem(), str(self.root)
