"""Folders that appear whole or not at all: write into a temporary sibling, then rename it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(dest: str | os.PathLike[str], replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dest`; when the block ends without an error it becomes `dest`.

    On an error the temporary folder is removed and `dest` is left as it was. With `replace`, an existing `dest`
    folder is swapped out (renamed aside, then deleted), so readers never see a mix of old and new files.
    """
    out = Path(dest).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.part-", dir=out.parent))
    try:
        yield tmp
        if out.exists() and not replace:
            raise FileExistsError(f"{out} already exists")
        if out.is_dir():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)  # a file at `dest` is not replaced: this raises NotADirectoryError
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def link_or_copy_tree(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """The files of `src` under `dest` as hard links where both lie on one file system, copies elsewhere.

    For write-once files (an exported model, a checkpoint): a link costs nothing where a copy of a large model
    costs seconds to minutes. Nothing may later write into either name in place."""
    def place(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(a, b)

    shutil.copytree(src, dest, copy_function=place, dirs_exist_ok=True)
    return Path(dest)
