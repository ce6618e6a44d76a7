"""Feast's own interpreter for the tests that run Feast: bench/.feast-venv, created by bench/feast-venv.sh when
missing (CI on a fresh clone; the pip cache makes it quick afterwards)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def feast_python() -> Path:
    """The Feast venv's python, installed or brought up to date with bench/feast-requirements.txt first."""
    subprocess.run(["bash", str(ROOT / "bench" / "feast-venv.sh")], check=True, timeout=1800)
    return ROOT / "bench" / ".feast-venv" / "bin" / "python"


def run_feast(script: str, *args: str, cwd: Path) -> Any:
    """Run ``script`` with Feast's python in ``cwd``; the JSON it prints last. The script is written to a file
    first: Feast reads the source of on-demand functions, which ``python -c`` has none of."""
    path = cwd / "feast_side.py"
    path.write_text(script)
    done = subprocess.run([str(feast_python()), str(path), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the Feast side failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
