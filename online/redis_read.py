"""One read across views: the keys it names, the ``MGET`` fast path, the Lua read, and the rows decoded.

One ``MGET`` per :meth:`online.redis_store.RedisOnlineStore.read` call fetches every view's ``_version`` key and
the entity keys of the version the store last saw live (see :mod:`online.redis_layout`). ``MGET`` is atomic:
when the versions it returns are the ones assumed, the rows are those of the live snapshots at that instant.
Otherwise (the first read, or the first one after a commit) one Lua script reads every pointer and the rows of
the versions it names, atomically too, and the store remembers them. Either way a read sees one snapshot per view
and is never stale: the first read after a commit returns the new values. (The fast path has no Lua: a script's
cost inside Redis grows with the rows it returns, each one copied into and out of a Lua string.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hiredis
import orjson

from features.dtypes import DType
from features.plan import ViewPlan
from features.protocols import ColumnText, OnlineValues
from online.encoding import RowsDecoded, encode_entity_keys, rows_decoder
from online.redis_layout import ViewKeys

_JOINED_FROM = 8  # entities from which mget_command's joins beat hiredis.pack_command (measured: 6-8)
_DECODER_CACHE = 256  # decoders kept per store; a server asks for a handful of feature selections
# What a snapshot lacks of the requested features, and the decoder of its rows (see SnapshotDecoders).
_Decoder = tuple[frozenset[str], Callable[[Sequence[bytes | None]], RowsDecoded]]
# One view's snapshot as read: its version (None: nothing published), the pointer's features, the rows.
Snapshot = tuple[bytes | None, bytes | None, list[bytes | None]]
# view -> (version, features) last seen live; (None, None): seen without a live version (not published)
SeenLive = dict[str, tuple[bytes | None, bytes | None]]


class SnapshotDecoders:
    """Decodes a snapshot's rows into :class:`OnlineValues`, with the decoder of each (view, requested names,
    snapshot layout) worked out once: a server sees the same few."""

    def __init__(self) -> None:
        # (view name, requested names, snapshot features) -> (the view plan, its decoder)
        self._decoders: dict[tuple[str, tuple[str, ...], bytes], tuple[ViewPlan, _Decoder]] = {}

    def decode(
        self,
        view: ViewPlan,
        names: tuple[str, ...],
        version: bytes | None,
        features: bytes | None,
        values: list[bytes | None],
        count: int,
    ) -> OnlineValues:
        """The requested ``names`` of ``count`` entities from one view's snapshot (all missing when unpublished)."""
        if version is None:
            empty: list[list[Any] | ColumnText] = [[None] * count for _ in names]
            return OnlineValues(view.name, names, empty, [None] * count, frozenset(names))
        unavailable, decode = self._decoder(view, names, features or b"[]")
        columns, events = decode(values)
        version, _, confirmed = version.partition(b"@")
        if confirmed:  # a windowed view's snapshot, current at that tick: no value is older than it
            at = int(confirmed)
            events = [None if e is None else max(e, at) for e in events]
        return OnlineValues(view.name, names, columns, events, unavailable, version.decode())

    def _decoder(self, view: ViewPlan, names: tuple[str, ...], features: bytes) -> _Decoder:
        """How to decode the rows of a snapshot holding ``features`` (the pointer's list of (name, fingerprint))."""
        key = (view.online_name, names, features)
        found = self._decoders.get(key)
        if found is not None and found[0] is view:
            return found[1]
        plans = [view.feature(n) for n in names]
        stored = {(name, fingerprint): i for i, (name, fingerprint) in enumerate(orjson.loads(features))}
        positions = [stored.get((f.name, f.fingerprint)) for f in plans]
        unavailable = frozenset(n for n, p in zip(names, positions, strict=True) if p is None)
        decoder = (unavailable, rows_decoder([f.dtype for f in plans], positions))
        if len(self._decoders) >= _DECODER_CACHE:
            self._decoders.clear()
        self._decoders[key] = (view, decoder)
        return decoder


class _ReadShape:
    """What a read's keys depend on besides the entities (each view's key layout, join keys and their types), for
    one ``requests`` object: a server passes the same prepared lookup's over and over, and working it out per request
    cost ~2 µs of a 1-entity read."""

    __slots__ = ("key_names", "keyings", "layouts", "online_names", "requests")

    def __init__(self, project: str, requests: Sequence[tuple[ViewPlan, Sequence[str]]], tagged: bool) -> None:
        self.requests = requests  # kept: its id stays its own while this shape is kept
        self.online_names = [view.online_name for view, _ in requests]
        self.layouts = [ViewKeys.of(project, name, tagged) for name in self.online_names]
        self.key_names = [view.key_names for view, _ in requests]
        # Each distinct tuple of join keys (views keyed alike share their encoded keys), with the keys' types.
        keyings: dict[tuple[str, ...], list[DType]] = {}
        for (view, _), names in zip(requests, self.key_names, strict=True):
            keyings.setdefault(names, [k.dtype for k in view.join_keys])
        self.keyings = list(keyings.items())

    @staticmethod
    def of(project: str, requests: Sequence[tuple[ViewPlan, Sequence[str]]], tagged: bool) -> _ReadShape:
        key = (id(requests), project, tagged)
        found = _SHAPES.get(key)
        if found is None or found.requests is not requests:
            if len(_SHAPES) >= _SHAPES_KEPT:
                _SHAPES.clear()
            found = _SHAPES[key] = _ReadShape(project, requests, tagged)
        return found


_SHAPES: dict[tuple[int, str, bool], _ReadShape] = {}
_SHAPES_KEPT = 256  # a server reads a handful of feature selections


class SnapshotRead:
    """One read's keys and how to turn the ``MGET`` of them (or the Lua read) into snapshots and decoded columns
    (shared by :meth:`RedisOnlineStore.read` and :meth:`RedisOnlineStore.read_async`)."""

    def __init__(
        self,
        project: str,
        seen_live: SeenLive,
        requests: Sequence[tuple[ViewPlan, Sequence[str]]],
        entities: Mapping[str, Sequence[Any]],
        *,
        tagged: bool = False,
    ) -> None:
        self.seen_live = seen_live
        self.requests = requests
        self.count = len(next(iter(entities.values()))) if entities else 0
        shape = _ReadShape.of(project, requests, tagged)
        self.layouts = shape.layouts
        self.key_names = shape.key_names
        self.encoded: dict[tuple[str, ...], list[bytes]] = {}  # views keyed alike share their encoded keys
        for key_names, dtypes in shape.keyings:
            self.encoded[key_names] = encode_entity_keys([entities[k] for k in key_names], dtypes)
        # The versions last seen live; None when a view has not been seen yet (the Lua read finds its pointer).
        self.seen: list[tuple[bytes | None, bytes | None]] | None = []
        for name in shape.online_names:
            found = seen_live.get(name)
            if found is None:
                self.seen = None
                break
            self.seen.append(found)
        # Per view seen published, the prefix of its row keys in the version seen (None: seen unpublished).
        self.prefixes: list[bytes | None] = []
        self.rows_at: list[int] = []  # where each view's rows start in the MGET's answer
        if self.seen is not None:
            at = len(requests)
            for layout, (version, _features) in zip(self.layouts, self.seen, strict=True):
                self.rows_at.append(at)
                if version is None:
                    self.prefixes.append(None)
                else:  # b"N", or b"N@C" for a snapshot current at tick C (rows under vN)
                    self.prefixes.append(layout.data_prefix.encode() + version.partition(b"@")[0] + b":")
                    at += self.count
        self._names: list[bytes | str] | None = None

    @property
    def names(self) -> list[bytes | str] | None:
        """The names to ``MGET``: each view's version key, then its rows in the version seen (none for a view seen
        unpublished). None when a view has not been seen yet (the Lua read finds its pointer)."""
        if self.seen is None:
            return None
        if self._names is None:
            names: list[bytes | str] = [layout.version for layout in self.layouts]
            for key_names, prefix in zip(self.key_names, self.prefixes, strict=True):
                if prefix is not None:
                    names.extend([prefix + key for key in self.encoded[key_names]])
            self._names = names
        return self._names

    def mget_command(self) -> bytes:
        """``MGET`` of :attr:`names` as the bytes Redis reads (RESP), packed straight from the key prefixes and the
        encoded keys: for 100 entities of two views ~23 µs, where building the names and ``hiredis.pack_command``
        took ~41 µs (a tenth of the lookup). Below :data:`_JOINED_FROM` entities hiredis packs faster."""
        assert self.seen is not None
        if self.count < _JOINED_FROM:
            command: tuple[Any, ...] = ("MGET", *(self.names or ()))
            return hiredis.pack_command(command)
        total = 1 + len(self.layouts) + self.count * sum(prefix is not None for prefix in self.prefixes)
        parts = [b"*%d\r\n$4\r\nMGET" % total]
        for layout in self.layouts:
            version = layout.version.encode()
            parts.append(b"\r\n$%d\r\n%b" % (len(version), version))
        for key_names, prefix in zip(self.key_names, self.prefixes, strict=True):
            if prefix is not None:
                keys = self.encoded[key_names]
                heads = _arg_heads(prefix)
                joined: list[bytes] = [b""] * (2 * len(keys))
                joined[0::2] = map(heads.__getitem__, map(len, keys))
                joined[1::2] = keys
                parts.append(b"".join(joined))
        parts.append(b"\r\n")
        return b"".join(parts)

    def snapshots(self, got: list[bytes | None]) -> list[Snapshot] | None:
        """(version, features, rows) per view from the ``MGET``; None when a version moved since it was seen."""
        assert self.seen is not None
        if got[: len(self.requests)] != [version for version, _ in self.seen]:
            return None
        return [
            (version, features, got[start : start + self.count] if version is not None else [])
            for start, (version, features) in zip(self.rows_at, self.seen, strict=True)
        ]

    def lua_snapshots(self, read_script: Any) -> list[Snapshot]:
        """The Lua read (``read_script``, :data:`online.redis_layout.READ_LUA` registered): every pointer and the
        rows of the version it names, atomically; remembers the versions for the next ``MGET``."""
        args: list[Any] = [self.count, *(layout.data_prefix for layout in self.layouts)]
        for key_names in self.key_names:
            args.extend(self.encoded[key_names])
        answer = read_script(keys=[layout.pointer for layout in self.layouts], args=args)
        for (view, _), (version, features, _values) in zip(self.requests, answer, strict=True):
            self.seen_live[view.online_name] = (None, None) if version is None else (version, features or b"[]")
        return [(version, features, values) for version, features, values in answer]

    def decoded(self, decoders: SnapshotDecoders, snapshots: list[Snapshot]) -> list[OnlineValues]:
        """Each view's snapshot decoded into the requested features."""
        decode = decoders.decode
        return [
            decode(view, tuple(names), version, features, values, self.count)
            for (view, names), (version, features, values) in zip(self.requests, snapshots, strict=True)
        ]


class _ArgHeads(dict[int, bytes]):
    """The start of an ``MGET`` argument ``prefix + key`` in RESP, by the key's length: the end of the argument
    before (CRLF), the length, CRLF and ``prefix``. Made on first use per length."""

    def __init__(self, prefix: bytes) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, length: int) -> bytes:
        head = self[length] = b"\r\n$%d\r\n%b" % (len(self.prefix) + length, self.prefix)
        return head


_ARG_HEADS: dict[bytes, _ArgHeads] = {}
_ARG_HEADS_KEPT = 1024  # prefixes (a view's version): a few per view between two publications


def _arg_heads(prefix: bytes) -> _ArgHeads:
    found = _ARG_HEADS.get(prefix)
    if found is None:
        if len(_ARG_HEADS) >= _ARG_HEADS_KEPT:
            _ARG_HEADS.clear()
        found = _ARG_HEADS[prefix] = _ArgHeads(prefix)
    return found
