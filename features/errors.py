"""The error hierarchy: one root, and subclasses that also inherit the matching built-in.

Every error skewless raises on purpose derives from :class:`SkewlessError`, so callers can catch the whole
family at once, and from the built-in that describes its kind (``ValueError`` for bad input, ``LookupError``
for unknown names), so generic handlers keep working.
"""

from __future__ import annotations

from collections.abc import Iterable


class SkewlessError(Exception):
    """Root of every error raised by skewless."""


class DefinitionError(SkewlessError, ValueError):
    """A feature definition is invalid. The message names the file, the line and the valid choices."""

    def __init__(self, message: str, *, location: str | None = None) -> None:
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class ConfigError(SkewlessError, ValueError):
    """The repository configuration (``skewless.yaml``) is invalid or incomplete."""


class RegistryError(SkewlessError, RuntimeError):
    """The registry database could not be read or written."""


class UnknownNameError(SkewlessError, LookupError):
    """A feature, view or service name that the plan does not know."""

    def __init__(self, kind: str, name: str, known: Iterable[str], *, context: str = "") -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        where = f" {context}" if context else ""
        choices = ", ".join(self.known) if self.known else "(none)"
        super().__init__(f"unknown {kind} '{name}'{where}; known: {choices}")


class SchemaMismatchError(SkewlessError, ValueError):
    """A source's columns or types no longer match the applied plan."""


class MaterializationError(SkewlessError, RuntimeError):
    """A materialization run failed; the stores were left as they were before the run."""


class OnlineStoreError(SkewlessError, ConnectionError):
    """The online store could not be reached or answered with an error."""


class EntityKeyError(SkewlessError, ValueError):
    """Entity keys given for a lookup are missing or of the wrong type."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A short 'valid choices' suffix for error messages."""
    choices = sorted(known)
    return f"; valid choices: {', '.join(choices)}" if choices else ""
