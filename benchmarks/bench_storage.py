"""Checkpoint store throughput, side by side in one run: local folder vs S3 (moto server subprocess) with one
stream, multipart on one thread and multipart with concurrency. Commit = hash + upload + manifest; fetch =
download + verify. Prints times, MB/s and ratios against the single-stream S3 upload.

    python benchmarks/bench_storage.py --mb 200 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests.support

from sami_ray.storage import CheckpointStore  # noqa: E402
from tests.support.s3 import MotoProcess  # noqa: E402


def _make_folder(root: Path, mb: int) -> Path:
    # Shards like a model folder: a few big files and some small ones.
    sizes = {"model-00001.safetensors": mb * 6 // 10, "model-00002.safetensors": mb - mb * 6 // 10}
    for name, size in sizes.items():
        with open(root / name, "wb") as f:
            for _ in range(size):
                f.write(os.urandom(1 << 20))
    for i in range(8):
        (root / f"tokenizer-{i}.json").write_bytes(os.urandom(50_000))
    return root


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    server = MotoProcess().start()  # its own process, so the server does not share our GIL
    try:
        (work / "src").mkdir()
        src = _make_folder(work / "src", args.mb)
        size_mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6
        ep = server.endpoint
        bucket = ep.new_bucket("bench")
        variants = {
            "local folder": lambda: CheckpointStore.open(work / "local"),
            "s3 single PUT": lambda: CheckpointStore.open(f"s3://{bucket}/one", **ep.store_kwargs(
                multipart_threshold_mb=100_000, max_concurrency=1)),
            "s3 multipart x1": lambda: CheckpointStore.open(f"s3://{bucket}/mp1", **ep.store_kwargs(
                multipart_threshold_mb=16, multipart_chunk_mb=16, max_concurrency=1)),
            "s3 multipart x8": lambda: CheckpointStore.open(f"s3://{bucket}/mp8", **ep.store_kwargs(
                multipart_threshold_mb=16, multipart_chunk_mb=16, max_concurrency=8)),
        }
        rows = {}
        for name, make in variants.items():
            up, down = [], []
            for r in range(args.repeats):
                store = make()
                stage = f"r{r}/model"
                up.append(_time(lambda s=store, st=stage: s.commit_stage(st, src)))
                dest = work / "dl" / name.replace(" ", "-")
                down.append(_time(lambda s=store, st=stage, d=dest: s.fetch_stage(st, d)))
                shutil.rmtree(dest)
                store.delete_prefix(stage)
            rows[name] = (statistics.median(up), statistics.median(down))
        base_up, base_down = rows["s3 single PUT"]
        print(f"folder: {size_mb:.0f} MB, median of {args.repeats}, {os.cpu_count()} CPUs")
        print(f"{'variant':18} {'commit s':>9} {'MB/s':>7} {'vs 1 PUT':>9} {'fetch s':>9} {'MB/s':>7} {'vs 1 PUT':>9}")
        for name, (up, down) in rows.items():
            print(f"{name:18} {up:9.2f} {size_mb / up:7.0f} {base_up / up:8.2f}x {down:9.2f} {size_mb / down:7.0f} "
                  f"{base_down / down:8.2f}x")
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
