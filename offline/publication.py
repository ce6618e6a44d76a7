"""The steps after the offline commit that every engine shares: deciding whether the online store already
serves the version just committed, and publishing the latest row per entity in one atomic publication.

Engines differ only in how the rows reach the publication: Spark writes them from its executors
(:func:`offline.spark.materialize.publish`), the Arrow engine from this process (:func:`publish_rows`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from features.errors import MaterializationError
from features.plan import ViewPlan
from features.protocols import LiveSnapshot, OnlineStore, Progress, Publication, UpdatableStore
from offline import delta_rs
from offline.errors import error_summary
from offline.tables import commit_time

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


@contextlib.contextmanager
def phase(view: ViewPlan, name: str) -> Iterator[None]:
    """Log how long one step of a run took (at INFO), so a slow run says where its time went."""
    began = time.monotonic()
    try:
        yield
    finally:
        log.info("view '%s': %s took %.2f s", view.name, name, time.monotonic() - began)


def already_live(online: OnlineStore, view: ViewPlan, path: Path, version: int) -> bool:
    """Whether the live online snapshot of ``view`` holds the latest rows of ``version`` of the table at
    ``path``, as this definition publishes them: published from that version (watermark), with the same storage
    and feature fingerprints, and after that version was committed. The last condition tells this table from an
    earlier one at the same path (deleted and created again, so its versions start over): a snapshot published
    from the earlier table predates every commit of the new one."""
    live = online.live_snapshot(view)
    if live is None or live.watermark != version or live.storage_fingerprint != view.storage_fingerprint:
        return False
    if live.feature_fingerprints != tuple((f.name, f.fingerprint) for f in view.features):
        return False
    committed = commit_time(path, version)
    return committed is not None and live.published_at > committed


class RunProgress:
    """One view's run as one progress bar per phase, so rows read and keys published are never added into one
    total: ``<view>: source rows read``, then ``<view>: keys published`` (with a total, hence an ETA, when the
    engine knows how many keys it publishes). Does nothing without a ``progress``."""

    def __init__(self, progress: Progress | None, view: ViewPlan) -> None:
        self._progress = progress
        self._reading = f"{view.name}: source rows read"
        self._publishing = f"{view.name}: keys published"
        self._started: list[str] = []  # the bars started and not finished yet

    def reading(self) -> None:
        """The run starts reading its source (the bar shows the time spent)."""
        self._start(self._reading, None)

    def read(self, rows: int) -> None:
        """The run read ``rows`` source rows: its reading bar is complete."""
        if self._reading not in self._started:
            self.reading()
        if self._progress is not None:
            self._progress.advance(self._reading, rows)
            self._progress.finish(self._reading)
        self._started.remove(self._reading)

    def publishing(self, total: int | None) -> None:
        self._start(self._publishing, total)

    def published(self, keys: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._publishing, keys)

    def finish(self) -> None:
        """The run is over: every bar still open is complete."""
        if self._progress is not None:
            for task in self._started:
                self._progress.finish(task)
        self._started.clear()

    def _start(self, task: str, total: int | None) -> None:
        if self._progress is not None:
            self._progress.start(task, total)
        if task not in self._started:
            self._started.append(task)

    def counted(self, write: Callable[[Publication], int]) -> Callable[[Publication], int]:
        """``write`` (see :func:`publish_unless_live`) with its keys counted on the publishing bar, for an
        engine that learns how many only when they are written (Spark writes them from its executors)."""

        def counted_write(publication: Publication) -> int:
            self.publishing(None)
            keys = write(publication)
            self.published(keys)
            return keys

        return counted_write


@dataclass(frozen=True, slots=True)
class Published:
    """What a run's publication step did: rows written online, whether they became live, and whether nothing was
    published because the online store already served the version (``current``)."""

    rows: int = 0
    committed: bool = False
    current: bool = False
    held: str | None = None  # not published: a rollback holds the view (who and when)
    changed_only: bool = False  # the changed entities went into the live snapshot in place


# Stages the latest rows of the entities that have a row in the given data files of the table (relative paths):
# an engine's way to publish only what changed since the live snapshot.
WriteChanged = Callable[[Publication, list[str]], int]


def publish_unless_live(
    view: ViewPlan,
    path: Path,
    version: int,
    online: OnlineStore,
    write: Callable[[Publication], int],
    *,
    created: bool,
    republish: bool,
    write_changed: WriteChanged | None = None,
    confirmed_at: datetime | None = None,
) -> Published:
    """Publish the latest rows of ``version`` (``write`` stages them in the publication it is given), unless
    the online store already serves that version of this table as this definition publishes it (never for a
    table this run ``created``; always with ``republish``), or while a rollback holds the view (``skewless
    rollback``: the table keeps the run; the release lets the next run publish it). Every engine's run ends
    here.

    With ``write_changed``, a run publishes only the entities whose rows changed since the table version the
    live snapshot holds (:func:`changed_files`), into that snapshot in place (:func:`updated`), when the store
    can and is set to (:class:`~features.protocols.UpdatableStore`, ``online.update_in_place``, the default: the
    store keeps what each run overwrites, so each stays a rollback point); a whole new snapshot otherwise: the
    first publication, a definition change (another storage or feature fingerprint), ``republish``, or a log that
    no longer says what changed. ``confirmed_at`` (windowed views): the last tick computed, recorded with the
    snapshot (see :meth:`~features.protocols.OnlineStore.start_publication`)."""
    live = online.live_snapshot(view)
    if live is not None and live.held:
        log.warning(
            "view '%s': version %d is in the table but not published: a rollback holds the view (%s); "
            "'skewless rollback %s --release' lets the next run publish",
            view.name,
            version,
            live.held,
            view.name,
        )
        return Published(held=live.held)
    if not republish and not created and already_live(online, view, path, version):
        log.info(
            "view '%s': the online store already serves version %d of %s; nothing to publish (--republish "
            "publishes it again)",
            view.name,
            version,
            path,
        )
        return Published(current=True)
    if (
        write_changed is not None
        and not republish
        and not created
        and isinstance(online, UpdatableStore)
        and online.update_in_place
    ):
        files = changed_files(live, view, path, version)
        if files is not None and live is not None and live.version is not None:
            outcome = updated(
                view, version, online, live.version, lambda p: write_changed(p, files), confirmed_at=confirmed_at
            )
            if outcome is not None:
                return outcome
    rows, committed = published(view, version, online, write, confirmed_at=confirmed_at)
    return Published(rows, committed)


def changed_files(live: LiveSnapshot | None, view: ViewPlan, path: Path, version: int) -> list[str] | None:
    """The data files added to the table at ``path`` since the version the live snapshot holds, up to
    ``version``: their entities are the ones whose latest row may have changed. None when only a whole snapshot
    will do: nothing live (or only pushed rows), another definition live, a live version newer than ``version``
    or from an earlier table at this path, or a log that no longer holds every commit in between."""
    if live is None or live.watermark < 0 or live.watermark > version:
        return None
    if live.storage_fingerprint != view.storage_fingerprint:
        return None
    if live.feature_fingerprints != tuple((f.name, f.fingerprint) for f in view.features):
        return None
    committed = commit_time(path, live.watermark)
    if committed is None or live.published_at <= committed:
        return None
    return delta_rs.added_files(path, live.watermark, version)


def updated(
    view: ViewPlan,
    version: int,
    online: UpdatableStore,
    live_version: str,
    write: Callable[[Publication], int],
    *,
    confirmed_at: datetime | None = None,
) -> Published | None:
    """Write the changed entities into the live snapshot ``live_version`` and record ``version`` as its
    watermark; None when that snapshot stopped being live meanwhile (the caller publishes a whole one)."""
    update = online.start_update(view, watermark=version, live_version=live_version, confirmed_at=confirmed_at)
    try:
        with phase(view, "writing the changed entities online"):
            written = write(update)
        committed = update.commit()
    except Exception as exc:
        raise MaterializationError(
            f"view '{view.name}': updating the online store failed; entities written so far hold their new row, "
            f"the others their previous one, and a rerun publishes the rest of version {version}: "
            f"{error_summary(exc)}"
        ) from exc
    if getattr(update, "moved", False):
        log.info("view '%s': the live snapshot changed during the update; publishing a whole snapshot", view.name)
        return None
    if not committed:
        why = getattr(update, "refusal", None) or "a newer publication is live"
        log.warning("view '%s': version %d was not recorded online: %s", view.name, version, why)
    log.info("view '%s': published %d changed entit(ies) in place (offline version %d)", view.name, written, version)
    return Published(written, committed, changed_only=True)


def write_from_here(latest: Callable[[], pa.Table], run: RunProgress) -> Callable[[Publication], int]:
    """A ``write`` for :func:`publish_unless_live` that stages the rows ``latest()`` returns (one row per entity,
    the columns a :class:`~features.protocols.Publication` takes) from this process: what the Arrow engine
    publishes, batch by batch on ``run``'s publishing bar. ``latest`` runs only when something is published."""

    def write(publication: Publication) -> int:
        rows = latest()
        run.publishing(rows.num_rows)

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in rows.to_batches(PUBLISH_BATCH):
                yield batch
                run.published(batch.num_rows)  # the publication took the batch

        return publication.write(batches())

    return write


# Rows per batch handed to a publication from this process (a Spark executor hands it Arrow's batches).
PUBLISH_BATCH = 10_000


def published(
    view: ViewPlan,
    version: int,
    online: OnlineStore,
    write: Callable[[Publication], int],
    *,
    confirmed_at: datetime | None = None,
) -> tuple[int, bool]:
    """Stage rows through ``write`` in a new publication of ``version``, then commit it; on any failure abort
    it, so the previous values stay served. Returns (rows written, committed)."""
    publication = online.start_publication(view, watermark=version, confirmed_at=confirmed_at)
    try:
        with phase(view, "computing the latest rows and writing them online"):
            published = write(publication)
        with phase(view, "committing the online publication"):
            committed = publication.commit()
    except Exception as exc:
        try:
            publication.abort()
        except Exception:  # the original failure matters more than a failed cleanup
            log.exception("view '%s': aborting the online publication failed", view.name)
        raise MaterializationError(
            f"view '{view.name}': publishing to the online store failed; the previous values are still served "
            f"and a rerun will publish version {version}: {error_summary(exc)}"
        ) from exc
    if not committed:
        why = getattr(publication, "refusal", None) or "a newer publication is live"
        log.warning("view '%s': version %d was not made visible: %s", view.name, version, why)
    log.info("view '%s': published %d row(s) online (offline version %d)", view.name, published, version)
    return published, committed
