"""CheckpointStore: the run's durable state, in a local folder or under an S3 prefix.

A stage (a folder of files) is committed by uploading its files and then writing `MANIFEST.json` (every file with
its size and sha256) last. Readers trust nothing without a manifest and verify every byte they download.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ..atomic import atomic_folder
from ..errors import CorruptStageError, StoreError
from .keys import Location, join, natural_key, norm_key
from .local import LocalBackend, StoreNotFound
from .manifest import MANIFEST_NAME, Manifest, sha256_file
from .s3 import S3Settings, open_s3

log = logging.getLogger("sami_ray.storage")

Progress = Callable[[str, int], None]  # (relative file path, bytes just moved)


def _run_parallel(n_workers: int, jobs: list[Callable[[], None]]) -> None:
    """Run jobs; on the first failure cancel what has not started and re-raise it."""
    if n_workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="store") as pool:
        futures = [pool.submit(job) for job in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]


def _safe_rel(path: str) -> bool:
    try:
        return bool(path) and norm_key(path) == path
    except StoreError:
        return False


class CheckpointStore:
    """A store rooted at a URI. Keys are relative paths with forward slashes."""

    def __init__(self, backend: Any, keep_last: int = 2):
        self._b = backend
        self._keep_last = keep_last

    # ------------------------------------------------------------ construction

    @classmethod
    def open(cls, uri: str | os.PathLike[str], endpoint_url: str | None = None, region: str | None = None,
             access_key_id: str | None = None, secret_access_key: str | SecretStr | None = None,
             multipart_threshold_mb: int = 64, multipart_chunk_mb: int = 64, max_concurrency: int = 8,
             retry_total_seconds: float = 60.0, keep_last_checkpoints: int = 2, connect_timeout: float = 10.0,
             read_timeout: float = 60.0) -> CheckpointStore:
        """Open a local folder (created on first write) or `s3://bucket/prefix`.

        Credentials left as None come from the standard AWS chain (environment, profile, instance role).
        """
        loc = Location.parse(uri)
        if loc.scheme == "file":
            return cls(LocalBackend(loc), keep_last=keep_last_checkpoints)
        if isinstance(secret_access_key, str):
            secret_access_key = SecretStr(secret_access_key)
        # boto3 reads these variables itself; pyarrow (Ray Train) must be told the same endpoint.
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        settings = S3Settings(endpoint_url=endpoint_url or None, region=region or None,
                              access_key_id=access_key_id or None, secret_access_key=secret_access_key,
                              multipart_threshold_mb=multipart_threshold_mb, multipart_chunk_mb=multipart_chunk_mb,
                              max_concurrency=max_concurrency, retry_total_seconds=retry_total_seconds,
                              connect_timeout=connect_timeout, read_timeout=read_timeout)
        return cls(open_s3(loc, settings), keep_last=keep_last_checkpoints)

    @classmethod
    def from_config(cls, cfg: Any) -> CheckpointStore:
        """From a `StorageConfig` (or anything with its attribute names)."""
        defaults = {"endpoint_url": None, "region": None, "access_key_id": None, "secret_access_key": None,
                    "multipart_threshold_mb": 64, "multipart_chunk_mb": 64, "max_concurrency": 8,
                    "retry_total_seconds": 60.0, "keep_last_checkpoints": 2}
        return cls.open(cfg.uri, **{k: getattr(cfg, k, v) for k, v in defaults.items()})

    @property
    def uri(self) -> str:
        return self._b.loc.uri

    @property
    def is_local(self) -> bool:
        return isinstance(self._b, LocalBackend)

    def __repr__(self) -> str:
        return f"CheckpointStore({self.uri!r})"

    def child(self, rel: str) -> CheckpointStore:
        """A store rooted at a sub-prefix (e.g. one run), sharing this one's connection."""
        return CheckpointStore(self._b.child(norm_key(rel)), keep_last=self._keep_last)

    def url(self, rel: str) -> str:
        return self._b.url(norm_key(rel))

    # ------------------------------------------------------------ single objects

    def put_bytes(self, rel: str, data: bytes) -> None:
        self._b.put_bytes(self._key(rel), bytes(data))

    def get_bytes(self, rel: str) -> bytes:
        """Raises StoreNotFound (a StoreError and a FileNotFoundError) when the key does not exist."""
        return self._b.get_bytes(self._key(rel))

    def put_json(self, rel: str, obj: Any) -> None:
        self.put_bytes(rel, json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"))

    def get_json(self, rel: str) -> Any:
        data = self.get_bytes(rel)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{self.url(rel)}: not valid JSON ({e})") from e

    def exists(self, rel: str) -> bool:
        return self._b.exists(self._key(rel))

    def list(self, rel_prefix: str = "") -> list[str]:
        """All keys under the folder `rel_prefix`, relative to this store, sorted."""
        return self._b.list(norm_key(rel_prefix))

    def delete_prefix(self, rel_prefix: str) -> None:
        """Delete the folder `rel_prefix`; manifests go first so nothing is ever committed but incomplete."""
        prefix = norm_key(rel_prefix)
        if not prefix:
            raise StoreError(f"{self.uri}: refusing to delete the whole store; name a folder inside it")
        manifests = [k for k in self._b.list(prefix) if k.rsplit("/", 1)[-1] == MANIFEST_NAME]
        self._b.delete(manifests)
        self._b.delete_prefix(prefix)

    def _key(self, rel: str) -> str:
        key = norm_key(rel)
        if not key:
            raise StoreError(f"{self.uri}: an object key is needed, not the store's root")
        return key

    # ------------------------------------------------------------ stages

    def commit_stage(self, rel_stage: str, local_dir: str | os.PathLike[str], meta: dict | None = None,
                     overwrite: bool = False, progress: Progress | None = None) -> Manifest:
        """Upload every file of local_dir under rel_stage/, then write rel_stage/MANIFEST.json last.

        If anything fails no manifest is written. A committed stage is only replaced with overwrite=True.
        """
        stage = self._key(rel_stage)
        folder = Path(local_dir)
        if not folder.is_dir():
            raise StoreError(f"cannot commit {self.url(stage)}: {folder} is not a folder")
        mkey = join(stage, MANIFEST_NAME)
        if self._b.exists(mkey):
            if not overwrite:
                raise StoreError(f"{self.url(stage)} is already committed; refusing to replace it "
                                 "(pass overwrite=True to do so)")
            self._b.delete([mkey])  # uncommitted from here on: a crash leaves no mix of old and new files
        t0 = time.perf_counter()
        manifest = Manifest.of_folder(stage, folder, meta)
        if any(f.path == MANIFEST_NAME for f in manifest.files):
            raise StoreError(f"cannot commit {folder} to {self.url(stage)}: it contains a {MANIFEST_NAME} of its own")
        # Leftovers of an earlier failed attempt must not outlive this commit.
        self._b.delete_prefix(stage)

        def upload(rel: str) -> Callable[[], None]:
            cb = (lambda n: progress(rel, n)) if progress else None
            return lambda: self._b.upload_file(join(stage, rel), folder / rel, cb)

        _run_parallel(self._b.file_concurrency, [upload(f.path) for f in manifest.files])
        stored = self._b.list_sizes(stage)
        for f in manifest.files:
            got = stored.get(join(stage, f.path))
            if got != f.size:
                raise StoreError(f"{self.url(join(stage, f.path))}: stored size {got} differs from the "
                                 f"local {f.size} bytes; the stage was not committed")
        self._b.put_bytes(mkey, manifest.to_json())
        log.info("committed %s: %d files, %.1f MB in %.1f s", self.url(stage), len(manifest.files),
                 manifest.total_bytes / 1e6, time.perf_counter() - t0)
        return manifest

    def read_manifest(self, rel_stage: str) -> Manifest | None:
        """The stage's manifest, or None when the stage is not committed."""
        mkey = join(self._key(rel_stage), MANIFEST_NAME)
        try:
            data = self._b.get_bytes(mkey)
        except StoreNotFound:
            return None
        try:
            return Manifest.from_json(data)
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{self.url(mkey)}: unreadable manifest ({e})") from e

    def is_committed(self, rel_stage: str) -> bool:
        return self.read_manifest(rel_stage) is not None

    def fetch_stage(self, rel_stage: str, local_dir: str | os.PathLike[str],
                    progress: Progress | None = None) -> Path:
        """Download a committed stage into local_dir (replacing it), verifying every file's size and sha256.

        The files arrive in a temporary folder beside local_dir, renamed into place only when all are verified.
        """
        stage = self._key(rel_stage)
        manifest = self.read_manifest(stage)
        if manifest is None:
            raise StoreError(f"{self.url(stage)}: not committed (no {MANIFEST_NAME})")
        dest = Path(local_dir).absolute()
        t0 = time.perf_counter()
        with atomic_folder(dest) as tmp:  # verified files only; on a failure it is removed and dest left as it was
            def download(path: str, size: int, sha: str) -> Callable[[], None]:
                def run() -> None:
                    if not _safe_rel(path):  # a manifest must not write outside the folder
                        raise StoreError(f"{self.url(join(stage, MANIFEST_NAME))}: bad file path {path!r}")
                    target = tmp / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    url = self.url(join(stage, path))
                    cb = (lambda n: progress(path, n)) if progress else None
                    self._b.download_file(join(stage, path), target, cb)
                    got = target.stat().st_size
                    if got != size:
                        raise CorruptStageError(f"{url}: size {got} differs from the manifest's {size} bytes; "
                                         "the stored object is corrupt or was changed after commit")
                    digest = sha256_file(target)
                    if digest != sha:
                        raise CorruptStageError(f"{url}: sha256 {digest[:16]}… differs from the manifest's {sha[:16]}…; "
                                         "the stored object is corrupt or was changed after commit")
                return run

            _run_parallel(self._b.file_concurrency,
                          [download(f.path, f.size, f.sha256) for f in manifest.files])
        log.info("fetched %s: %d files, %.1f MB in %.1f s", self.url(stage), len(manifest.files),
                 manifest.total_bytes / 1e6, time.perf_counter() - t0)
        return dest

    # ------------------------------------------------------------ runs

    def list_dirs(self, rel_prefix: str = "") -> list[str]:
        """The names of the folders directly under `rel_prefix`."""
        return self._b.list_dirs(norm_key(rel_prefix))

    def committed_stages(self, rel_prefix: str = ".") -> list[str]:
        """Stages (folders with a manifest) under `rel_prefix`, relative to it, in natural order."""
        base = norm_key(rel_prefix)
        suffix = "/" + MANIFEST_NAME
        strip = len(base) + 1 if base else 0
        stages = [k[strip:-len(suffix)] for k in self._b.list(base) if k.endswith(suffix)]
        return sorted(stages, key=natural_key)

    def prune(self, run_rel: str, pattern: str, keep_last: int | None = None) -> list[str]:
        """Keep the last K folders under `run_rel` matching `pattern` (path components, shell-style, natural
        order; K = 0 keeps none); returns the deleted folders relative to `run_rel`. K defaults to
        storage.keep_last_checkpoints."""
        keep = self._keep_last if keep_last is None else keep_last
        if keep < 0:
            raise StoreError(f"{self.uri}: keep_last must be 0 or more, not {keep}")
        run = norm_key(run_rel)
        pat = norm_key(pattern).split("/")
        strip = len(run) + 1 if run else 0
        folders = set()
        for key in self._b.list(run):
            parts = key[strip:].split("/")
            if len(parts) > len(pat) and all(fnmatchcase(p, q) for p, q in zip(parts, pat, strict=False)):
                folders.add("/".join(parts[:len(pat)]))
        ordered = sorted(folders, key=natural_key)
        doomed = ordered[:-keep] if keep else ordered
        for folder in doomed:
            self.delete_prefix(join(run, folder))
        if doomed:
            log.info("pruned %d old checkpoint folders under %s", len(doomed), self.url(run))
        return doomed

    def abort_partial_uploads(self) -> int:
        """Clean up uploads that were started and never finished (S3 multipart parts, local temp files)."""
        return self._b.abort_partial_uploads()

    # ------------------------------------------------------------ Ray Train

    def pyarrow_filesystem(self) -> tuple[Any, str]:
        """(filesystem, base path) for `RunConfig(storage_path=base..., storage_filesystem=fs)`.

        For S3 the base is "bucket/prefix" (no scheme: Ray refuses an s3:// path with an explicit filesystem),
        and the filesystem carries this store's endpoint, region and credentials.
        """
        return self._b.pyarrow_filesystem()
