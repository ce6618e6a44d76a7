"""``skewless prune`` and ``skewless teardown`` on real components: a registry on SQLite and on PostgreSQL, Delta
tables written by materializations in Arrow from a PostgreSQL source, a real redis-server (and the embedded one).

The oracle is what the test lists itself (table folders on disk, keys by ``KEYS``) before and after, and what
the plan versions name, read by the test from the registry's plan JSON with plain SQL.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
import sqlalchemy as sa

from features.cleanup import plan_prune, prune
from features.cli import main
from features.config import RepoConfig
from features.errors import CleanupError, OnlineStoreError
from features.store import FeatureStore
from online.embedded import server_info
from tests.servers import fresh_database

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ENTITIES = """
from features import Entity, Int64
customer = Entity(join_keys={"customer_id": Int64})
"""

VIEW = """
{name} = FeatureView(entities=[customer], source=orders, features=[Feature("{feature}", {dtype}{expr})])
"""


def views(*specs: tuple[str, str, str, str]) -> str:
    """A definitions file with one view per (name, feature, dtype, expression) over the orders table."""
    head = f"""
from features import Feature, FeatureView, Float64, Int64, SqlSource
from repo_defs.entities import customer
orders = SqlSource(connection="main", table="{TABLE}", timestamp="ts")
"""
    body = "".join(VIEW.format(name=n, feature=f, dtype=d, expr=f", expr={e!r}" if e else "") for n, f, d, e in specs)
    return head + body


TABLE = f"orders_{uuid.uuid4().hex[:8]}"
A = ("view_a", "amount", "Float64", "")
B = ("view_b", "qty", "Int64", "")
C1 = ("view_c", "double", "Float64", "amount * 2")
C2 = ("view_c", "double", "Float64", "amount * 3")  # a changed definition: a new table


@pytest.fixture(scope="module")
def source(postgres_url: str) -> str:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {TABLE} (customer_id BIGINT, ts TIMESTAMP, amount DOUBLE PRECISION, qty BIGINT)")
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s)",
                [(c, datetime(2024, 1, d, 12), 10.0 * c + d, c + d) for c in range(1, 6) for d in range(1, 4)],
            )
    return postgres_url


@pytest.fixture
def make_repo(tmp_path: Path, source: str) -> Callable[..., RepoConfig]:
    def build(name: str, registry: str, online: str, *specs: tuple[str, str, str, str]) -> RepoConfig:
        root = tmp_path / name
        (root / "repo_defs").mkdir(parents=True, exist_ok=True)
        (root / "repo_defs" / "entities.py").write_text(textwrap.dedent(ENTITIES))
        (root / "repo_defs" / "views.py").write_text(views(*specs))
        (root / "skewless.yaml").write_text(
            f"project: {name}\nregistry: {registry}\nconnections:\n  main: {source}\n"
            f"online:\n  url: {online}\ndefinitions: repo_defs\n"
        )
        return RepoConfig.load(root)

    return build


def apply_and_materialize(config: RepoConfig, *names: str) -> None:
    with FeatureStore(config=config) as store:
        store.apply()
        results = store.materialize(list(names) or None)
    assert {r.engine for r in results} == {"arrow"}  # no JVM in this test
    assert all(r.rows_published > 0 for r in results)


def tables(config: RepoConfig) -> set[str]:
    """The table folders under the offline path, as view/fingerprint."""
    offline = config.resolved_offline_path()
    return {f"{p.parent.name}/{p.name}" for p in offline.glob("*/*") if p.is_dir()} if offline.exists() else set()


def keys(url: str, project: str) -> set[bytes]:
    with redis.Redis.from_url(url) as client:
        return set(client.keys(f"{project}:*"))


def views_with_keys(url: str, project: str) -> set[str]:
    return {k.decode().split(":")[1] for k in keys(url, project)}


def plan_versions(registry_url: str) -> list[dict[str, Any]]:
    """Every plan version's JSON, oldest first, read with plain SQL."""
    engine = sa.create_engine(registry_url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT plan_json FROM skewless_plan_versions ORDER BY version").all()
    engine.dispose()
    return [json.loads(r[0]) for r in rows]


def referenced(plans: list[dict[str, Any]]) -> set[str]:
    return {f"{v['name']}/{v['storage_fingerprint']}" for plan in plans for v in plan["views"]}


def served(plans: list[dict[str, Any]]) -> set[str]:
    return {v["name"] for v in plans[-1]["views"] if v["online"]}


@pytest.fixture(params=["sqlite", "postgres"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return fresh_database(postgres_url, f"reg_{uuid.uuid4().hex[:8]}")


def test_prune_deletes_what_no_protected_plan_version_uses_and_teardown_everything_of_the_repo(
    make_repo: Callable[..., RepoConfig],
    registry_url: str,
    redis_url: str,
    postgres_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = f"p{uuid.uuid4().hex[:6]}"
    # Another repository on the same Redis, its project name starting like this one's: never touched.
    other = make_repo(project + "x", f"sqlite:///{tmp_path / 'other.db'}", redis_url, A, B)
    apply_and_materialize(other)
    other_keys, other_tables = keys(redis_url, other.project), tables(other)

    config = make_repo(project, registry_url, redis_url, A, B, C1)
    repo = str(config.root)
    apply_and_materialize(config)  # plan version 1
    with FeatureStore(config=config) as store:  # a training set of version 1, reading view_a's table
        entities = pd.DataFrame({"customer_id": [1, 2], "event_timestamp": [datetime(2024, 2, 1, tzinfo=UTC)] * 2})
        store.get_training_dataset(entities, features=["view_a:amount"], output=str(config.root / "train.parquet"))
    make_repo(project, registry_url, redis_url, B, C2)
    apply_and_materialize(config, "view_c")  # version 2: view_a removed, view_c changed (a new table)
    make_repo(project, registry_url, redis_url, C2)
    with FeatureStore(config=config) as store:
        store.apply()  # version 3: view_b removed
    plans = plan_versions(config.resolved_registry_url())
    assert len(plans) == 3
    before_tables, before_keys = tables(config), keys(redis_url, project)
    assert len(before_tables) == 4 and views_with_keys(redis_url, project) == {"view_a", "view_b", "view_c"}

    # A dry run (the default) deletes nothing, and says what it would.
    capsys.readouterr()
    assert main(["prune", "--repo", repo, "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert tables(config) == before_tables and keys(redis_url, project) == before_keys
    assert {f"{t['view']}/{t['fingerprint']}" for t in dry["tables"] if t["delete"]} == before_tables - referenced(
        plans
    )
    assert {v["view"] for v in dry["online"] if v["delete"]} == {"view_a", "view_b"}
    assert dry["deleted"] is None

    # Every plan version protects tables (older training sets stay reproducible); only the latest is served.
    capsys.readouterr()
    assert main(["prune", "--repo", repo, "--yes", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)["deleted"]
    assert sorted(d.split("'")[1] for d in done) == ["view_a", "view_b"]  # "N online key(s) of view 'x'"
    assert tables(config) == before_tables & referenced(plans) == before_tables
    assert views_with_keys(redis_url, project) == served(plans) == {"view_c"}
    assert {k for k in before_keys if k.decode().split(":")[1] in served(plans)} == keys(redis_url, project)

    # Only the last two versions protect: view_a's table and view_c's first one go; view_b's stays (version 2
    # still uses it). The training set of version 1 is named as made unreproducible.
    capsys.readouterr()
    assert main(["prune", "--repo", repo, "--keep-versions", "2"]) == 0
    out = capsys.readouterr().out
    assert f"would make unreproducible: {config.root / 'train.parquet.manifest.json'} (a training set of plan " in out
    assert "dry run: nothing was deleted" in out and tables(config) == before_tables
    assert main(["prune", "--repo", repo, "--keep-versions", "2", "--yes"]) == 0
    assert "deleted: table view_a/" in capsys.readouterr().out
    assert tables(config) == before_tables & referenced(plans[-2:])
    assert {t.split("/")[0] for t in tables(config)} == {"view_b", "view_c"}

    assert keys(redis_url, other.project) == other_keys and tables(other) == other_tables

    # teardown: the registry, the tables and the keys of this repository; nothing of the other one.
    assert main(["teardown", "--repo", repo, "--yes"]) == 0
    assert not config.resolved_offline_path().exists()
    assert keys(redis_url, project) == set()
    if registry_url.startswith("sqlite"):
        assert not Path(registry_url.removeprefix("sqlite:///")).exists()
    else:
        engine = sa.create_engine(registry_url)
        assert not sa.inspect(engine).get_table_names()
        engine.dispose()
    assert (config.root / "skewless.yaml").exists() and (config.root / "repo_defs" / "views.py").exists()
    assert keys(redis_url, other.project) == other_keys and tables(other) == other_tables
    capsys.readouterr()
    assert main(["runs", "--repo", str(other.root), "--json"]) == 0
    assert {r["view"] for r in json.loads(capsys.readouterr().out)} == {"view_a", "view_b"}


@pytest.fixture
def embedded_repo(make_repo: Callable[..., RepoConfig], tmp_path: Path) -> Iterator[RepoConfig]:
    config = make_repo("shop", f"sqlite:///{tmp_path / 'shop.db'}", "embedded", A, B, C1)
    yield config
    from online.embedded import stop_embedded_server

    stop_embedded_server(config.state_dir())  # when the test failed before its teardown


def test_prune_and_teardown_with_the_embedded_online_store(
    embedded_repo: RepoConfig, make_repo: Callable[..., RepoConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = embedded_repo
    apply_and_materialize(config)
    info = server_info(config.state_dir())
    assert info is not None
    url = info["url"]
    make_repo("shop", f"sqlite:///{tmp_path / 'shop.db'}", "embedded", A)
    with FeatureStore(config=config) as store:
        store.apply()
    before = keys(url, "shop")

    # What an interrupted prune left is finished; a folder not shaped like a table is not prune's to judge.
    offline = config.resolved_offline_path()
    leftover = offline / "view_gone" / ".deleting-0123456789abcdef"
    leftover.mkdir(parents=True)
    (leftover / "part-0.parquet").write_bytes(b"x" * 10)
    (offline / "_landing" / "view_a").mkdir(parents=True)

    # A prune that fails part way says what it deleted and leaves the rest as it was.
    from online.redis_store import RedisOnlineStore

    real_delete = RedisOnlineStore.delete_view
    calls: list[str] = []

    def failing_delete(self: RedisOnlineStore, view: str) -> int:
        calls.append(view)
        if len(calls) == 2:
            raise OnlineStoreError("connection lost")
        return real_delete(self, view)

    monkeypatch.setattr(RedisOnlineStore, "delete_view", failing_delete)
    with FeatureStore(config=config) as store:
        plan = plan_prune(store)
        with pytest.raises(CleanupError) as failed:
            prune(store, plan)
    assert calls == ["view_b", "view_c"]
    assert "while deleting the online keys of view 'view_c'" in str(failed.value)
    assert "Deleted before that: " in str(failed.value) and "online key(s) of view 'view_b'" in str(failed.value)
    assert keys(url, "shop") == {k for k in before if not k.startswith(b"shop:view_b:")}
    assert not (offline / "view_gone").exists() and (offline / "_landing" / "view_a").is_dir()
    assert len(tables(config)) == 3 + 1  # view_a, view_b, view_c and the _landing folder
    monkeypatch.setattr(RedisOnlineStore, "delete_view", real_delete)

    assert main(["prune", "--repo", str(config.root), "--yes"]) == 0
    assert views_with_keys(url, "shop") == {"view_a"}

    # teardown asks for the project name; a wrong answer deletes nothing
    monkeypatch.setattr("builtins.input", lambda prompt: "nope")
    assert main(["teardown", "--repo", str(config.root)]) == 1
    assert views_with_keys(url, "shop") == {"view_a"} and len(tables(config)) == 4
    (config.state_dir() / "engine").mkdir()  # a warm engine's folder (key, log): teardown's plugin removes it
    (config.state_dir() / "engine" / "engine.log").write_text("stopped long ago\n")
    monkeypatch.setattr("builtins.input", lambda prompt: "shop")
    assert main(["teardown", "--repo", str(config.root)]) == 0
    assert server_info(config.state_dir()) is None  # stopped
    assert not (config.state_dir() / "online").exists() and not (config.state_dir() / "engine").exists()
    assert not config.resolved_offline_path().exists() and not (tmp_path / "shop.db").exists()


def test_teardown_refuses_what_is_not_a_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data.txt").write_text("mine")
    assert main(["teardown", "--repo", str(tmp_path), "--yes"]) == 1
    assert "is not a skewless repository (no skewless.yaml); nothing was deleted" in capsys.readouterr().out
    assert (tmp_path / "data.txt").read_text() == "mine"
    (tmp_path / "skewless.yaml").write_text("offline:\n  path: .\n")
    assert main(["teardown", "--repo", str(tmp_path), "--yes"]) == 1
    assert "teardown would delete the definitions too; nothing was deleted" in capsys.readouterr().out
    assert (tmp_path / "data.txt").exists()
