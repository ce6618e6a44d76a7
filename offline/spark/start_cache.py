"""What a process's Spark start leaves for the next one: the jars Spark resolved and the driver JVM's classes.

Before its first row, a new process's Spark pays twice for work that is the same at every start:

- ``spark-submit`` resolves ``spark.jars.packages`` with Ivy. Ivy's cache keeps it off the network, yet a cold
  JVM still loads Ivy, parses its settings and every module descriptor. After a start that resolved them, the
  jar paths are written to ``jars-<key>.json`` (key: Spark's version and every setting of the resolution) with
  each jar's size and modification time; the next local start passes them as ``spark.jars`` instead, while every
  one of them is still there unchanged.
- The JVM loads, parses and verifies the ~15,000 classes of Spark, Scala, Hadoop and Delta that a first job
  touches. Java's class data sharing (a dynamic AppCDS archive) keeps them parsed and verified in a file that
  the next JVM maps: one run records it at its exit (``-XX:ArchiveClassesAtExit``), later runs map it
  (``-XX:SharedArchiveFile``). The archive is keyed by the Java installation and Spark's jars (the JVM checks
  the same itself and ignores an archive that does not match, with a warning), and only accepted after a probe
  JVM mapped it: a truncated archive does not make the JVM ignore it, it crashes it (SIGBUS, measured on 17).

Everything lives under ``~/.cache/skewless/spark-start``; deleting it costs one slower start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

CACHE_DIR = Path.home() / ".cache" / "skewless" / "spark-start"

# The settings that decide what spark-submit resolves: jars remembered for other values are not reused.
RESOLUTION_SETTINGS = (
    "spark.jars.packages",
    "spark.jars.repositories",
    "spark.jars.excludes",
    "spark.jars.ivy",
    "spark.jars.ivySettings",
)

# The class-sharing archive's warnings (an archive that does not match this JVM) go to the JVM's stderr, which
# is the Spark log of the repository, instead of its stdout, which is the user's terminal.
ARCHIVE_LOGGING = "-Xlog:cds*=off -Xlog:cds*=warning:stderr"
# A recording JVM reports every class it cannot archive (signed jars, old class files) at its exit: silence.
RECORDING_LOGGING = "-Xlog:cds*=off"
# How long an archive without a recording's marker may be a start still under way, not a leftover.
ORPHAN_SECONDS = 3600.0
# An archive no start has used for this long (~175 MB each) belongs to a Java or a Spark since replaced; another
# environment still using it (a second virtualenv) touches it at every start.
UNUSED_SECONDS = 14 * 24 * 3600.0


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _stamp(path: Path) -> list[int]:
    """The size and modification time of ``path``: what tells a jar replaced in place from the one remembered."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def _jar_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _local_path(jar: str) -> Path | None:
    """The file of a jar named by a path or a ``file:`` URI; None for a remote one (hdfs://, https://)."""
    parsed = urlparse(jar)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else jar).resolve()
    return None


def jars_file(conf: Mapping[str, str], directory: Path | None = None) -> Path:
    """Where the jars resolved for ``conf``'s packages are remembered."""
    key = _digest(version("pyspark"), *(conf.get(setting, "") for setting in RESOLUTION_SETTINGS))
    return (directory or CACHE_DIR) / f"jars-{key}.json"


def with_remembered_jars(conf: Mapping[str, str], directory: Path | None = None) -> dict[str, str] | None:
    """``conf`` with its packages replaced by the jars an earlier start resolved for them, or None when there are
    none remembered or one of them is gone or changed (then the packages are resolved again)."""
    if not conf.get("spark.jars.packages"):
        return None
    try:
        remembered = json.loads(jars_file(conf, directory).read_text())["jars"]
        jars = [Path(path) for path, _ in remembered]
        if not jars or any(_stamp(jar) != stamp for jar, (_, stamp) in zip(jars, remembered, strict=True)):
            return None
    except (OSError, ValueError, KeyError, TypeError):  # nothing remembered, an unreadable file, a jar gone
        return None
    started = {key: value for key, value in conf.items() if key not in RESOLUTION_SETTINGS}
    started["spark.jars"] = ",".join([*_jar_list(conf.get("spark.jars", "")), *map(str, jars)])
    return started


def remember_jars(conf: Mapping[str, str], started_jars: str, directory: Path | None = None) -> None:
    """Remember the jars a start with ``conf`` resolved: those of ``started_jars`` (Spark's ``spark.jars`` once
    started) that ``conf`` did not list itself. Nothing is remembered when one is not a local file."""
    if not conf.get("spark.jars.packages"):
        return
    own = {_local_path(jar) for jar in _jar_list(conf.get("spark.jars", ""))}
    resolved = [_local_path(jar) for jar in _jar_list(started_jars)]
    new = [jar for jar in resolved if jar not in own]
    if not new or None in new:
        return
    try:
        entries = [[str(jar), _stamp(jar)] for jar in new if jar is not None]
        _write_atomically(jars_file(conf, directory), json.dumps({"jars": entries}))
    except OSError as exc:  # a read-only home: the next start resolves again, as before
        log.debug("could not remember Spark's resolved jars: %s", exc)


def forget_jars(conf: Mapping[str, str], directory: Path | None = None) -> None:
    jars_file(conf, directory).unlink(missing_ok=True)


def java_binary() -> str | None:
    """The ``java`` that ``spark-submit`` runs: ``$JAVA_HOME/bin/java``, else the first on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    found = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    return os.path.realpath(found) if found else None


def spark_jars_dir() -> Path:
    """The jars on the driver JVM's class path: those of the installed pyspark (or of ``SPARK_HOME``)."""
    spark_home = os.environ.get("SPARK_HOME")
    if spark_home:
        return Path(spark_home) / "jars"
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


class ClassArchive:
    """The class data sharing archive of the driver JVMs of one Java installation and one set of Spark jars.

    :meth:`java_options` says how the next JVM uses it: it maps the archive when one was accepted, records one
    at its exit when none is being recorded, or goes without. A recording is a pair ``<key>.rec-<id>.jsa``
    (written by the JVM at its exit) and ``<key>.rec-<id>.json`` (the JVM's pid and class path, written by
    :meth:`recording_started` once the session runs); the first start after that JVM is gone probes the archive
    and accepts it as ``<key>.jsa``, or deletes it.
    """

    def __init__(self, java: str, directory: Path | None = None) -> None:
        self.java = java
        self.directory = (directory or CACHE_DIR) / "cds"
        jars = spark_jars_dir()
        listing = sorted(f"{jar.name}:{_stamp(jar)}" for jar in jars.glob("*.jar")) if jars.is_dir() else []
        modules = Path(java).parent.parent / "lib" / "modules"  # changes with every build of the JDK
        # The jars' directory too: the JVM checks the class path's paths, so another virtualenv's identical
        # pyspark needs its own archive.
        self.key = _digest(java, str(_stamp(modules)) if modules.exists() else "", str(jars.resolve()), *listing)
        self.archive = self.directory / f"{self.key}.jsa"
        self.recording: Path | None = None

    @classmethod
    def for_this_java(cls, directory: Path | None = None) -> ClassArchive | None:
        java = java_binary()
        return cls(java, directory) if java else None

    def java_options(self) -> str:
        """The driver JVM's options for the archive ("" when a recording by another process is under way)."""
        try:
            under_way = self._settle()
            if self.archive.exists():
                os.utime(self.archive)  # in use: see UNUSED_SECONDS
                # A JVM that crashes mapping it writes its report beside the archive, not into the working directory.
                crashes = f"-XX:ErrorFile={self.directory / 'hs_err_pid%p.log'}"
                return f"-XX:SharedArchiveFile={self.archive} -Xshare:auto {crashes} {ARCHIVE_LOGGING}"
            if under_way:
                return ""
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # an unwritable cache: start as before
            log.debug("no class data sharing for Spark: %s", exc)
            return ""
        self.recording = self.directory / f"{self.key}.rec-{uuid.uuid4().hex[:12]}.jsa"
        return f"-XX:ArchiveClassesAtExit={self.recording} {RECORDING_LOGGING}"

    def forget(self) -> None:
        """Delete the archive (a JVM crashed starting with it)."""
        self.archive.unlink(missing_ok=True)

    def recording_started(self, pid: int, class_path: str) -> None:
        """The session recording :attr:`recording` runs in the JVM ``pid``: mark the recording as under way."""
        if self.recording is not None:
            try:
                marker = json.dumps({"pid": pid, "class_path": class_path})
                _write_atomically(self.recording.with_suffix(".json"), marker)
            except OSError as exc:
                log.debug("could not mark the class data sharing recording: %s", exc)

    def _settle(self) -> bool:
        """Accept or delete the recordings whose JVM is gone; True when one is still under way."""
        under_way = False
        for marker in self.directory.glob(f"{self.key}.rec-*.json"):
            archive = marker.with_suffix(".jsa")
            try:
                recording = json.loads(marker.read_text())
                pid, class_path = int(recording["pid"]), str(recording["class_path"])
            except (OSError, ValueError, KeyError, TypeError):
                pid, class_path = 0, ""
            if pid and _alive(pid):
                under_way = True
                continue
            if not self.archive.exists() and archive.exists() and self._maps(archive, class_path):
                os.replace(archive, self.archive)
                self._delete_unused()
            archive.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
        for archive in self.directory.glob(f"{self.key}.rec-*.jsa"):
            # A start that failed before its marker was written; its JVM has long exited.
            if not archive.with_suffix(".json").exists() and time.time() - archive.stat().st_mtime > ORPHAN_SECONDS:
                archive.unlink(missing_ok=True)
        return under_way

    def _delete_unused(self) -> None:
        """Delete the archives of other Java installations or Spark versions that no start used for a while."""
        for other in self.directory.glob("*.jsa"):
            if ".rec-" not in other.name and time.time() - other.stat().st_mtime > UNUSED_SECONDS:
                other.unlink(missing_ok=True)

    def _maps(self, archive: Path, class_path: str) -> bool:
        """Whether a JVM with ``class_path`` maps ``archive`` (``-Xshare:on`` exits non-zero when it cannot)."""
        if not class_path:
            return False
        command = [self.java, "-cp", class_path, f"-XX:SharedArchiveFile={archive}", "-Xshare:on", "-version"]
        try:
            probe = subprocess.run(command, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if probe.returncode != 0:
            log.info("the recorded class data sharing archive %s does not map; deleted", archive)
        return probe.returncode == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that pid
        return True
    return True
