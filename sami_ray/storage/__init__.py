"""The checkpoint store (a local folder or an S3 prefix, with manifests that make stages committed) and the run
store, the one place that knows a run's layout in it."""

from .keys import Location, norm_key
from .local import StoreNotFound
from .manifest import MANIFEST_NAME, FileEntry, Manifest, sha256_file
from .run import RunStore, list_runs
from .store import CheckpointStore

__all__ = ["CheckpointStore", "FileEntry", "Location", "MANIFEST_NAME", "Manifest", "RunStore", "StoreNotFound",
           "list_runs", "norm_key", "sha256_file"]
