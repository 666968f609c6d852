"""Training checkpoints: the DeepSpeed engine state (every rank's shard) plus the data position.

Each rank writes its own files into its own temporary folder; Ray Train uploads all ranks' files into one
checkpoint folder of the run's storage, and hands the merged folder back to every rank on restart.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

TAG = "ds"
POSITION_FILE = "data_position.json"
EXPORT_MARKER = "sami_export.json"  # the final checkpoint holds the exported model, not engine state


def save(engine: Any, position: dict[str, Any], rank: int) -> str:
    folder = Path(tempfile.mkdtemp(prefix="sami-ckpt-"))
    (folder / TAG).mkdir()  # DeepSpeed creates the tag folder on rank 0 only; other ranks write there too
    engine.save_checkpoint(str(folder), tag=TAG, save_latest=False)
    if rank == 0:
        (folder / POSITION_FILE).write_text(json.dumps(position))
    return str(folder)


def read_position(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / POSITION_FILE
    return json.loads(path.read_text()) if path.exists() else None


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / EXPORT_MARKER).exists()


def restore(engine: Any, folder: str | Path) -> dict[str, Any]:
    """Load engine, optimizer and LR-schedule state; returns the data position saved with them."""
    position = read_position(folder)
    if position is None:
        raise RuntimeError(f"checkpoint {folder} has no {POSITION_FILE}")
    load_path, _ = engine.load_checkpoint(str(folder), tag=TAG, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")
    return position
