"""Errors of the offline side, and the one-line summary of an engine's error that messages carry."""

from __future__ import annotations

from features.errors import CommitConflictError, MaterializationError

# Delta's optimistic concurrency control: another writer committed after this run read the table. delta-spark
# raises these (io.delta.exceptions.*, and the Python classes of the same names in delta.exceptions, all under
# DeltaConcurrentModificationException); delta-rs commits fail as features.errors.CommitConflictError.
_DELTA_CONFLICTS = frozenset(
    {
        "DeltaConcurrentModificationException",
        "ConcurrentAppendException",
        "ConcurrentDeleteReadException",
        "ConcurrentDeleteDeleteException",
        "ConcurrentTransactionException",
        "ConcurrentWriteException",
        "MetadataChangedException",
        "ProtocolChangedException",
    }
)


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


def is_commit_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is Delta refusing a commit because another writer
    committed to the table first: nothing of the refused commit is in the table."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CommitConflictError):
            return True
        names = {cls.__name__ for cls in type(current).__mro__} | _java_class_names(current)
        if names & _DELTA_CONFLICTS:
            return True
        current = current.__cause__ or current.__context__
    return False


def conflict_message(view: str) -> str:
    """The one line a run that lost a commit race fails with."""
    return (
        f"view '{view}': another run committed to its table at the same time; nothing of this run was written; "
        f"run again"
    )


def run_failure(view: str, exc: BaseException, detail: str) -> MaterializationError:
    """The error a run's failed write raises (``from exc``): :func:`conflict_message` when Delta refused its
    commit because another writer committed first (:func:`is_commit_conflict`), else ``detail``."""
    return MaterializationError(conflict_message(view) if is_commit_conflict(exc) else detail)


def _java_class_names(exc: BaseException) -> set[str]:
    """Simple names of the Java exception's class and its superclasses (Py4J errors carry the Java object)."""
    java = getattr(exc, "java_exception", None)
    names: set[str] = set()
    try:
        cls = java.getClass() if java is not None else None
        while cls is not None:
            names.add(str(cls.getSimpleName()))
            cls = cls.getSuperclass()
    except Exception:  # the JVM is gone: the Python side's names have to do
        return names
    return names
