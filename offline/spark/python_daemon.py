"""Spark's Python daemon (``pyspark.daemon``) without two fixed costs it adds to every Python task.

Spark forks a Python worker per core from this daemon and reuses it task after task. Around each task it pays
for work whose cost grows with what the process holds, not with the task's rows; measured here, a task over a
handful of rows took ~0.2 s of CPU, about one second for each view published online:

- **Zip caches.** Each task calls ``importlib.invalidate_caches()`` (``pyspark.worker_util.setup_spark_files``).
  Before Python 3.12 that makes every zip importer re-read its archive's directory (CPython issue gh-103200), and
  a worker's path holds ``pyspark.zip``, py4j's zip, spark-core's jar and the jars of ``spark.jars.packages``:
  about 9,000 entries. Here an archive is re-read only when its size or modification time changed, which is all
  that invalidating was for.
- **Garbage collection.** After each task the daemon runs a full ``gc.collect()``, which walks every object the
  worker holds: pandas, pyarrow and pyspark once imported. Here, after each task, the task's own garbage is
  collected and what survives is frozen (``gc.freeze``), so the next full collection walks only new objects.

Otherwise ``pyspark.daemon`` runs unchanged. :mod:`offline.spark.session` names this module in
``spark.python.daemon.module`` in local mode, where the workers run this interpreter (with skewless installed).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import zipimport
from collections.abc import Callable
from typing import IO, Any


def reread_only_changed_archives() -> None:
    """Make ``zipimporter.invalidate_caches`` skip archives unchanged since this process last read them."""
    if sys.version_info >= (3, 12):  # fixed upstream: invalidating only marks the directory stale
        return
    reread: Callable[[zipimport.zipimporter], None] = zipimport.zipimporter.invalidate_caches
    stamps: dict[str, tuple[int, int]] = {}

    def invalidate_caches(self: zipimport.zipimporter) -> None:
        try:
            status = os.stat(self.archive)
        except OSError:
            reread(self)  # gone or unreadable: the original drops it from the cache
            return
        stamp = (status.st_mtime_ns, status.st_size)
        if stamps.get(self.archive) != stamp:
            reread(self)
            stamps[self.archive] = stamp

    zipimport.zipimporter.invalidate_caches = invalidate_caches  # type: ignore[method-assign]


def freeze_after_each_task(worker_main: Callable[[IO[bytes], IO[bytes]], Any]) -> Callable[[IO[bytes], IO[bytes]], Any]:
    """``worker_main``, followed by collecting the task's garbage and freezing what is left."""

    def run_task(infile: IO[bytes], outfile: IO[bytes]) -> Any:
        try:
            return worker_main(infile, outfile)
        finally:
            gc.collect()  # only objects created since the last freeze: this task's
            gc.freeze()

    return run_task


def main() -> None:
    reread_only_changed_archives()
    importlib.invalidate_caches()  # read each archive once here, before the daemon forks its workers
    from pyspark import daemon  # chooses its worker from sys.argv[1], as when run as a script

    daemon.worker_main = freeze_after_each_task(daemon.worker_main)
    gc.collect()
    gc.freeze()  # what the daemon holds now, every worker inherits: never walked again
    daemon.manager()


if __name__ == "__main__":
    main()
