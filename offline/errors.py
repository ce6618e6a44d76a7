"""Errors of the offline side, and the one-line summary of an engine's error that messages carry."""

from __future__ import annotations


def error_summary(exc: BaseException) -> str:
    """One line for an error from Spark; the full text (a Java or worker stack trace) stays on ``__cause__``."""
    java = getattr(exc, "java_exception", None)
    if java is not None:
        return str(java.toString())
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # A Python worker's traceback ends with the error itself.
    return lines[-1] if type(exc).__name__ == "PythonException" else lines[0]
