"""A store under an S3 prefix (AWS or any S3-compatible endpoint) through boto3.

Transient faults are retried here with a bounded total time; everything a user must fix (wrong bucket, missing or
rejected credentials) fails at once. Credentials live only inside the boto3 session and the pyarrow filesystem:
no message, repr or log line of this module contains them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import SecretStr

from ..errors import StoreError
from .keys import Location, join, norm_key
from .local import StoreNotFound
from .retry import with_retries

MiB = 1024 * 1024
THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                  "TooManyRequestsException", "RequestTimeout", "InternalError", "ServiceUnavailable",
                  "BandwidthLimitExceeded"}
DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                "AllAccessDisabled", "AccountProblem", "403", "Forbidden"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


@dataclass
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    multipart_threshold_mb: int = 64
    multipart_chunk_mb: int = 64
    max_concurrency: int = 8
    retry_total_seconds: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def socket_timeout(self) -> float:
        """The read timeout of one attempt: a connection that hangs (not one that fails) must leave time in
        `retry_total_seconds` for further attempts. It bounds waiting for bytes, not a whole large transfer."""
        return min(self.read_timeout, max(5.0, self.retry_total_seconds / 4))

    def __repr__(self) -> str:  # the dataclass default would print the key id
        return f"S3Settings(endpoint_url={self.endpoint_url!r}, region={self.region!r})"


def _chain(e: BaseException) -> Iterator[BaseException]:
    """The exception and what caused it: boto3 wraps part failures in S3UploadFailedError / RetriesExceededError."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack += [getattr(x, "last_exception", None), x.__cause__, x.__context__]


def _client_error(e: BaseException) -> tuple[str, int] | None:
    from botocore.exceptions import ClientError

    for x in _chain(e):
        if isinstance(x, ClientError):
            err = x.response.get("Error", {})
            status = x.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return str(err.get("Code", status)), int(status)
    return None


def is_transient(e: BaseException) -> bool:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, IncompleteReadError

    ce = _client_error(e)
    if ce is not None:
        code, status = ce
        return status >= 500 or status == 429 or code in THROTTLE_CODES
    return any(isinstance(x, BotoConnectionError | HTTPClientError | IncompleteReadError | ConnectionError
                          | TimeoutError) for x in _chain(e))


def describe(e: BaseException) -> str:
    ce = _client_error(e)
    if ce is not None:
        return f"{ce[0]} (HTTP {ce[1]})"
    root = list(_chain(e))[-1]
    return f"{type(root).__name__}: {root}"


class _Connection:
    """One boto3 client and its settings, shared by a store and all its children."""

    def __init__(self, settings: S3Settings):
        self.s = settings
        self._client: Any = None
        self._lock = threading.Lock()
        self.checked_buckets: set[str] = set()
        if settings.access_key_id and settings.secret_access_key is None:
            raise StoreError("storage.access_key_id is set but storage.secret_access_key is not")
        if settings.secret_access_key is not None and not settings.access_key_id:
            raise StoreError("storage.secret_access_key is set but storage.access_key_id is not")

    def _secret(self) -> str | None:
        return self.s.secret_access_key.get_secret_value() if self.s.secret_access_key is not None else None

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session(aws_access_key_id=self.s.access_key_id or None,
                                                aws_secret_access_key=self._secret(),
                                                region_name=self.s.region or None)
                cfg = Config(
                    # Our own loop retries with a bounded total time; botocore's would multiply it.
                    retries={"total_max_attempts": 1},
                    connect_timeout=self.s.connect_timeout, read_timeout=self.s.socket_timeout(),
                    max_pool_connections=max(10, self.s.max_concurrency + 2),
                    s3={"addressing_style": "path"} if self.s.endpoint_url else None,
                )
                self._client = session.client("s3", endpoint_url=self.s.endpoint_url or None, config=cfg)
            return self._client

    @property
    def transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.s.multipart_threshold_mb * MiB,
                              multipart_chunksize=self.s.multipart_chunk_mb * MiB,
                              max_concurrency=self.s.max_concurrency, use_threads=True)


class S3Backend:
    def __init__(self, loc: Location, conn: _Connection):
        self.loc = loc
        self.conn = conn
        self.bucket = loc.bucket
        self.file_concurrency = min(4, conn.s.max_concurrency)

    def __repr__(self) -> str:
        return f"S3Backend({self.loc.uri!r}, endpoint_url={self.conn.s.endpoint_url!r})"

    def child(self, rel: str) -> S3Backend:
        return S3Backend(self.loc.child(rel), self.conn)

    def url(self, key: str) -> str:
        return self.loc.url(key)

    def _full(self, key: str) -> str:
        return join(self.loc.path, key)

    def _folder(self, prefix: str) -> str:
        """The S3 prefix of a folder: `a/b/` (or "" for the bucket root)."""
        full = self._full(prefix)
        return full + "/" if full else ""

    # ------------------------------------------------------------ errors

    def _user_error(self, e: BaseException, url: str) -> StoreError | None:
        from botocore.exceptions import NoCredentialsError, ParamValidationError, PartialCredentialsError

        where = f" at {self.conn.s.endpoint_url}" if self.conn.s.endpoint_url else ""
        for x in _chain(e):
            if isinstance(x, NoCredentialsError | PartialCredentialsError):
                return StoreError(f"{url}: no S3 credentials found; set storage.access_key_id and "
                                  "storage.secret_access_key, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                                  "AWS_PROFILE or an instance role")
            if isinstance(x, ParamValidationError):
                return StoreError(f"{url}: invalid S3 request: {x}")
        ce = _client_error(e)
        if ce is None:
            return None
        code, status = ce
        if code == "NoSuchBucket":
            return StoreError(f"{url}: bucket {self.bucket!r} does not exist{where}")
        if code in DENIED_CODES or status == 403:
            return StoreError(f"{url}: access denied ({code}){where}; check the credentials and their "
                              f"permissions on bucket {self.bucket!r}")
        if code in MISSING_CODES or status == 404:
            return StoreNotFound(f"{url}: no such object")
        return StoreError(f"{url}: S3 request failed: {describe(e)}")

    def _call(self, key: str, what: str, fn: Callable[[], Any]) -> Any:
        url = self.url(key)
        try:
            endpoint = self.conn.s.endpoint_url or "AWS"
            return with_retries(fn, url, what, self.conn.s.retry_total_seconds, is_transient,
                                lambda e: f"{describe(e)} (endpoint {endpoint})")
        except StoreError:
            raise
        except Exception as e:
            err = self._user_error(e, url)
            if err is None:
                raise
            raise err from e

    def _check_bucket(self) -> None:
        """HEAD answers 404 for a missing key and for a missing bucket alike; ask about the bucket once."""
        if self.bucket in self.conn.checked_buckets:
            return
        from botocore.exceptions import ClientError

        def head() -> None:
            try:
                self.conn.client.head_bucket(Bucket=self.bucket)
            except ClientError as e:
                if _client_error(e) and _client_error(e)[1] == 404:  # type: ignore[index]
                    raise StoreError(f"{self.loc.uri}: bucket {self.bucket!r} does not exist"
                                     + (f" at {self.conn.s.endpoint_url}" if self.conn.s.endpoint_url else "")) from e
                raise

        self._call("", "bucket check", head)
        self.conn.checked_buckets.add(self.bucket)

    # ------------------------------------------------------------ objects

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(key, "write", lambda: self.conn.client.put_object(Bucket=self.bucket, Key=self._full(key),
                                                                     Body=data))

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            return self.conn.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

        return self._call(key, "read", get)

    def exists(self, key: str) -> bool:
        try:
            self._call(key, "lookup", lambda: self.conn.client.head_object(Bucket=self.bucket, Key=self._full(key)))
            return True
        except StoreNotFound:
            self._check_bucket()
            return False

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        """Every object under the folder `prefix`, keyed relative to this store, with its size."""
        folder = self._folder(prefix)
        strip = len(self._folder(""))

        def walk() -> dict[str, int]:
            out: dict[str, int] = {}
            pages = self.conn.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
            for page in pages:
                for obj in page.get("Contents", []):
                    out[obj["Key"][strip:]] = int(obj["Size"])
            return out

        return self._call(prefix, "listing", walk)

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self.list_sizes(prefix))

    def list_dirs(self, prefix: str = "") -> list[str]:
        folder = self._folder(prefix)

        def walk() -> list[str]:
            out = []
            pages = self.conn.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder, Delimiter="/")
            for page in pages:
                out += [p["Prefix"][len(folder):].rstrip("/") for p in page.get("CommonPrefixes", [])]
            return sorted(out)

        return self._call(prefix, "listing", walk)

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._full(k)} for k in keys[i:i + 1000]]
            resp = self._call(keys[i], "delete", lambda b=batch: self.conn.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}))
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(f"{self.loc.uri}: could not delete {len(errors)} objects, e.g. "
                                 f"{first.get('Key')}: {first.get('Code')}")

    def delete_prefix(self, prefix: str) -> None:
        self.delete(self.list(prefix))

    def upload_file(self, key: str, src: Path, progress: Callable[[int], None] | None = None) -> None:
        self._call(key, "upload", lambda: self.conn.client.upload_file(
            str(src), self.bucket, self._full(key), Config=self.conn.transfer_config, Callback=progress))

    def download_file(self, key: str, dest: Path, progress: Callable[[int], None] | None = None) -> None:
        self._call(key, "download", lambda: self.conn.client.download_file(
            self.bucket, self._full(key), str(dest), Config=self.conn.transfer_config, Callback=progress))

    def abort_partial_uploads(self) -> int:
        """Abort multipart uploads under this prefix that were started and never completed."""
        folder = self._folder("")

        def abort_all() -> int:
            n = 0
            client = self.conn.client
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=folder):
                for up in page.get("Uploads", []):
                    client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    n += 1
            return n

        return self._call("", "abort of partial uploads", abort_all)

    # ------------------------------------------------------------ Ray Train

    def _region(self) -> str:
        s = self.conn.s
        if s.region:
            return s.region
        region = self.conn.client.meta.region_name
        if s.endpoint_url:
            return region or "us-east-1"
        # On AWS pyarrow does not look the bucket's region up itself; the bucket's HEAD answer names it.
        resp = self._call("", "bucket check", lambda: self.conn.client.head_bucket(Bucket=self.bucket))
        headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return headers.get("x-amz-bucket-region") or region or "us-east-1"

    def pyarrow_filesystem(self) -> tuple[Any, str]:
        import pyarrow.fs

        s = self.conn.s
        kw: dict[str, Any] = {"region": self._region(), "connect_timeout": s.connect_timeout,
                              "request_timeout": s.read_timeout,
                              "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=10)}
        if s.endpoint_url:
            u = urlparse(s.endpoint_url)
            kw["endpoint_override"] = (u.netloc + u.path).rstrip("/")
            kw["scheme"] = u.scheme or "https"
            kw["force_virtual_addressing"] = False
        if s.access_key_id and s.secret_access_key is not None:
            kw["access_key"] = s.access_key_id
            kw["secret_key"] = s.secret_access_key.get_secret_value()
        base = f"{self.bucket}/{self.loc.path}" if self.loc.path else self.bucket
        return pyarrow.fs.S3FileSystem(**kw), base


def open_s3(loc: Location, settings: S3Settings) -> S3Backend:
    norm_key(loc.path)
    return S3Backend(loc, _Connection(settings))
