"""Finding definitions in a repository's ``definitions/`` folder.

Each ``*.py`` file (not starting with ``_``) is imported as its own module. Only objects *defined in that
module* are taken, so importing a view from another file does not define it twice; the object's name is
the variable it is bound to, unless it was given ``name=...``. An import error stops discovery with the file
and line: it is never logged and skipped.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from features.definitions import Entity, FeatureService, FeatureView, SqlSource
from features.errors import DefinitionError

Definition = Entity | SqlSource | FeatureView | FeatureService
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Discovered:
    """The definitions found in a folder, with the names discovery gave them (by object identity)."""

    objects: tuple[tuple[str, Definition], ...]
    root: Path

    def where(self, obj: object) -> str:
        """``definitions/cards.py:12``: a definition's location relative to the repository, for the plan
        (so the plan does not depend on where the repository is checked out) and for messages."""
        location = obj.location  # type: ignore[attr-defined]
        try:
            return f"{Path(location.file).resolve().relative_to(self.root.parent)}:{location.line}"
        except ValueError:
            return str(location)

    def of_kind(self, kind: type[T]) -> Iterator[tuple[str, T]]:
        return ((n, o) for n, o in self.objects if isinstance(o, kind))

    def name_of(self, obj: Definition) -> str | None:
        for name, candidate in self.objects:
            if candidate is obj:
                return name
        return None


def discover(folder: str | os.PathLike[str]) -> Discovered:
    """Import every definition file under ``folder`` and collect its definitions."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise DefinitionError(f"definitions folder {root} does not exist")
    # Import afresh every time: the files may have changed, or a folder of the same name (another repository,
    # the installed example) may have been imported before.
    for name in [m for m in sys.modules if m == root.name or m.startswith(root.name + ".")]:
        del sys.modules[name]
    found: list[tuple[str, Definition]] = []
    seen_names: dict[tuple[str, str], str] = {}
    for path in sorted(root.rglob("*.py")):
        if any(part.startswith(("_", ".")) for part in path.relative_to(root).parts):
            continue
        module = _import_file(path, root)
        for name, obj in _defined_in(module, path):
            key = (_kind_name(obj), name)
            where = str(obj.location)
            if key in seen_names:
                raise DefinitionError(
                    f"duplicate {key[0]} name '{name}' (also defined at {seen_names[key]})", location=where)
            seen_names[key] = where
            found.append((name, obj))
    return Discovered(tuple(found), root)


def _kind_name(obj: Definition) -> str:
    return {Entity: "entity", SqlSource: "source", FeatureView: "feature view",
            FeatureService: "feature service"}[type(obj)]


def _import_file(path: Path, root: Path) -> ModuleType:
    """Import ``root/a/b.py`` as module ``<root name>.a.b`` with the repository on ``sys.path``, so that
    definition files import each other (``from definitions.entities import card``) as the same objects."""
    package = root.name
    relative = path.relative_to(root).with_suffix("")
    module_name = ".".join((package, *relative.parts))
    repo = str(root.parent)
    if not sys.path or sys.path[0] != repo:
        sys.path.insert(0, repo)
    try:
        return importlib.import_module(module_name)
    except DefinitionError:
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        line = _line_in(path, exc)
        raise DefinitionError(f"importing this file failed: {type(exc).__name__}: {exc}",
                              location=f"{path}:{line}") from exc


def _line_in(path: Path, exc: BaseException) -> int:
    """The deepest traceback line inside ``path`` (for SyntaxError, the error's own line)."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return exc.lineno
    line = 0
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path and frame.lineno:
            line = frame.lineno
    return line


def _defined_in(module: ModuleType, path: Path) -> Iterator[tuple[str, Definition]]:
    names_by_id: dict[int, str] = {}
    for attr, obj in vars(module).items():
        if attr.startswith("_") or not isinstance(obj, Entity | SqlSource | FeatureView | FeatureService):
            continue
        if Path(obj.location.file).resolve() != path:
            continue  # imported from another definitions file: defined there, not here
        if id(obj) in names_by_id:
            raise DefinitionError(f"the same definition is bound to two names, "
                                  f"'{names_by_id[id(obj)]}' and '{attr}'; keep one", location=str(obj.location))
        names_by_id[id(obj)] = attr
        yield (obj.name or attr), obj
