"""Which modules a fresh interpreter loads along with some of ours: the light modules stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loaded_with(modules: str, watched: tuple[str, ...]) -> list[str]:
    """The names in `watched` that `import {modules}` loads in a fresh interpreter (run from the project's root,
    with benchmarks/ on the path)."""
    code = (f"import sys; sys.path.insert(0, 'benchmarks'); import {modules}; "
            f"print(','.join(m for m in {watched!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]
