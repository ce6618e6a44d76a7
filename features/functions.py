"""Plain-Python on-demand functions: their source fingerprint, and loading them by name from a plan.

The plan records each function by module and qualified name with a hash of its source text
(:func:`source_fingerprint`). Serving and training sets import it by that name (from the repository's
definitions folder, through the same import machinery as discovery) and refuse it when its source no longer
hashes to the plan's: the code that would run is not the code the plan was compiled from.

>>> loader = FunctionLoader("path/to/repo/definitions")                  # doctest: +SKIP
>>> functions = loader.functions_for(plan)   # {on-demand view name: function}, checked   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import linecache
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from features.errors import DefinitionError, FunctionLoadError
from features.plan import FunctionPlan, Plan

__all__ = ["FunctionLoadError", "FunctionLoader", "resolve_qualname", "source_fingerprint"]


def source_fingerprint(function: Callable[..., Any]) -> str:
    """A short hash of the function's source text (``inspect.getsource``): editing the function changes it,
    moving it within its file does not. Raises OSError or TypeError when the source cannot be read."""
    source = inspect.getsource(function)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def resolve_qualname(module: ModuleType, qualname: str) -> Any:
    """The object ``module.<qualname>``, or None. A name bound to the view ``@on_demand_function`` made
    resolves to that view's function."""
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    function = getattr(obj, "function", None)
    if function is not None and callable(function) and not callable(obj):
        return function
    return obj


class FunctionLoader:
    """Imports the functions of a plan's on-demand views and checks them against their fingerprints.

    ``definitions`` is the repository's definitions folder: modules under it (``definitions.checks``) are
    imported from there afresh, as discovery does; other modules through the normal import system. Results
    are cached per plan fingerprint.
    """

    def __init__(
        self,
        definitions: str | os.PathLike[str] | None = None,
        *,
        kept_sources: Callable[[str], tuple[str, str] | None] | None = None,
    ) -> None:
        self.definitions = None if definitions is None else Path(definitions).resolve()
        #: The module text a function was applied with, by its source fingerprint (the registry's): a function
        #: whose file changed since is loaded from there (a training contract's earlier version).
        self.kept_sources = kept_sources
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, bool], dict[str, Callable[..., Any]]] = {}
        # skips hashing the same plan: (plan, applied, its functions)
        self._last: tuple[Plan, bool, dict[str, Callable[..., Any]]] | None = None

    def functions_for(self, plan: Plan, *, applied: bool = False) -> dict[str, Callable[..., Any]]:
        """``{view name: function}`` for every function view of ``plan``; :class:`FunctionLoadError` when
        one cannot be imported or its source changed. ``applied``: a function whose file changed since runs as
        it was applied, from the text the registry kept (a training contract's earlier plan); without it, the
        live plan's functions must be the files' own (an edited file is refused until it is applied)."""
        last = self._last
        if last is not None and last[0] is plan and last[1] == applied:
            return last[2]
        key = (plan.fingerprint, applied)
        with self._lock:
            cached = self._cache.get(key)
            if cached is None:
                fresh: dict[str, ModuleType] = {}
                cached = {
                    view.name: self._load(view.name, view.function, fresh, applied)
                    for view in plan.on_demand_views
                    if view.function is not None
                }
                self._cache[key] = cached
            self._last = (plan, applied, cached)
            return cached

    def load(self, view: str, function: FunctionPlan) -> Callable[..., Any]:
        """One function, checked against its plan."""
        with self._lock:
            return self._load(view, function, {}, False)

    def _load(
        self, view: str, function: FunctionPlan, fresh: dict[str, ModuleType], applied: bool
    ) -> Callable[..., Any]:
        label = f"on-demand function '{function}' of view '{view}'"
        try:
            module = fresh.get(function.module) or self._import(function.module)
        except (DefinitionError, ImportError) as exc:
            raise FunctionLoadError(f"cannot import the {label}: {exc}") from exc
        fresh[function.module] = module
        found = resolve_qualname(module, function.qualname)
        if found is None or not callable(found):
            raise FunctionLoadError(f"cannot find the {label}: module '{function.module}' has no '{function.qualname}'")
        try:
            current = source_fingerprint(found)
        except (OSError, TypeError) as exc:
            raise FunctionLoadError(f"cannot read the source of the {label}: {exc}") from exc
        if current != function.source_fingerprint:
            kept = self._load_kept(function) if applied else None
            if kept is not None:
                return kept
            where = getattr(module, "__file__", None) or function.module
            raise FunctionLoadError(
                f"the {label} changed since the plan was compiled (source fingerprint {current}, plan has "
                f"{function.source_fingerprint}; {where}): run 'skewless apply' to serve the new code, or "
                f"deploy the code the plan was applied from"
            )
        return found

    def _load_kept(self, function: FunctionPlan) -> Callable[..., Any] | None:
        """The function as it was applied, from the module text kept for its fingerprint, run as a module of its
        own (its imports resolve as the current module's do); None when none was kept or it does not load."""
        kept = self.kept_sources(function.source_fingerprint) if self.kept_sources is not None else None
        if kept is None:
            return None
        _, text = kept
        filename = f"<skewless: {function.module} as applied, function {function.source_fingerprint}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)  # for inspect.getsource
        module = ModuleType(function.module)
        module.__file__ = filename
        try:
            exec(compile(text, filename, "exec"), module.__dict__)
            found = resolve_qualname(module, function.qualname)
            if found is not None and callable(found) and source_fingerprint(found) == function.source_fingerprint:
                return found
        except Exception:
            return None
        return None

    def _import(self, module: str) -> ModuleType:
        if self.definitions is not None and (
            module == self.definitions.name or module.startswith(self.definitions.name + ".")
        ):
            from features.discovery import import_definitions_module

            return import_definitions_module(self.definitions, module)
        return importlib.import_module(module)


_default = FunctionLoader()


def default_loader() -> FunctionLoader:
    """The loader used when none is given: plain imports (for functions outside a definitions folder)."""
    return _default
