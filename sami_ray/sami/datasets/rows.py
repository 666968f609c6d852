"""Rows of a public dataset file, each with the place it came from, so a bad row can be named exactly.

Files are read as the hubs ship them: JSON lines (also gzipped, as HH-RLHF's `train.jsonl.gz`), a JSON list (or,
for a `.json` file that is really JSON lines, as sami-extension's `training_data.json`), Parquet (the hub's
`data/train-*.parquet`), or a folder written by `datasets.Dataset.save_to_disk`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError


@dataclass(frozen=True)
class Row:
    where: str  # "FILE, line 3" / "FILE, row 3": what an error names
    index: int  # 1-based position, the id of a row that has none
    data: dict


def layout_error(row: Row, fmt: str, needs: str) -> DataError:
    """The one error for a row in an unexpected layout: where it is, what it has, what the format needs."""
    have = sorted(k for k, v in row.data.items() if v is not None)
    empty = sorted(k for k, v in row.data.items() if v is None)  # a Parquet row has every column, some null
    nulls = f" (and null {empty})" if empty else ""
    return DataError(f"{row.where}: not a {fmt} row: it has the fields {have}{nulls}, but {fmt} needs {needs}")


def json_lines(path: Path, lines: Iterable[bytes]) -> Iterator[Row]:
    """The JSON objects of `lines`, blank lines skipped; a line that is not one is a DataError naming it."""
    for lineno, raw in enumerate(lines, 1):
        where = f"{path}, line {lineno}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"{where}: not UTF-8 text") from None
        if not line:
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
        yield Row(where, lineno, data)


def _json_file(path: Path) -> Iterator[Row]:
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError:
        yield from json_lines(path, iter(raw.splitlines()))  # JSON lines under a .json name
        return
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise DataError(f"{path}, item {i}: expected a JSON object, got {type(item).__name__}")
        yield Row(f"{path}, item {i}", i, item)


def _parquet(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    i = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):  # batches: a large file never whole
            for data in batch.to_pylist():
                i += 1
                yield Row(f"{path}, row {i}", i, data)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


def _saved_dataset(path: Path, split: str | None) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: a folder, but not one written by datasets' save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("train" if "train" in ds else next(iter(ds)))
        if name not in ds:
            raise DataError(f"{path}: no split {name!r} (it has {sorted(ds)}); set task.queries.split")
        ds = ds[name]
    for i, data in enumerate(ds, 1):
        yield Row(f"{path}, row {i}", i, dict(data))


def read_rows(path: str | Path, split: str | None = None) -> Iterator[Row]:
    """Every row of a dataset file or saved-dataset folder, in file order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _saved_dataset(path, split)
    name = path.name.lower()
    if name.endswith(".parquet"):
        return _parquet(path)
    if name.endswith(".gz"):
        return _gzip_lines(path)
    if name.endswith(".json"):
        return _json_file(path)
    return _plain_lines(path)


def _plain_lines(path: Path) -> Iterator[Row]:
    with path.open("rb") as f:
        yield from json_lines(path, f)


def _gzip_lines(path: Path) -> Iterator[Row]:
    try:
        with gzip.open(path, "rb") as f:
            yield from json_lines(path, f)
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
