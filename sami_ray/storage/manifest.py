"""The manifest that makes a stage committed: every file with its size and sha256, written last."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST_NAME = "MANIFEST.json"
FORMAT_VERSION = 1


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the stage, with forward slashes
    size: int
    sha256: str


@dataclass
class Manifest:
    stage: str
    files: list[FileEntry]
    meta: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    version: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def of_folder(cls, stage: str, folder: Path, meta: dict[str, Any] | None = None) -> Manifest:
        files = [FileEntry(p.relative_to(folder).as_posix(), p.stat().st_size, sha256_file(p))
                 for p in sorted(folder.rglob("*")) if p.is_file()]
        return cls(stage=stage, files=files, meta=dict(meta or {}),
                   created=datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Raises ValueError (or KeyError/TypeError) on anything that is not a manifest of a known version."""
        obj = json.loads(data.decode("utf-8"))
        if not isinstance(obj, dict) or obj.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown manifest format (version {obj.get('version') if isinstance(obj, dict) else None})")
        files = [FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in obj["files"]]
        return cls(stage=str(obj["stage"]), files=files, meta=dict(obj.get("meta") or {}),
                   created=str(obj.get("created", "")), version=FORMAT_VERSION)
