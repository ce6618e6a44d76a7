"""Finding definitions in a repository's ``definitions/`` folder.

Each ``*.py`` file (not starting with ``_``) is imported as its own module. Only objects *defined in that
module* are taken, so importing a view from another file does not define it twice; the object's name is
the variable it is bound to, unless it was given ``name=...``. An import error stops discovery with the file
and line: it is never logged and skipped.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from features.definitions import (
    Definition,
    Entity,
    FeatureService,
    FeatureView,
    OnDemandFeatureView,
    RequestSource,
    SqlSource,
)
from features.errors import DefinitionError

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
    _install_finder(root)
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
                    f"duplicate {key[0]} name '{name}' (also defined at {seen_names[key]})", location=where
                )
            seen_names[key] = where
            found.append((name, obj))
    return Discovered(tuple(found), root)


def import_definitions_module(root: str | os.PathLike[str], module_name: str) -> ModuleType:
    """Import one module of a definitions folder afresh (as discovery does), e.g. ``definitions.checks``
    from ``<repo>/definitions``; an import error names the file and line."""
    folder = Path(root).resolve()
    package = _install_finder(folder)
    if module_name != package and not module_name.startswith(package + "."):
        raise DefinitionError(f"module '{module_name}' is not in the definitions folder {folder} ('{package}.*')")
    path = folder.joinpath(*module_name.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return _import_file(path, folder)


def _kind_name(obj: Definition) -> str:
    # Feature views and on-demand views share one namespace: both are named in "view:feature" references.
    kinds: dict[type, str] = {
        Entity: "entity",
        SqlSource: "source",
        RequestSource: "request source",
        FeatureView: "feature view",
        OnDemandFeatureView: "feature view",
        FeatureService: "feature service",
    }
    return kinds[type(obj)]


class _RepositoryFinder(importlib.abc.MetaPathFinder):
    """Resolves ``<folder>`` and ``<folder>.*`` to the files of one definitions folder.

    It sits first on ``sys.meta_path`` so that a repository's ``definitions`` package wins over any other of
    the same name (the installed example, an editable install's finder, another repository imported before).
    """

    def __init__(self, package: str, root: Path) -> None:
        self.package = package
        self.root = root

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname == self.package:
            return self._package_spec(fullname, self.root)
        if not fullname.startswith(self.package + "."):
            return None
        candidate = self.root.joinpath(*fullname.split(".")[1:])
        if candidate.is_dir():
            return self._package_spec(fullname, candidate)
        if candidate.with_suffix(".py").is_file():
            return importlib.util.spec_from_file_location(fullname, candidate.with_suffix(".py"))
        return None

    @staticmethod
    def _package_spec(fullname: str, folder: Path) -> ModuleSpec | None:
        init = folder / "__init__.py"
        if init.is_file():
            return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(folder)])
        spec = ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        return spec


def _install_finder(root: Path) -> str:
    """Route imports of the definitions package to ``root``; forget modules imported from elsewhere."""
    package = root.name
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _RepositoryFinder) and f.package == package)]
    sys.meta_path.insert(0, _RepositoryFinder(package, root))
    # Import afresh every time: the files may have changed since the last discovery.
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    return package


def _import_file(path: Path, root: Path) -> ModuleType:
    """Import ``root/a/b.py`` as module ``<root name>.a.b``, so that definition files import each other
    (``from definitions.entities import card``) as the same objects discovery sees."""
    relative = path.relative_to(root).with_suffix("")
    module_name = ".".join((root.name, *relative.parts))
    try:
        return importlib.import_module(module_name)
    except (DefinitionError, KeyboardInterrupt):
        raise
    except BaseException as exc:
        # SystemExit (sys.exit(0) would make 'plan' and 'apply' exit 0 having applied nothing), RecursionError,
        # GeneratorExit...: all are errors of this file. Only Ctrl-C stays an interruption.
        sys.modules.pop(module_name, None)
        line = _line_in(path, exc)
        raise DefinitionError(_import_failure(exc), location=f"{path}:{line}") from exc


def _import_failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return (
            f"this file called sys.exit({exc.code!r}) (SystemExit) while it was imported; a definition file "
            f"must not exit: raise an exception to stop plan and apply"
        )
    return f"importing this file failed: {type(exc).__name__}: {exc}"


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
        if attr.startswith("_") or not isinstance(obj, Definition):
            continue
        if Path(obj.location.file).resolve() != path:
            continue  # imported from another definitions file: defined there, not here
        if id(obj) in names_by_id:
            raise DefinitionError(
                f"the same definition is bound to two names, '{names_by_id[id(obj)]}' and '{attr}'; keep one",
                location=str(obj.location),
            )
        names_by_id[id(obj)] = attr
        yield (obj.name or attr), obj
