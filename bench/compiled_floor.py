"""The compiled floor (``bench/go_floor/``, Go's net/http and go-redis): built here with ``go build``.

    path = build()          # bench/.work/bin/go-floor, or None when no Go toolchain is installed
    FLOOR_REDIS_URL=... FLOOR_PREFIXES=... bench/.work/bin/go-floor --host 127.0.0.1 --port 6571

The module versions are pinned by ``go.sum`` (``-mod=readonly``: a build never changes them) and come from the
Go module proxy; Go's own build cache makes a rebuild of unchanged sources take well under a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "bench" / "go_floor"
BINARY = ROOT / "bench" / ".work" / "bin" / "go-floor"
NO_GO = "compiled floor not measured: no Go toolchain (`go` is not on PATH)"


class BuildFailed(RuntimeError):
    """``go build`` of the compiled floor failed; the message carries its output."""


def build(binary: Path = BINARY) -> Path | None:
    """Build the compiled floor into ``binary``; None when ``go`` is missing. Raises :class:`BuildFailed`."""
    go = shutil.which("go")
    if go is None:
        return None
    binary.parent.mkdir(parents=True, exist_ok=True)
    # GOTOOLCHAIN=local: build with the installed Go, never download another toolchain.
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"}
    done = subprocess.run(
        [go, "build", "-trimpath", "-o", str(binary), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise BuildFailed(f"go build of {SOURCE} failed:\n{done.stdout}{done.stderr}")
    return binary
