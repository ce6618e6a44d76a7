"""Loading engines and stores by name, through Python entry points.

``features/`` names no engine in its imports (DESIGN.md: dependencies run one way); the installed
distribution declares them (``pyproject.toml``: ``skewless.offline_engines``, ``skewless.online_stores``,
``skewless.commands``), and third parties can add their own the same way.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from features.errors import ConfigError


def load_plugin(group: str, name: str) -> Any:
    """The object registered under ``name`` in entry-point ``group``; an error lists the known names."""
    found = {ep.name: ep for ep in entry_points(group=group)}
    if name not in found:
        known = ", ".join(sorted(found)) or "(none: is skewless installed with pip install -e .?)"
        raise ConfigError(f"no {group.rsplit('.', 1)[-1].replace('_', ' ')[:-1]} named '{name}'; known: {known}")
    return found[name].load()


def all_plugins(group: str) -> dict[str, Any]:
    return {ep.name: ep.load() for ep in entry_points(group=group)}
