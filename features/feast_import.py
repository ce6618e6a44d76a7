"""``skewless import-feast PATH``: a Feast feature repository as skewless definition files.

Feast stays out of skewless's install: :mod:`features.feast_export` runs in an interpreter that has Feast (the
current one if it can import feast, else ``bench/.feast-venv``), loads the repository with Feast's own parser and
prints JSON; :func:`convert` turns that JSON into files and never imports Feast. What has no skewless equivalent
is listed with the reason, never dropped silently:

- entities, feature views (entities, field types, TTL, online flag, source), feature services (their
  projections) and PostgreSQL sources (table or query, timestamp and created columns) map one to one; a Feast
  ``field_mapping`` becomes the feature's expression (the source column).
- other sources (files, BigQuery, ...) become a :class:`SqlSource` over a table named after the source, in the
  ``feast_sources`` connection: the view is converted, and listed as needing its data in that SQL table.
- on-demand views in pandas mode whose function reads only pandas and numpy names are carried as written, in
  an ``@on_demand_function(mode="pandas")`` that hands them the frame Feast would (columns named by field, and
  ``view__feature``); other modes, or functions that read other names of their module, are listed.
- field types skewless lacks (lists, bytes, maps, JSON, structs...) are listed; their views keep the other
  features.
"""

from __future__ import annotations

import argparse
import json
import keyword
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.console import console, table
from features.errors import ConfigError, DefinitionError

# Feast field types (str(dtype)) and entity value types (ValueType names) -> skewless type names.
FIELD_TYPES = {
    "Int32": "Int64",
    "Int64": "Int64",
    "Float32": "Float64",
    "Float64": "Float64",
    "String": "String",
    "Bool": "Bool",
    "UnixTimestamp": "Timestamp",
}
VALUE_TYPES = {
    "INT32": "Int64",
    "INT64": "Int64",
    "FLOAT": "Float64",
    "DOUBLE": "Float64",
    "STRING": "String",
    "BOOL": "Bool",
    "UNIX_TIMESTAMP": "Timestamp",
}
POSTGRES_SOURCE = "PostgreSQLSource"
POSTGRES_CONNECTION = "feast_postgres"
PLACEHOLDER_CONNECTION = "feast_sources"
EXPORT_SCRIPT = Path(__file__).with_name("feast_export.py")
FEAST_VENV_PYTHON = Path(__file__).resolve().parents[1] / "bench" / ".feast-venv" / "bin" / "python"


@dataclass(frozen=True, slots=True)
class NotConverted:
    """One thing of the Feast repository with no skewless equivalent: ``item`` (``kind name`` or
    ``kind name: detail``) and why."""

    item: str
    reason: str


@dataclass
class Conversion:
    """The generated files (path relative to the output folder -> text), and what was not converted."""

    files: dict[str, str] = field(default_factory=dict)
    not_converted: list[NotConverted] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, item: str, reason: str) -> None:
        self.not_converted.append(NotConverted(item, reason))


# -- reading the Feast repository (in Feast's interpreter) -----------------------------------------------------


def feast_python(explicit: str | None = None) -> str:
    """The interpreter that reads the Feast repository: ``explicit``, else this one when it has feast, else the
    bench's Feast venv; a ConfigError says how to get one."""
    if explicit:
        return explicit
    try:
        import importlib.util

        if importlib.util.find_spec("feast") is not None:
            return sys.executable
    except (ImportError, ValueError):
        pass
    if FEAST_VENV_PYTHON.exists():
        return str(FEAST_VENV_PYTHON)
    raise ConfigError(
        "no Python with Feast found: skewless does not install Feast. Give one with --feast-python "
        "(the interpreter of your Feast project), or create bench/.feast-venv with 'bash bench/feast-venv.sh'"
    )


def export_feast_repo(path: str | os.PathLike[str], python: str) -> dict[str, Any]:
    """The Feast repository at ``path`` as JSON, read by Feast itself (:mod:`features.feast_export`)."""
    repo = Path(path).resolve()
    if not (repo / "feature_store.yaml").exists():
        raise ConfigError(f"{repo} is not a Feast feature repository: it has no feature_store.yaml")
    try:
        done = subprocess.run(
            [python, str(EXPORT_SCRIPT), str(repo)], capture_output=True, text=True, cwd=repo, timeout=600
        )
    except OSError as exc:
        raise ConfigError(f"cannot run {python}: {exc}") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise DefinitionError(f"Feast could not load the repository at {repo}:\n{done.stderr.strip()[-3000:]}")
    exported: dict[str, Any] = json.loads(lines[-1])
    return exported


# -- converting (no Feast here) ---------------------------------------------------------------------------------


def convert(exported: dict[str, Any], *, origin: str = "") -> Conversion:
    """Skewless definition files for the Feast repository ``exported`` (what :func:`export_feast_repo` gave)."""
    out = Conversion(notes=list(exported.get("notes", [])))
    names = _Names()
    entities = _entities(exported, out, names)
    views = _views(exported, entities, out, names)
    on_demand = _on_demand_views(exported, views, out, names)
    services = _services(exported, views, on_demand, out, names)
    header = f"Imported from the Feast repository {origin} by 'skewless import-feast'." if origin else ""
    out.files["definitions/__init__.py"] = f'"""{header or "Imported from Feast by skewless import-feast."}"""\n'
    out.files["definitions/entities.py"] = _module("Entities imported from Feast.", [], entities.code)
    out.files["definitions/views.py"] = _module(
        "Feature views imported from Feast, and their sources.", views.imports, views.code
    )
    if on_demand.code:
        out.files["definitions/on_demand.py"] = _module(
            "On-demand feature views imported from Feast: their pandas functions, carried as written.",
            on_demand.imports,
            on_demand.code,
        )
    if services.code:
        out.files["definitions/services.py"] = _module(
            "Feature services imported from Feast.", services.imports, services.code
        )
    out.files["skewless.yaml"] = _config(exported, views.connections)
    return out


class _Names:
    """Module-level names handed out so far: a skewless name is its variable's name, so each must be unique."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, wanted: str, fallback: str | None = None) -> str | None:
        for candidate in (wanted, fallback):
            if candidate and _usable(candidate) and candidate not in self.used:
                self.used.add(candidate)
                return candidate
        return None


def _usable(name: str) -> bool:
    """Whether ``name`` can be a definition's variable (skewless names a definition after its variable)."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")


@dataclass
class _Part:
    code: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    types: set[str] = field(default_factory=set)
    by_feast_name: dict[str, Any] = field(default_factory=dict)  # Feast name -> what was made of it
    connections: set[str] = field(default_factory=set)


def _entities(exported: dict[str, Any], out: Conversion, names: _Names) -> _Part:
    part = _Part()
    key_types: dict[str, str] = {}  # from Feast's inference; plain feature views first (label views differ)
    for view in sorted(exported["feature_views"], key=lambda v: v["kind"] != "FeatureView"):
        for column in view["entity_columns"]:
            key_types.setdefault(column["name"], column["dtype"])
    for entity in exported["entities"]:
        if entity["name"].startswith("__"):  # Feast's dummy entity of entity-less views
            continue
        key = entity["join_key"]
        dtype = VALUE_TYPES.get(entity["value_type"]) or FIELD_TYPES.get(key_types.get(key, ""))
        if dtype is None:
            feast_type = key_types.get(key) or entity["value_type"]
            out.skip(f"entity {entity['name']}", f"join key {key} has type {feast_type}, which skewless lacks")
            continue
        variable = names.take(entity["name"])
        if variable is None:
            out.skip(f"entity {entity['name']}", "its name is not a Python identifier, or is taken")
            continue
        part.types.add(dtype)
        part.by_feast_name[entity["name"]] = variable
        part.code.append(f"{variable} = Entity(join_keys={{{_q(key)}: {dtype}}}{_description(entity['description'])})")
    part.code.insert(0, f"from features import Entity, {', '.join(sorted(part.types))}\n" if part.types else "")
    return part


def _views(exported: dict[str, Any], entities: _Part, out: Conversion, names: _Names) -> _Part:
    part = _Part(imports=["from datetime import timedelta", "", "from definitions import entities"])
    sources: dict[str, str] = {}  # Feast source name -> variable
    types = {"Feature", "FeatureView", "SqlSource"}
    for view in exported["feature_views"]:
        label = f"feature view {view['name']}"
        if view["kind"] != "FeatureView":
            out.skip(label, f"a Feast {view['kind']}: skewless has no equivalent")
            continue
        keys = [e for e in view["entities"] if not e.startswith("__")]
        missing = [e for e in keys if e not in entities.by_feast_name]
        if not keys or missing:
            reason = "it has no entities" if not keys else f"its entities {', '.join(missing)} were not converted"
            out.skip(label, reason)
            continue
        source = _batch_source(view["source"], label, out)
        if source is None:
            continue
        features = []
        for feature in view["features"]:
            dtype = FIELD_TYPES.get(feature["dtype"])
            if dtype is None:
                out.skip(f"{label}: feature {feature['name']}", f"type {feature['dtype']} has no skewless type")
                continue
            types.add(dtype)
            column = {v: k for k, v in source["field_mapping"].items()}.get(feature["name"])
            expr = f", expr={_q(column)}" if column else ""
            features.append(
                (
                    feature["name"],
                    f"Feature({_q(feature['name'])}, {dtype}{expr}{_description(feature['description'])})",
                )
            )
        if not features:
            out.skip(label, "none of its features has a skewless type")
            continue
        variable = names.take(view["name"])
        if variable is None:
            out.skip(label, "its name is not a Python identifier, or is taken")
            continue
        source_variable = sources.get(source["name"])
        if source_variable is None:
            source_variable = names.take(source["name"], f"{view['name']}_source") or f"{variable}_source"
            names.used.add(source_variable)
            sources[source["name"]] = source_variable
            part.code.append(_sql_source(source_variable, source, part, out))
        ttl = view["ttl_seconds"]
        lines = [
            f"{variable} = FeatureView(",
            f"    entities=[{', '.join(f'entities.{entities.by_feast_name[e]}' for e in keys)}],",
            f"    source={source_variable},",
            f"    ttl={_timedelta(ttl) if ttl else None},",  # Feast's ttl 0 or None: never expires
            "    features=[",
            *(f"        {code}," for _, code in features),
            "    ],",
        ]
        if not view["online"]:
            lines.append("    online=False,")
        if view["description"]:
            lines.append(f"    description={_q(view['description'])},")
        part.code.append("\n".join([*lines, ")"]))
        part.by_feast_name[view["name"]] = (variable, [name for name, _ in features])
    part.imports.append(f"from features import {', '.join(sorted(types))}")
    return part


def _batch_source(source: dict[str, Any] | None, label: str, out: Conversion) -> dict[str, Any] | None:
    """The source a view reads its history from: a push or stream source's batch source."""
    if source is None:
        out.skip(label, "it has no source")
        return None
    if source.get("batch_source") is not None:
        out.skip(
            f"{label}: source {source['name']}",
            f"a Feast {source['kind']}: the view reads its batch source {source['batch_source']['name']} instead",
        )
        return _batch_source(source["batch_source"], label, out)
    return source


def _sql_source(variable: str, source: dict[str, Any], part: _Part, out: Conversion) -> str:
    timestamp = source["timestamp_field"] or "event_timestamp"
    if source["kind"] == POSTGRES_SOURCE and (source.get("table") or source.get("query")):
        part.connections.add(POSTGRES_CONNECTION)
        what = f"table={_q(source['table'])}" if source.get("table") else f"query={_query(source['query'])}"
        connection = POSTGRES_CONNECTION
    else:
        part.connections.add(PLACEHOLDER_CONNECTION)
        where = source.get("path") or source.get("table") or source.get("query") or source["name"]
        out.skip(
            f"source {source['name']}",
            f"a Feast {source['kind']} ({where}): needs its data in the SQL table {_q(variable)} "
            f"of connection '{PLACEHOLDER_CONNECTION}'",
        )
        what = f"table={_q(variable)}"
        connection = PLACEHOLDER_CONNECTION
    created = f"\n    created={_q(source['created_timestamp_column'])}," if source["created_timestamp_column"] else ""
    arguments = f"    connection={_q(connection)},\n    {what},\n    timestamp={_q(timestamp)},{created}"
    return f"{variable} = SqlSource(\n{arguments}\n)"


def _query(query: str) -> str:
    return '"""\n' + textwrap.indent(textwrap.dedent(query).strip(), "        ") + '\n    """'


def _on_demand_views(exported: dict[str, Any], views: _Part, out: Conversion, names: _Names) -> _Part:
    part = _Part(imports=["import pandas as pd"])
    carried_imports: set[str] = set()
    types = {"on_demand_function"}
    request_sources: dict[str, str] = {}
    for view in exported["on_demand_feature_views"]:
        label = f"on-demand view {view['name']}"
        reason = _not_carried(view, views)
        outputs = {}
        for feature in view["features"]:
            dtype = FIELD_TYPES.get(feature["dtype"])
            if dtype is None:
                out.skip(f"{label}: feature {feature['name']}", f"type {feature['dtype']} has no skewless type")
            else:
                outputs[feature["name"]] = dtype
        request_types = {f["name"]: FIELD_TYPES.get(f["dtype"]) for s in view["request_sources"] for f in s["fields"]}
        odd = [
            f"{f['name']} ({f['dtype']})"
            for s in view["request_sources"]
            for f in s["fields"]
            if f["dtype"] not in FIELD_TYPES
        ]
        if reason is None and odd:
            reason = f"request field(s) {', '.join(odd)} have no skewless type"
        if reason is None and not outputs:
            reason = "none of its features has a skewless type"
        variable = names.take(view["name"]) if reason is None else None
        if reason is None and variable is None:
            reason = "its name is not a Python identifier, or is taken"
        if reason is not None or variable is None:
            out.skip(label, reason or "")
            continue
        sources, inputs = [], []
        for source in view["request_sources"]:
            if source["name"] not in request_sources:
                name = names.take(source["name"], f"{view['name']}_request") or f"{variable}_request"
                names.used.add(name)
                request_sources[source["name"]] = name
                schema = ", ".join(f"{_q(f['name'])}: {request_types[f['name']]}" for f in source["fields"])
                part.code.append(f"{name} = RequestSource(schema={{{schema}}})")
                types.add("RequestSource")
                types.update(t for t in request_types.values() if t)
            sources.append(request_sources[source["name"]])
            inputs += [f"{request_sources[source['name']]}.{f['name']}" for f in source["fields"]]
        for feast_view in view["view_sources"]:
            name, features = views.by_feast_name[feast_view]
            sources.append(f"views.{name}")
            inputs += [f"{name}.{f}" for f in features]
        types.update(outputs.values())
        function = view["function"]
        carried_imports.update(function["imports"])
        inner = f"_feast_{variable}"
        part.code.append(f"# Feast's function, as written in the Feast repository.\n{_renamed(function, inner)}")
        columns = ", ".join(_q(n) for n in outputs)
        description = view["description"] or f"Feast's on-demand view {view['name']}."
        part.code.append(
            "\n".join(
                [
                    "@on_demand_function(",
                    f"    sources=[{', '.join(sources)}],",
                    "    inputs=[",
                    *(f"        {_q(i)}," for i in inputs),
                    "    ],",
                    f"    outputs={{{', '.join(f'{_q(n)}: {t}' for n, t in outputs.items())}}},",
                    '    mode="pandas",',
                    f"    description={_q(description)},",
                    ")",
                    f"def {variable}(frame: pd.DataFrame) -> pd.DataFrame:",
                    f"    return {inner}(_feast_frame(frame))[[{columns}]]",
                ]
            )
        )
        part.by_feast_name[view["name"]] = (variable, list(outputs))
        if view["write_to_online_store"]:
            out.notes.append(
                f"on-demand view {view['name']}: Feast computes it when rows are written (write_to_online_store); "
                "skewless computes it at each lookup, from the request and the stored inputs"
            )
    if part.by_feast_name:
        part.code.insert(0, _FEAST_FRAME)
        uses_views = any(v["view_sources"] for v in exported["on_demand_feature_views"])
        # "import x" lines first, then "from x import y", as isort orders them.
        part.imports = sorted(
            carried_imports | {"import pandas as pd"}, key=lambda line: (line.startswith("from"), line)
        )
        part.imports += ["", *(["from definitions import views"] if uses_views else [])]
        part.imports.append(f"from features import {', '.join(sorted(types))}")
    else:
        part.code = []
    return part


_FEAST_FRAME = '''def _feast_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame a Feast pandas function reads: a column per input named by its field, and 'view__field'."""
    short = frame.rename(columns=lambda column: column.split(".", 1)[1])
    full = frame.rename(columns=lambda column: column.replace(".", "__", 1))
    return pd.concat([short.loc[:, ~short.columns.duplicated()], full], axis=1)'''


def _not_carried(view: dict[str, Any], views: _Part) -> str | None:
    """Why an on-demand view cannot be carried, or None."""
    function = view["function"]
    if view["mode"] != "pandas":
        return f"mode {_q(view['mode'])}: only pandas functions are carried (skewless runs pandas or arrow functions)"
    if function is None or not function["source"]:
        return "Feast has no source code of its function"
    if function["foreign_names"]:
        return f"its function reads {', '.join(function['foreign_names'])} from its module, beyond pandas and numpy"
    missing = [v for v in view["view_sources"] if v not in views.by_feast_name]
    if missing:
        return f"its source view(s) {', '.join(missing)} were not converted"
    return None


def _renamed(function: dict[str, Any], new_name: str) -> str:
    """The function's source, its decorators dropped and its name changed to ``new_name``."""
    import ast

    source = textwrap.dedent(function["source"])
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
    lines = source.splitlines()[node.lineno - 1 : node.end_lineno]
    lines[0] = lines[0].replace(f"def {function['name']}(", f"def {new_name}(", 1)
    return "\n".join(lines)


def _services(exported: dict[str, Any], views: _Part, on_demand: _Part, out: Conversion, names: _Names) -> _Part:
    part = _Part()
    used_modules: set[str] = set()
    for service in exported["feature_services"]:
        label = f"feature service {service['name']}"
        selected = []
        for projection in service["projections"]:
            found = views.by_feast_name.get(projection["view"])
            module = "views"
            if found is None:
                found, module = on_demand.by_feast_name.get(projection["view"]), "on_demand"
            if projection["alias"]:
                out.skip(f"{label}: {projection['view']} as {projection['alias']}", "renamed projections (with_name)")
                continue
            if found is None:
                out.skip(f"{label}: {projection['view']}", "the view was not converted")
                continue
            variable, available = found
            wanted = [f for f in projection["features"] if f in available]
            for lost in (f for f in projection["features"] if f not in available):
                out.skip(f"{label}: {projection['view']}:{lost}", "the feature was not converted")
            if not wanted:
                continue
            used_modules.add(module)
            chosen = "" if wanted == available else f".select({', '.join(_q(f) for f in wanted)})"
            selected.append(f"        {module}.{variable}{chosen},")
        variable = names.take(service["name"])
        if not selected or variable is None:
            out.skip(label, "none of its features was converted" if not selected else "its name is not usable")
            continue
        description = f"\n    description={_q(service['description'])}," if service["description"] else ""
        part.code.append(
            "\n".join([f"{variable} = FeatureService(", "    features=[", *selected, f"    ],{description}", ")"])
        )
    part.imports = [f"from definitions import {', '.join(sorted(used_modules))}", "from features import FeatureService"]
    return part


def _module(docstring: str, imports: Iterable[str], code: list[str]) -> str:
    head = "\n".join(imports).strip()
    body = "\n\n\n".join(c.strip() for c in code if c.strip())
    return f'"""{docstring}"""\n\n' + (f"{head}\n\n" if head else "") + (f"\n{body}\n" if head else f"{body}\n")


def _config(exported: dict[str, Any], connections: set[str]) -> str:
    lines = [
        "# Written by 'skewless import-feast' from the Feast repository's feature_store.yaml.",
        f"project: {exported['project']}",
        "registry: sqlite:///.skewless/registry.db",
        "offline:",
        "  path: .skewless/offline",
        "online:",
        "  url: ${SKEWLESS_ONLINE_URL:-embedded}",
        "definitions: definitions",
    ]
    if connections:
        lines.append("connections:")
    if POSTGRES_CONNECTION in connections:
        lines.append(f"  {POSTGRES_CONNECTION}: {_postgres_url(exported['offline_store'])}")
    if PLACEHOLDER_CONNECTION in connections:
        lines.append("  # Feast's file (and other non-SQL) sources: load each into the table of its SqlSource here.")
        lines.append(f"  {PLACEHOLDER_CONNECTION}: ${{FEAST_SOURCES_URL:-sqlite:///.skewless/data/feast_sources.db}}")
    return "\n".join(lines) + "\n"


def _postgres_url(offline: dict[str, Any]) -> str:
    """The PostgreSQL offline store's URL; its password stays out of the file (``$FEAST_POSTGRES_PASSWORD``)."""
    if offline.get("type") != "postgres":
        return "${FEAST_POSTGRES_URL}  # Feast's offline store is not PostgreSQL: give the sources' database"
    user = offline.get("user") or ""
    password = ":${FEAST_POSTGRES_PASSWORD}" if offline.get("password") else ""
    at = f"{user}{password}@" if user else ""
    return (
        f"postgresql://{at}{offline.get('host', 'localhost')}:{offline.get('port', 5432)}/{offline.get('database', '')}"
    )


def _timedelta(seconds: int) -> str:
    """``timedelta(days=2)`` rather than ``timedelta(seconds=172800)``: the unit a person wrote."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds % size == 0:
            return f"timedelta({unit}={seconds // size})"
    return f"timedelta(seconds={seconds})"


def _q(value: Any) -> str:
    """A Python literal of a string (or list of strings), double-quoted as ruff-format writes them."""
    return json.dumps(value, ensure_ascii=False)


def _description(text: str | None) -> str:
    return f", description={_q(text)}" if text else ""


# -- writing, and the command ----------------------------------------------------------------------------------


def write(conversion: Conversion, out_dir: Path) -> list[Path]:
    """Write the files under ``out_dir``, refusing to overwrite existing definitions."""
    taken = [out_dir / p for p in conversion.files if (out_dir / p).exists()]
    if taken:
        raise ConfigError(f"{out_dir} already holds {', '.join(str(p) for p in taken)}; choose an empty --out")
    written = []
    for relative, text in conversion.files.items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def register(subparsers: Any) -> None:
    """Add ``import-feast`` to the CLI's subcommands (the ``skewless.commands`` entry point)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "import-feast", help="write skewless definitions equivalent to a Feast feature repository"
    )
    p.add_argument("path", help="the Feast feature repository (the folder of its feature_store.yaml)")
    p.add_argument("--out", default="skewless_from_feast", help="folder to write (default: ./skewless_from_feast)")
    p.add_argument("--feast-python", help="a Python that has Feast (default: this one, else bench/.feast-venv)")
    p.add_argument("--json", action="store_true", help="print what was written and not converted as JSON")
    p.set_defaults(handler=cmd_import_feast)


def cmd_import_feast(args: argparse.Namespace) -> int:
    exported = export_feast_repo(args.path, feast_python(args.feast_python))
    conversion = convert(exported, origin=str(Path(args.path).resolve()))
    written = write(conversion, Path(args.out))
    if args.json:
        print(
            json.dumps(
                {
                    "written": [str(p) for p in written],
                    "not_converted": [{"item": n.item, "reason": n.reason} for n in conversion.not_converted],
                    "notes": conversion.notes,
                },
                indent=2,
            )
        )
        return 0
    console.print(f"wrote {len(written)} files under {args.out}: {', '.join(str(p) for p in written)}")
    for note in conversion.notes:
        console.print(f"note: {note}")
    if conversion.not_converted:
        console.print(
            table(
                f"not converted ({len(conversion.not_converted)})",
                ["item", "why"],
                [[n.item, n.reason] for n in conversion.not_converted],
            )
        )
    console.print(f"next: cd {args.out} && skewless plan")
    return 0
