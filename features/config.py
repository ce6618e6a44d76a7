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
  url: embedded                                # or redis://host:6379/0, redis+cluster://h1:7000,h2:7000
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
# The served-feature log (serving.log): off by default; a worker flushes its queue every second (the most a crash
# of the worker loses) and keeps at most 10,000 lookups waiting (then drops, and counts, rather than grow).
DEFAULT_LOG_FLUSH_SECONDS = 1.0
DEFAULT_LOG_QUEUE_SIZE = 10_000
DEFAULT_LOG_RETENTION_DAYS = 30
TOKEN_KEYS = ("hash", "services", "push")  # the keys of one serving.tokens entry


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of ``skewless.yaml``: its dotted name, its default and what it means. :data:`SETTINGS` is the one
    list the reader checks keys against and ``skewless init`` writes the commented reference from."""

    key: str  # "offline.path": section "offline", key "path"; "serving.log.sample_rate": parent "serving.log"
    default: Any
    meaning: str
    example: str = ""  # for maps: one commented example entry

    @property
    def section(self) -> str | None:
        return self.key.split(".")[0] if "." in self.key else None

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    @property
    def parent(self) -> str:
        """The mapping the key is written in: "" (the top level), "serving", or "serving.log"."""
        return self.key.rpartition(".")[0]


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
        "the online store: embedded (a Redis-protocol server per repository, started on first use), "
        "redis://host:6379/0, or a Redis Cluster: redis+cluster://host:port,host:port",
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
        "rollback points kept per view (the live one included, at least 2): the runs 'skewless rollback' can go "
        "back to; a whole snapshot costs the bytes of its rows in the store, a run updated in place those of the "
        "rows it overwrote",
    ),
    Setting(
        "online.update_in_place",
        True,
        "true: a run writes only the entities whose latest row changed into the live snapshot (cost grows with the "
        "change, not the view), keeping the rows it overwrote so that 'skewless rollback' can undo it. false: every "
        "run that changed something publishes a whole new snapshot (every key)",
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
        "serving.log.sample_rate",
        0.0,
        "the share of answered lookups 'skewless serve' logs for 'skewless audit' (0 to 1; 0: no log)",
    ),
    Setting(
        "serving.log.services",
        {},
        "the sample rate of a feature service's lookups, overriding sample_rate for that service",
        "fraud_model: 1.0",
    ),
    Setting(
        "serving.log.flush_seconds",
        DEFAULT_LOG_FLUSH_SECONDS,
        "how often a serving worker writes its logged lookups to the landing folder: the most a crash loses",
    ),
    Setting(
        "serving.log.queue_size",
        DEFAULT_LOG_QUEUE_SIZE,
        "logged lookups a serving worker keeps waiting for a flush; beyond it lookups are answered, not logged "
        "(and counted)",
    ),
    Setting(
        "serving.log.retention_days",
        DEFAULT_LOG_RETENTION_DAYS,
        "days of the log 'skewless log land' keeps in the Delta table; older days are deleted",
    ),
    Setting(
        "serving.metrics",
        True,
        "serve GET /metrics (Prometheus text format: requests, latency, statuses served, snapshot ages, online "
        "store errors); it takes a token when tokens are configured",
    ),
    Setting(
        "connections",
        {},
        "source databases by name (SQLAlchemy URLs; relative SQLite paths are relative to this file)",
        "payments: postgresql://reader:${PGPASSWORD}@db/payments",
    ),
)
DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS}
SECTIONS = ("offline", "online", "serving", "serving.log")  # the keys that hold a mapping of settings
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


def _rate(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{source}: {key} must be a number from 0 to 1 (got {value!r}); 0: log nothing, 1: all")
    return float(value)


def _positive(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{source}: {key} must be a number of seconds above 0 (got {value!r})")
    return float(value)


def _service_rates(services: Any, source: str) -> dict[str, float]:
    """``serving.log.services``: feature service -> sample rate (the names are checked against the plan by the
    server, which reports unknown ones: the plan may change without the configuration)."""
    if not isinstance(services, dict):
        raise ConfigError(f"{source}: serving.log.services must map feature service names to rates from 0 to 1")
    return {str(name): _rate(rate, f"serving.log.services.{name}", source) for name, rate in services.items()}


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
    update_in_place: bool = DEFAULTS["online.update_in_place"]
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
    log_sample_rate: float = DEFAULTS["serving.log.sample_rate"]
    log_services: dict[str, float] = field(default_factory=dict)
    log_flush_seconds: float = DEFAULTS["serving.log.flush_seconds"]
    log_queue_size: int = DEFAULTS["serving.log.queue_size"]
    log_retention_days: int = DEFAULTS["serving.log.retention_days"]
    metrics: bool = DEFAULTS["serving.metrics"]

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
        served_log = (serving.get("log") or {}) if isinstance(serving, dict) else {}
        sections = (("offline", offline), ("online", online), ("serving", serving), ("serving.log", served_log))
        for section, values in sections:
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
            values = (
                served_log
                if key.startswith("serving.log.")
                else {"serving": serving, "online": online}.get(key.split(".")[0], offline)
            )
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
            update_in_place=_flag(online, "online.update_in_place", source),
            connections={str(k): str(v) for k, v in connections.items()},
            definitions=str(value("definitions")),
            serving_tokens=_tokens(serving.get("tokens") or {}, source),
            max_body_bytes=whole("serving.max_body_bytes", 1),
            max_entities=whole("serving.max_entities", 1),
            max_request_fields=whole("serving.max_request_fields", 1),
            log_sample_rate=_rate(served_log.get("sample_rate", 0.0), "serving.log.sample_rate", source),
            log_services=_service_rates(served_log.get("services") or {}, source),
            log_flush_seconds=_positive(
                served_log.get("flush_seconds", DEFAULT_LOG_FLUSH_SECONDS), "serving.log.flush_seconds", source
            ),
            log_queue_size=whole("serving.log.queue_size", 1),
            log_retention_days=whole("serving.log.retention_days", 1),
            metrics=_flag(serving, "serving.metrics", source),
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
    """Reject keys of the top level (``section`` None) or of a section (``serving``, ``serving.log``) that
    :data:`SETTINGS` does not list (a nested section is a key of its parent)."""
    prefix = f"{section}." if section else ""
    known = sorted({s.key[len(prefix) :].split(".")[0] for s in SETTINGS if s.key.startswith(prefix)})
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
        parent = setting.parent
        indent = "  " * (parent.count(".") + 1) if parent else ""
        if parent and parent not in done:
            done.add(parent)
            depth = parent.count(".")
            lines += ["", f"{'  ' * depth}{parent.rsplit('.', 1)[-1]}:"]
        elif not parent:
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


def _flag(values: dict[str, Any], key: str, source: str) -> bool:
    """A true/false setting (YAML's booleans only: "no" in quotes is a string, not false)."""
    value = values.get(key.rpartition(".")[2], DEFAULTS[key])
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be true or false, not {value!r}")
    return value
