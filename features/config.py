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
serving:                                       # skewless serve: who may call it, and how much a request may ask
  tokens:                                      # none: no authentication (then it listens on loopback only)
    fraud_model: {hash: "sha256:9f86d0...", services: [fraud_model]}   # from 'skewless token create'
  max_body_bytes: 1048576
connections:
  shop: sqlite:///data/shop.db
```

``${NAME}`` and ``${NAME:-default}`` are replaced from the environment when the file is read, so secrets stay
out of the file. Relative SQLite paths are relative to the repository folder.

:data:`SETTINGS` lists every key with its default and meaning: the reader takes its defaults from it and rejects
keys it does not list, and ``skewless init`` writes the commented reference from it (:func:`reference_yaml`).
"""

from __future__ import annotations

import os
import re
import textwrap
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
# A lookup of the 10,000 entities allowed is ~200 KiB of JSON; a request 5x that is no lookup a model server sends,
# and the service never buffers more than this per request.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_ENTITIES = 10_000
DEFAULT_MAX_REQUEST_FIELDS = 100
TOKEN_KEYS = ("hash", "services", "push")  # the keys of one serving.tokens entry


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of ``skewless.yaml``: its dotted name, its default and what it means. :data:`SETTINGS` is the one
    list the reader checks keys against and ``skewless init`` writes the commented reference from."""

    key: str  # "offline.path": section "offline", key "path"
    default: Any
    meaning: str
    example: str = ""  # for maps: one commented example entry

    @property
    def section(self) -> str | None:
        return self.key.split(".")[0] if "." in self.key else None

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]


SETTINGS: tuple[Setting, ...] = (
    Setting("project", "skewless", "names the online keys (<project>:<view>:...), so repositories can share a Redis"),
    Setting(
        "registry",
        "sqlite:///.skewless/registry.db",
        "where plan versions and runs are kept: a SQLAlchemy URL (a SQLite file, or postgresql://user:pw@host/db)",
    ),
    Setting("definitions", "definitions", "the folder of definition files (*.py), relative to this file"),
    Setting("offline.path", ".skewless/offline", "Delta Lake feature tables: <path>/<view>/<storage fingerprint>"),
    Setting(
        "offline.engine", "spark", "the offline engine plugin: spark (runs each job in Arrow, warm engine or Spark)"
    ),
    Setting(
        "offline.spark",
        {},
        "any Spark setting for the Spark session; spark.master picks the cluster (default local[2])",
        "spark.master: local[2]",
    ),
    Setting("offline.concurrent_views", DEFAULT_CONCURRENT_VIEWS, "views materialized at once (one job each)"),
    Setting(
        "offline.arrow_join_max_mb",
        DEFAULT_ARROW_JOIN_MAX_MB,
        "training sets over feature tables up to this many MiB are joined in Arrow, in-process; 0: always Spark",
    ),
    Setting(
        "offline.arrow_materialize_max_rows",
        DEFAULT_ARROW_MATERIALIZE_MAX_ROWS,
        "views without aggregations reading up to this many source rows a run (PostgreSQL sources) materialize "
        "in Arrow, in-process; 0: always Spark",
    ),
    Setting(
        "online.url",
        "embedded",
        "the online store: embedded (a Redis-protocol server per repository, started on first use) or "
        "redis://host:6379/0",
    ),
    Setting("online.store", "redis", "the online store plugin"),
    Setting(
        "online.contract_versions",
        2,
        "earlier definitions of a view kept materialized and served side by side for registered training "
        "contracts (those of the newest contracts); 0: none, lookups under a contract whose features changed get 409",
    ),
    Setting(
        "online.keep_snapshots",
        2,
        "published snapshots kept per view (the live one included, at least 2): the ones 'skewless rollback' can "
        "make live again; each costs the bytes of its rows in the store",
    ),
    Setting(
        "serving.tokens",
        {},
        "bearer tokens that may call the HTTP service, by name: the token's hash (sha256:<hex>, printed by "
        "'skewless token create'), the feature services it may look up ('*': all of them, plain feature lists, "
        "Feast's endpoint and the catalog at /ui/) and the views it may push to ('*': all). None: no "
        "authentication, and 'skewless serve' listens on loopback only",
        'fraud_model: {hash: "sha256:<64 hex digits>", services: [fraud_model], push: []}',
    ),
    Setting(
        "serving.max_body_bytes",
        DEFAULT_MAX_BODY_BYTES,
        "the largest request body accepted (413 beyond it, answered before the rest is read)",
    ),
    Setting(
        "serving.max_entities",
        DEFAULT_MAX_ENTITIES,
        "the most entities (values per entity or request-data column) of a lookup, and rows of a push",
    ),
    Setting(
        "serving.max_request_fields",
        DEFAULT_MAX_REQUEST_FIELDS,
        "the most columns a request may name: entity keys plus request-data fields of a lookup, columns of a push",
    ),
    Setting(
        "connections",
        {},
        "source databases by name (SQLAlchemy URLs; relative SQLite paths are relative to this file)",
        "payments: postgresql://reader:${PGPASSWORD}@db/payments",
    ),
)
DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS}
SECTIONS = ("offline", "online", "serving")  # the keys that hold a mapping of settings
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
    value = section.get(key.rpartition(".")[2], default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{source}: {key} must be a whole number of at least {minimum} (got {value!r})")
    return value


def _tokens(tokens: Any, source: str) -> dict[str, dict[str, Any]]:
    """``serving.tokens``, checked for shape (the hashes are checked once the environment is interpolated)."""
    if not isinstance(tokens, dict):
        raise ConfigError(f"{source}: serving.tokens must map token names to {{hash, services, push}}")
    checked: dict[str, dict[str, Any]] = {}
    for name, entry in tokens.items():
        where = f"{source}: serving.tokens.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            raise ConfigError(f"{where} must be a mapping with a 'hash' (sha256:<hex>), from 'skewless token create'")
        unknown = sorted(set(map(str, entry)) - set(TOKEN_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid choices: {list(TOKEN_KEYS)}")
        for key in ("services", "push"):
            names = entry.get(key, [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"{where}.{key} must be a list of names ('*' for all)")
        checked[str(name)] = dict(entry)
    return checked


@dataclass(frozen=True, slots=True)
class RepoConfig:
    """The parsed ``skewless.yaml`` of one feature repository (defaults: :data:`SETTINGS`)."""

    root: Path
    project: str = DEFAULTS["project"]
    registry_url: str = DEFAULTS["registry"]
    offline_path: str = DEFAULTS["offline.path"]
    spark: dict[str, str] = field(default_factory=dict)
    online_url: str = DEFAULTS["online.url"]
    online_store: str = DEFAULTS["online.store"]
    keep_snapshots: int = DEFAULTS["online.keep_snapshots"]
    contract_versions: int = DEFAULTS["online.contract_versions"]
    offline_engine: str = DEFAULTS["offline.engine"]
    concurrent_views: int = DEFAULTS["offline.concurrent_views"]
    arrow_join_max_mb: int = DEFAULTS["offline.arrow_join_max_mb"]
    arrow_materialize_max_rows: int = DEFAULTS["offline.arrow_materialize_max_rows"]
    connections: dict[str, str] = field(default_factory=dict)
    definitions: str = DEFAULTS["definitions"]
    serving_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_body_bytes: int = DEFAULTS["serving.max_body_bytes"]
    max_entities: int = DEFAULTS["serving.max_entities"]
    max_request_fields: int = DEFAULTS["serving.max_request_fields"]

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
        _check_keys(data, None, source)
        offline = data.get("offline") or {}
        online = data.get("online") or {}
        serving = data.get("serving") or {}
        for section, values in (("offline", offline), ("online", online), ("serving", serving)):
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: '{section}' must be a mapping of settings")
            _check_keys(values, section, source)
        connections = data.get("connections") or {}
        if not isinstance(connections, dict):
            raise ConfigError(f"{source}: 'connections' must map names to SQLAlchemy URLs")

        def value(key: str) -> Any:
            section, _, name = key.rpartition(".")
            return {"": data, "offline": offline, "online": online}[section].get(name, DEFAULTS[key])

        def whole(key: str, minimum: int) -> int:
            values = {"serving": serving, "online": online}.get(key.split(".")[0], offline)
            return _whole_number(values, key, DEFAULTS[key], source, minimum=minimum)

        return cls(
            root=root,
            project=str(value("project")),
            registry_url=str(value("registry")),
            offline_path=str(value("offline.path")),
            spark={str(k): str(v) for k, v in (offline.get("spark") or {}).items()},
            offline_engine=str(value("offline.engine")),
            concurrent_views=whole("offline.concurrent_views", 1),
            arrow_join_max_mb=whole("offline.arrow_join_max_mb", 0),
            arrow_materialize_max_rows=whole("offline.arrow_materialize_max_rows", 0),
            online_url=str(value("online.url")),
            online_store=str(value("online.store")),
            keep_snapshots=whole("online.keep_snapshots", 2),
            contract_versions=whole("online.contract_versions", 0),
            connections={str(k): str(v) for k, v in connections.items()},
            definitions=str(value("definitions")),
            serving_tokens=_tokens(serving.get("tokens") or {}, source),
            max_body_bytes=whole("serving.max_body_bytes", 1),
            max_entities=whole("serving.max_entities", 1),
            max_request_fields=whole("serving.max_request_fields", 1),
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

    def resolved_serving_tokens(self) -> dict[str, dict[str, Any]]:
        """``serving.tokens`` with ``${NAME}`` in the hashes replaced from the environment."""
        return {name: {**entry, "hash": interpolate(entry["hash"])} for name, entry in self.serving_tokens.items()}

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


def _check_keys(data: dict[str, Any], section: str | None, source: str) -> None:
    """Reject keys of the top level (``section`` None) or of a section that :data:`SETTINGS` does not list."""
    if section is None:
        known = sorted({s.section or s.key for s in SETTINGS})
    else:
        known = sorted(s.name for s in SETTINGS if s.section == section)
    unknown = sorted(set(map(str, data)) - set(known))
    if unknown:
        where = f" in '{section}'" if section else ""
        raise ConfigError(f"{source}: unknown key(s){where} {unknown}; valid choices: {known}")


def reference_yaml(project: str) -> str:
    """A ``skewless.yaml`` holding every key of :data:`SETTINGS` at its default (``project`` aside), each under a
    comment saying what it means: what ``skewless init`` writes. Read back, it gives the defaults."""
    lines = [
        f"# The configuration of the feature repository '{project}': every key, at its default, and what it means.",
        "# ${NAME} and ${NAME:-default} are replaced from the environment when the file is read (keep secrets out).",
    ]
    done: set[str] = set()
    for setting in SETTINGS:
        section = setting.section
        indent = "  " if section else ""
        if section and section not in done:
            done.add(section)
            lines += ["", f"{section}:"]
        elif not section:
            lines.append("")
        default = project if setting.key == "project" else setting.default
        comment = f"{setting.meaning}. Default: {_yaml_value(setting.default)}"
        lines += [f"{indent}# {part}" for part in textwrap.wrap(comment, 110 - len(indent))]
        lines.append(f"{indent}{setting.name}: {_yaml_value(default)}")
        if setting.example:
            lines.append(f"{indent}#   {setting.example}")
    return "\n".join(lines) + "\n"


def _yaml_value(value: Any) -> str:
    """``value`` as YAML on one line (every default is a scalar or an empty mapping)."""
    return str(yaml.safe_dump({"v": value}, default_flow_style=False, width=1000)).strip()[len("v: ") :]
