"""What ``skewless prune`` and ``skewless teardown`` do in Redis: list a project's keys per view, and delete a view's.

Keys are found with ``SCAN MATCH`` (never ``KEYS``, which blocks the server while it walks every key) and deleted
with ``UNLINK`` (the memory is freed in the background) in batches, so a server serving lookups stays responsive
while millions of keys go. Every key of a view starts with ``<project>:<view>:`` (see :mod:`online.redis_layout`);
another project on the same server has another prefix and is never matched.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from features.protocols import StoredView
from online.redis_layout import ViewKeys, glob_escape

if TYPE_CHECKING:
    import redis

BATCH = 1000  # keys a SCAN step returns and an UNLINK deletes at once


def stored_views(clients: Sequence[redis.Redis], project: str, *, tagged: bool = False) -> list[StoredView]:
    """Every view with keys in ``project``, with its number of keys and of snapshots (row versions); ``clients``:
    the one server, or every primary of a cluster (whose keys start with the tag ``{project:view}``)."""
    prefix = f"{{{project}:".encode() if tagged else f"{project}:".encode()
    end = b"}:" if tagged else b":"
    keys: Counter[str] = Counter()
    versions: defaultdict[str, set[bytes]] = defaultdict(set)
    for client in clients:
        for key in client.scan_iter(match=glob_escape(prefix.decode()) + "*", count=BATCH):
            view, _, rest = key[len(prefix) :].partition(end)
            name = view.decode(errors="replace")
            keys[name] += 1
            version, sep, _ = rest[1:].partition(b":")
            if rest.startswith(b"v") and sep and version.isdigit():
                versions[name].add(version)
    return [StoredView(name, keys[name], len(versions[name])) for name in sorted(keys)]


def delete_view(client: redis.Redis, names: ViewKeys) -> int:
    """Delete every key of a view (``names``, on the server that holds them); returns how many were deleted. The
    pointer goes first, so a reader sees the view unpublished (every value missing), never part of a snapshot; a
    deletion cut short is finished by the next one (its keys are found by their prefix, pointer or not)."""
    deleted = int(client.unlink(names.pointer, names.version))
    batch: list[bytes] = []
    for key in client.scan_iter(match=glob_escape(names.prefix) + "*", count=BATCH):
        batch.append(key)
        if len(batch) == BATCH:
            deleted += int(client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted
