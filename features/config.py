"""The repository configuration, ``skewless.yaml``.

```yaml
project: card_fraud
registry: sqlite:///.skewless/registry.db      # or postgresql://user:${PGPASSWORD}@host/db
offline:
  path: .skewless/offline                      # Delta Lake tables, one folder per feature view
  spark:                                       # any Spark setting; spark.master picks the cluster
    spark.master: local[2]
  concurrent_views: 2                          # views materialized at once (one Spark job each)
  arrow_join_max_mb: 1024                      # training sets over smaller tables join in Arrow; 0: Spark
  arrow_materialize_max_rows: 5000000          # views without aggregations over fewer source rows per run
                                               # materialize in Arrow (PostgreSQL sources); 0: Spark
online:
  url: embedded                                # or redis://host:6379/0
connections:
  shop: sqlite:///data/shop.db
```

``${NAME}`` and ``${NAME:-default}`` are replaced from the environment when the file is read, so secrets stay
out of the file. Relative SQLite paths are relative to the repository folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from features.errors import ConfigError

CONFIG_FILE = "skewless.yaml"
# Two views at once keep both cores of a small machine busy while the other view waits on its driver-side
# steps (Delta commit, schema check, online commit): the benchmark's two views took 31.7 s instead of 35.5 s in
# a new process on 2 cores; on a cluster every view's job gets executors of its own.
DEFAULT_CONCURRENT_VIEWS = 2
# Training sets whose feature tables (Parquet, at the versions read) total at most this many MiB are joined in
# Arrow in the calling process instead of in Spark: no JVM to start (the benchmark's 2M rows are ~70 MiB, and
# joining them takes ~1 GiB of memory). 0 joins everything in Spark.
DEFAULT_ARROW_JOIN_MAX_MB = 1024
# Views without aggregations whose run reads at most this many source rows (PostgreSQL sources) materialize in
# Arrow in the calling process instead of in Spark (offline/arrow/materialize.py): the benchmark's 1M rows a view
# take ~1 GiB of memory there at peak. 0 materializes everything in Spark.
DEFAULT_ARROW_MATERIALIZE_MAX_ROWS = 5_000_000
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str) -> str:
    """Replace ``${NAME}`` / ``${NAME:-default}`` from the environment; a missing variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable ${{{name}}} is not set (used in {text!r})")

    return _ENV_PATTERN.sub(replace, text)


def resolve_sqlite_url(url: str, base: Path) -> str:
    """Make ``sqlite:///relative.db`` relative to ``base`` rather than to the current directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url


def _whole_number(section: dict[str, Any], key: str, default: int, source: str, *, minimum: int = 1) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{source}: offline.{key} must be a whole number of at least {minimum} (got {value!r})")
    return value


@dataclass(frozen=True, slots=True)
class RepoConfig:
    """The parsed ``skewless.yaml`` of one feature repository."""

    root: Path
    project: str = "skewless"
    registry_url: str = "sqlite:///.skewless/registry.db"
    offline_path: str = ".skewless/offline"
    spark: dict[str, str] = field(default_factory=dict)
    online_url: str = "embedded"
    online_store: str = "redis"
    offline_engine: str = "spark"
    concurrent_views: int = DEFAULT_CONCURRENT_VIEWS
    arrow_join_max_mb: int = DEFAULT_ARROW_JOIN_MAX_MB
    arrow_materialize_max_rows: int = DEFAULT_ARROW_MATERIALIZE_MAX_ROWS
    connections: dict[str, str] = field(default_factory=dict)
    definitions: str = "definitions"

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> RepoConfig:
        root_path = Path(root).resolve()
        path = root_path / CONFIG_FILE
        if not path.exists():
            raise ConfigError(f"no {CONFIG_FILE} in {root_path}; run 'skewless init' to create one")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(root_path, data, source=str(path))

    @classmethod
    def from_dict(cls, root: Path, data: dict[str, Any], *, source: str = CONFIG_FILE) -> RepoConfig:
        known = {"project", "registry", "offline", "online", "connections", "definitions"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; valid choices: {sorted(known)}")
        offline = data.get("offline") or {}
        online = data.get("online") or {}
        connections = data.get("connections") or {}
        if not isinstance(connections, dict):
            raise ConfigError(f"{source}: 'connections' must map names to SQLAlchemy URLs")
        return cls(
            root=root,
            project=str(data.get("project", "skewless")),
            registry_url=str(data.get("registry", "sqlite:///.skewless/registry.db")),
            offline_path=str(offline.get("path", ".skewless/offline")),
            spark={str(k): str(v) for k, v in (offline.get("spark") or {}).items()},
            offline_engine=str(offline.get("engine", "spark")),
            concurrent_views=_whole_number(offline, "concurrent_views", DEFAULT_CONCURRENT_VIEWS, source),
            arrow_join_max_mb=_whole_number(offline, "arrow_join_max_mb", DEFAULT_ARROW_JOIN_MAX_MB, source, minimum=0),
            arrow_materialize_max_rows=_whole_number(
                offline, "arrow_materialize_max_rows", DEFAULT_ARROW_MATERIALIZE_MAX_ROWS, source, minimum=0
            ),
            online_url=str(online.get("url", "embedded")),
            online_store=str(online.get("store", "redis")),
            connections={str(k): str(v) for k, v in connections.items()},
            definitions=str(data.get("definitions", "definitions")),
        )

    # Resolved values: environment interpolated, relative paths anchored at the repository.
    def resolved_registry_url(self) -> str:
        return resolve_sqlite_url(interpolate(self.registry_url), self.root)

    def resolved_offline_path(self) -> Path:
        return (self.root / interpolate(self.offline_path)).resolve()

    def resolved_spark_conf(self) -> dict[str, str]:
        return {k: interpolate(v) for k, v in self.spark.items()}

    def resolved_online_url(self) -> str:
        return interpolate(self.online_url)

    def state_dir(self) -> Path:
        """Where embedded services keep their files (``.skewless/`` under the repository)."""
        return self.root / ".skewless"

    def connection_url(self, connection: str) -> str:
        """A source's connection, by name from ``connections`` or as an inline URL, fully resolved."""
        if "://" in connection:
            raw = connection
        elif connection in self.connections:
            raw = self.connections[connection]
        else:
            known = ", ".join(sorted(self.connections)) or "(none)"
            raise ConfigError(f"unknown connection '{connection}'; known in {CONFIG_FILE}: {known}")
        return resolve_sqlite_url(interpolate(raw), self.root)
