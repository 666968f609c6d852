"""The checkpoint store: a local folder or an S3 prefix, with manifests that make stages committed."""

from .keys import Location, norm_key
from .local import StoreNotFound
from .manifest import MANIFEST_NAME, FileEntry, Manifest, sha256_file
from .store import CheckpointStore

__all__ = ["CheckpointStore", "FileEntry", "Location", "MANIFEST_NAME", "Manifest", "StoreNotFound", "norm_key",
           "sha256_file"]
