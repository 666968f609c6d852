"""Store keys and URIs: one place that decides what a relative key may look like."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError


def norm_key(rel: str | os.PathLike[str]) -> str:
    """`a/./b/` -> `a/b`; "" and "." mean the root. Keys never climb out of their store."""
    text = str(rel).replace("\\", "/")
    if text.startswith("/"):
        raise StoreError(f"store key {text!r} must be relative")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StoreError(f"store key {text!r} must not contain '..'")
    return "/".join(parts)


def join(*parts: str) -> str:
    return "/".join(p for p in (norm_key(x) for x in parts) if p)


def natural_key(text: str) -> list:
    """Sort `iter-10` after `iter-9` and timestamps in order."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class Location:
    """Where a store lives: a local folder, or an S3 bucket and a key prefix."""

    scheme: str  # "file" or "s3"
    bucket: str  # "" for local
    path: str  # local: absolute folder; s3: key prefix without slashes at either end

    @classmethod
    def parse(cls, uri: str | os.PathLike[str]) -> Location:
        text = str(uri).strip()
        if not text:
            raise StoreError("storage URI is empty")
        if text.startswith("s3://"):
            bucket, _, prefix = text[5:].partition("/")
            if len(bucket) < 3:
                raise StoreError(f"storage URI {text!r}: an S3 bucket name needs at least 3 characters")
            return cls("s3", bucket, norm_key(prefix))
        if text.startswith("file://"):
            text = text[7:]
        elif "://" in text:
            raise StoreError(f"storage URI {text!r}: only local paths, file:// and s3:// are supported")
        return cls("file", "", str(Path(text).expanduser().absolute()))

    @property
    def uri(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"
        return self.path

    def child(self, rel: str) -> Location:
        rel = norm_key(rel)
        if not rel:
            return self
        if self.scheme == "s3":
            return Location("s3", self.bucket, join(self.path, rel))
        return Location("file", "", str(Path(self.path, rel)))

    def url(self, rel: str) -> str:
        return self.child(rel).uri
