"""Remote model sources, fetched onto this node: the Hugging Face hub (`org/name[@revision]`) and S3 folders.

`sami_ray.models.resolve_model_path` dispatches here; this module only brings files into a local folder.
Every error is a UserError shaped `model <path>: <why>`. Fetches into the node's cache are done once per node:
a file lock serialises processes (e.g. two sampler replicas) and a marker file, written last, tells a whole copy
from a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .atomic import atomic_folder
from .errors import StoreError, UserError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ fetch once per node


def fetch_once(folder: Path, is_done: Callable[[], bool], build: Callable[[], None]) -> Path:
    """Run `build` (which must leave `folder` whole and `is_done()` true) unless `is_done()` already holds.

    A file lock beside the folder makes concurrent callers on this node wait for the one that builds."""
    from filelock import FileLock, Timeout

    if is_done():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.parent / f".{folder.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process on this node to fetch %s", folder)
        lock.acquire()
    try:
        if not is_done():  # the process that held the lock may have built it meanwhile
            build()
    finally:
        lock.release()
    return folder


# ------------------------------------------------------------------ Hugging Face hub

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
# Mistral repos ship their weights twice (consolidated.safetensors for mistral-inference); Llama puts an original
# checkpoint under original/. Neither is read by transformers or vLLM.
HUB_IGNORE = ["consolidated*", "original/*"]


def parse_hub_id(path: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) for `org/name` or `org/name@revision`; None for anything else."""
    repo, at, revision = path.partition("@")
    if not _HUB_ID.fullmatch(repo) or any(p in (".", "..") for p in repo.split("/")) or (at and not revision):
        return None
    return repo, revision or None


def hub_snapshot(path: str, gguf_file: str | None = None) -> Path:
    """The hub cache's snapshot folder of `path` (`org/name[@revision]`), downloaded first when needed.

    Only config, tokenizer and safetensors files are fetched (plus `gguf_file` when given). The cache is
    huggingface_hub's own (HF_HOME / HF_HUB_CACHE); with HF_HUB_OFFLINE=1 only what it already holds is used."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hf

    parsed = parse_hub_id(path)
    if parsed is None:
        raise UserError(f"model {path}: not a hub id (org/name or org/name@revision)")
    repo_id, revision = parsed
    remedy = (f"download it into the hub cache on every node first (`hf download {repo_id}"
              f"{f' --revision {revision}' if revision else ''}` with the job's HF_HOME), or copy the model "
              "folder to S3 and give its s3:// URI")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS
                                        + ([gguf_file] if gguf_file else []), ignore_patterns=HUB_IGNORE))
    except hf.IncompleteSnapshotError as e:
        raise UserError(f"model {path}: its copy in the hub cache ({constants.HF_HUB_CACHE}) is incomplete and "
                        f"the hub cannot be reached; {remedy}") from e
    except hf.LocalEntryNotFoundError as e:
        if constants.HF_HUB_OFFLINE:
            why = f"not in the hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading it"
        else:
            cause = e.__cause__ or e
            why = (f"not in the hub cache ({constants.HF_HUB_CACHE}) and the hub could not be reached "
                   f"({type(cause).__name__})")
        raise UserError(f"model {path}: {why}; {remedy}") from e
    except hf.RevisionNotFoundError as e:
        raise UserError(f"model {path}: the hub has no revision {revision!r} of {repo_id}") from e
    except hf.GatedRepoError as e:
        raise UserError(f"model {path}: a gated repository; accept its terms on the hub and set HF_TOKEN for "
                        "the job (or copy the model to S3 and give its s3:// URI)") from e
    except hf.RepositoryNotFoundError as e:
        raise UserError(f"model {path}: no such repository on the hub, or it is private (set HF_TOKEN for "
                        "the job)") from e
    except ValueError as e:  # HFValidationError: a name the hub would never accept
        raise UserError(f"model {path}: not a valid hub id ({e})") from e
    except OSError as e:  # HfHubHTTPError (hub down, throttled) and disk errors
        raise UserError(f"model {path}: download from the hub failed: {e}") from e
    if not (folder / "config.json").exists():
        raise UserError(f"model {path}: the hub snapshot {folder} has no config.json")
    if not gguf_file and not any(p.suffix == ".safetensors" for p in folder.iterdir()):
        raise UserError(f"model {path}: the hub repository has no .safetensors weights; only safetensors "
                        "checkpoints are loaded")
    return folder


# ------------------------------------------------------------------ S3

MARKER = ".sami-complete.json"  # written last into a fetched folder: the copy is whole and of this content
_STORE_SETTINGS = ("endpoint_url", "region", "access_key_id", "secret_access_key", "multipart_threshold_mb",
                   "multipart_chunk_mb", "max_concurrency", "retry_total_seconds")


def store_settings(storage: Any) -> dict[str, Any]:
    """`CheckpointStore.open` keyword arguments from a StorageConfig-like object or a mapping (None: defaults,
    i.e. the standard AWS chain and AWS_ENDPOINT_URL_S3)."""
    if storage is None:
        return {}
    get = storage.get if isinstance(storage, Mapping) else (lambda k: getattr(storage, k, None))
    return {k: v for k in _STORE_SETTINGS if (v := get(k)) is not None}


def s3_cache_folder(uri: str, root: Path) -> Path:
    """`root/<last parts of the prefix>-<hash of the URI>`: readable, and distinct per URI."""
    from .storage import Location

    loc = Location.parse(uri)
    readable = re.sub(r"[^\w.-]+", "_", "-".join(loc.path.split("/")[-3:]))[-60:].strip("._-") or loc.bucket
    return root / f"{readable}-{hashlib.sha256(loc.uri.encode()).hexdigest()[:12]}"


def _marker_stamp(folder: Path) -> str | None:
    try:
        return json.loads((folder / MARKER).read_text())["stamp"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fetch_s3_model(path: str, cache_root: Path, storage: Any = None) -> Path:
    """A node-local copy of the model folder `s3://bucket/prefix`, fetched once and verified.

    A committed folder (with MANIFEST.json) is fetched through CheckpointStore.fetch_stage, which checks every
    file's size and sha256. A folder without a manifest is copied whole and checked against the listing's
    sizes. The copy is reused while the manifest (or the listing) is unchanged; otherwise it is fetched again."""
    from .storage import CheckpointStore, Location

    try:
        loc = Location.parse(path)
        if not loc.path:
            raise UserError(f"model {path}: name the model's folder inside the bucket (s3://bucket/prefix)")
        parent, _, leaf = loc.path.rpartition("/")
        store = CheckpointStore.open(f"s3://{loc.bucket}/{parent}", **store_settings(storage))
        dest = s3_cache_folder(path, cache_root)
        manifest = store.read_manifest(leaf)
        if manifest is not None:
            stamp = "manifest:" + hashlib.sha256(manifest.to_json()).hexdigest()

            def fetch() -> None:
                store.fetch_stage(leaf, dest)
        else:
            listing = _listing(store, leaf)
            if not listing:
                raise UserError(f"model {path}: no objects under this prefix")
            stamp = "listing:" + hashlib.sha256(json.dumps(sorted(listing.items())).encode()).hexdigest()

            def fetch() -> None:
                _download_listing(store, leaf, listing, dest)

        def build() -> None:
            (dest / MARKER).unlink(missing_ok=True)  # an older copy is no longer whole for this content
            log.info("fetching model %s into %s (once on this node)", path, dest)
            fetch()
            (dest / MARKER).write_text(json.dumps({"source": loc.uri, "stamp": stamp}))

        return fetch_once(dest, lambda: _marker_stamp(dest) == stamp, build)
    except StoreError as e:
        if str(e).startswith(f"model {path}:"):
            raise
        raise type(e)(f"model {path}: {e}") from e


def _listing(store: Any, leaf: str) -> dict[str, int]:
    """Every object under `leaf` (relative path -> size), through the store's pyarrow filesystem."""
    import pyarrow.fs as pafs

    from .storage import norm_key

    fs, base = store.pyarrow_filesystem()
    root = f"{base}/{leaf}"
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as e:
        raise StoreError(f"{store.url(leaf)}: listing failed: {e}") from e
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            rel = info.path[len(root) + 1:]
            if norm_key(rel) != rel:
                raise StoreError(f"{store.url(join_key(leaf, rel))}: an object name that is not a plain path")
            out[rel] = int(info.size)
    return out


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p)


def _download_listing(store: Any, leaf: str, listing: dict[str, int], dest: Path) -> None:
    """Copy the listed objects into `dest` (whole or not at all), each checked against its listed size."""
    fs, base = store.pyarrow_filesystem()

    with atomic_folder(dest) as tmp:
        def one(item: tuple[str, int]) -> None:
            rel, size = item
            url = store.url(join_key(leaf, rel))
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with fs.open_input_stream(f"{base}/{leaf}/{rel}") as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 8 * 1024 * 1024)
            except OSError as e:
                raise StoreError(f"{url}: download failed: {e}") from e
            got = target.stat().st_size
            if got != size:
                raise StoreError(f"{url}: {got} bytes arrived but the listing says {size}; the object changed "
                                 "while it was fetched")

        with ThreadPoolExecutor(max_workers=min(8, len(listing)), thread_name_prefix="model-fetch") as pool:
            list(pool.map(one, sorted(listing.items())))
