"""The Python daemon Spark's workers fork from: archives re-read only when changed, task garbage still collected."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
import zipfile
from pathlib import Path
from typing import IO, Any

import pytest

from offline.spark import python_daemon

# Runs in a child interpreter: patching zipimport here would change the test process for every later test.
ARCHIVE_CHECK = """
import importlib, sys, zipfile, zipimport
from offline.spark import python_daemon

archive = sys.argv[1]
reads = []
original = zipimport._read_directory
zipimport._read_directory = lambda path: reads.append(path) or original(path)
python_daemon.reread_only_changed_archives()
sys.path.insert(0, archive)
import first_module
importlib.invalidate_caches()  # the first invalidation reads it (nothing is known of it yet)
primed = reads.count(archive)
for _ in range(3):
    importlib.invalidate_caches()
unchanged = reads.count(archive) - primed
with zipfile.ZipFile(archive, "a") as z:
    z.writestr("second_module.py", "VALUE = 2\\n")
importlib.invalidate_caches()
import second_module
print(unchanged, reads.count(archive) - primed, first_module.VALUE, second_module.VALUE)
"""


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12 fixed zipimport's invalidation itself")
def test_an_archive_is_read_again_only_when_it_changed(tmp_path: Path) -> None:
    archive = tmp_path / "code.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("first_module.py", "VALUE = 1\n")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ARCHIVE_CHECK), str(archive)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(python_daemon.__file__).parent.parent,
    ).stdout.split()
    # Invalidating an unchanged archive again reads nothing; a changed archive is read again (once), and the
    # module added to it imports.
    assert out == ["0", "1", "1", "2"]


def test_a_task_s_garbage_is_collected_and_what_survives_is_frozen() -> None:
    collected: list[bool] = []

    def task(infile: IO[bytes], outfile: IO[bytes]) -> Any:
        cycle: list[Any] = []
        cycle.append(cycle)  # only the cycle collector frees this
        holder = type("Holder", (), {})()
        cycle.append(holder)
        weakref.finalize(holder, collected.append, True)
        return 0

    frozen_before = gc.get_freeze_count()
    try:
        assert python_daemon.freeze_after_each_task(task)(None, None) == 0  # type: ignore[arg-type]
        assert collected == [True]
        assert gc.get_freeze_count() >= frozen_before
    finally:
        gc.unfreeze()  # this test process is not a worker: let later collections see everything again


@pytest.mark.spark
def test_spark_s_python_workers_run_under_this_daemon(spark: Any) -> None:
    import pyarrow as pa

    def probe(batches: Any) -> Any:
        import gc
        import zipimport

        for _ in batches:
            pass
        yield pa.RecordBatch.from_pydict(
            {
                "invalidate": [zipimport.zipimporter.invalidate_caches.__qualname__],
                "frozen": [gc.get_freeze_count()],
            }
        )

    rows = spark.range(0, 8, 1, 2).mapInArrow(probe, "invalidate string, frozen long").collect()
    assert len(rows) == 2
    assert all(row["frozen"] > 0 for row in rows)  # the daemon froze its heap before forking
    if sys.version_info < (3, 12):
        assert all("reread_only_changed_archives" in row["invalidate"] for row in rows)
