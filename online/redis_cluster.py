"""The online store on Redis Cluster (or Valkey cluster): the URL, the connection check, and which node holds a view.

Every key of a view carries the hash tag ``{P:V}`` on a cluster (see :class:`online.redis_layout.ViewKeys`), so a
view's pointer, history, staged versions and rows share one slot: each Lua script of the single-node store runs
unchanged on the one node that holds it, atomically, and a publication's ``MSET`` of 1000 rows is one command.
So every operation on one view talks to one node, through that node's own client (:meth:`ClusterRouter.node`);
only a read across views on several nodes fans out, one round trip per node, all nodes at once
(:func:`mget_per_node`).

After a failure (a node down, a slot moved by a failover or a resharding) the slot map is asked for again before
the next command (at most once per :data:`REFRESH_SECONDS`): a failed command answers an error (HTTP 503), never
a value from the wrong node, and the store follows the new primary without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from features.errors import ConfigError, OnlineStoreError
from features.redaction import redact_url as redact

if TYPE_CHECKING:
    import redis
    import redis.cluster

logger = logging.getLogger(__name__)

SCHEMES = ("redis+cluster", "rediss+cluster")
URL_FORM = "redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster:// for TLS)"
# After a failed command, how often at most the slot map is read again (a failover takes a node timeout or more:
# asking every request meanwhile would only load the nodes still up).
REFRESH_SECONDS = 0.25


def is_cluster_url(url: str) -> bool:
    """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL."""
    return url.split("://", 1)[0].lower() in SCHEMES


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The seed nodes of a cluster URL and the connection settings every node shares (user, password, TLS);
    :class:`ConfigError` naming the URL and the expected form otherwise."""
    scheme, _, rest = url.partition("://")
    netloc, _, tail = rest.partition("/")
    if tail.strip("0"):
        raise ConfigError(
            f"invalid online store URL {redact(url)!r}: a cluster has one database (0) and takes no options; "
            f"expected {URL_FORM}"
        )
    credentials, _, hosts = netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"invalid online store URL {redact(url)!r}: {part!r} is not host:port; expected {URL_FORM}"
            )
        seeds.append((host.strip("[]"), int(port)))
    settings: dict[str, Any] = {"ssl": scheme.lower() == "rediss+cluster"}
    if credentials:
        user, sep, password = credentials.partition(":")
        settings["username"] = urllib.parse.unquote(user) or None
        if sep:
            settings["password"] = urllib.parse.unquote(password)
    return seeds, settings


def connect_cluster(url: str, *, connect_timeout: float, timeout: float) -> redis.cluster.RedisCluster:
    """A cluster client on the URL's seeds, checked: the seeds speak cluster, every slot is served and every
    primary answers. :class:`OnlineStoreError` naming the address otherwise, within about ``connect_timeout`` per
    seed and primary."""
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import RedisClusterException
    from redis.retry import Retry

    seeds, settings = parse_cluster_url(url)
    where = redact(url)
    try:
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in seeds],
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            retry_on_timeout=False,
            require_full_coverage=True,
            dynamic_startup_nodes=False,  # the seeds stay those of the URL, not whatever a node calls itself
            **settings,
        )
    except (RedisClusterException, redis.RedisError, OSError) as exc:
        text = str(exc)
        if "cluster mode is not enabled" in text.lower() or "cluster support disabled" in text.lower():
            raise OnlineStoreError(
                f"online store at {where} is not a Redis Cluster (the server says cluster_enabled:0): use "
                f"redis://host:port/0 for a single server"
            ) from exc
        raise OnlineStoreError(f"online store at {where}: no cluster answers at {_names(seeds)}: {text}") from exc
    try:
        _check(cluster)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _check(cluster: redis.cluster.RedisCluster) -> None:
    """Every primary answers and the cluster says it is ok; else name the node that is not."""
    import redis

    for node in cluster.get_primaries():
        client = cluster.get_redis_connection(node)
        try:
            client.ping()
            info = client.execute_command("CLUSTER", "INFO")
        except (redis.RedisError, OSError) as exc:
            raise OnlineStoreError(f"online store cluster: primary {node.name} does not answer: {exc}") from exc
        state = _text(info)
        if "cluster_state:ok" not in state:
            down = _failed_nodes(client)
            raise OnlineStoreError(
                f"online store cluster: node {node.name} says cluster_state:fail (some slots are not served)"
                + (f"; nodes marked failed: {', '.join(down)}" if down else "")
            )


def _failed_nodes(client: redis.Redis) -> list[str]:
    lines = _text(client.execute_command("CLUSTER", "NODES")).splitlines()
    # Flags "fail" (the cluster agreed) or "fail?" (this node suspects it).
    return [line.split()[1].split("@")[0] for line in lines if "fail" in line.split()[2].replace("?", "").split(",")]


def _text(reply: Any) -> str:
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, dict):  # redis-py parses CLUSTER INFO into a dict
        return "\n".join(f"{k}:{v}" for k, v in reply.items())
    return str(reply)


def _names(seeds: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{host}:{port}" for host, port in seeds)


class ClusterRouter:
    """One cluster's client, the node that holds a key, and the slot map read again after a failure."""

    def __init__(self, url: str, *, connect_timeout: float, timeout: float) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._cluster: redis.cluster.RedisCluster | None = None
        self._lock = threading.Lock()
        self._stale = False
        self._next_refresh = 0.0
        #: Bumped each time the slot map is read again: per-node connections kept elsewhere are dropped then.
        self.generation = 0

    def cluster(self) -> redis.cluster.RedisCluster:
        """The checked cluster client (see :func:`connect_cluster`), connected on first use; after a failure, with
        the slot map read again."""
        with self._lock:
            if self._cluster is None:
                self._cluster = connect_cluster(self.url, connect_timeout=self.connect_timeout, timeout=self.timeout)
                self.generation += 1
            elif self._stale and time.monotonic() >= self._next_refresh:
                self._next_refresh = time.monotonic() + REFRESH_SECONDS
                self._refresh(self._cluster)
            return self._cluster

    def _refresh(self, cluster: redis.cluster.RedisCluster) -> None:
        """Read the slot map again. When that fails (mid-failover the nodes may disagree, or the one asked may be
        the dead one), the old map stays and the next command tries again: a command for a node that is fine is
        not failed for it, and one the old map sends to the wrong node gets ``MOVED`` or no connection (an error,
        never another node's value)."""
        import redis
        from redis.exceptions import RedisClusterException

        try:
            cluster.nodes_manager.initialize()
        except (RedisClusterException, redis.RedisError, OSError) as exc:
            logger.info("online store at %s: the slot map could not be read again: %s", redact(self.url), exc)
            return
        self._stale = False
        self.generation += 1

    def failed(self) -> None:
        """A command failed: read the slot map again before the next one (a failover may have moved it)."""
        self._stale = True

    def node(self, key: str | bytes) -> redis.Redis:
        """The client of the primary that holds ``key``'s slot."""
        return self.named_node(key)[1]

    def named_node(self, key: str | bytes) -> tuple[str, redis.Redis]:
        """``host:port`` and the client of the primary that holds ``key``'s slot."""
        cluster = self.cluster()
        node = cluster.get_node_from_key(key)
        return str(node.name), cluster.get_redis_connection(node)

    def primaries(self) -> list[redis.Redis]:
        """A client per primary (a project's views spread over all of them)."""
        cluster = self.cluster()
        return [cluster.get_redis_connection(node) for node in cluster.get_primaries()]

    def close(self) -> None:
        with self._lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.close()


def mget_per_node(
    router: ClusterRouter, groups: Sequence[tuple[str, Sequence[bytes | str]]], free: dict[str, list[Any]]
) -> list[list[bytes | None]]:
    """One ``MGET`` per group (the keys of one view: one slot), answered in order: each node's ``MGET``s are written
    on one of its connections, every node's before any reply is read, so the nodes work at once and a read costs
    one round trip per node. ``free`` keeps idle connections per node (see :func:`online.redis_client.roundtrip`)."""
    import hiredis
    import redis

    by_node: dict[str, tuple[redis.Redis, list[int]]] = {}
    for i, (slot_key, _) in enumerate(groups):
        name, client = router.named_node(slot_key)
        by_node.setdefault(name, (client, []))[1].append(i)
    answers: list[list[bytes | None]] = [[] for _ in groups]
    for attempt in (1, 2):  # as online.redis_client.roundtrip: one retry on a dropped connection, none on a timeout
        sent: list[tuple[str, Any, list[int]]] = []
        try:
            for name, (client, indexes) in by_node.items():
                idle = free.setdefault(name, [])
                connection = idle.pop() if idle else client.connection_pool.get_connection()
                sent.append((name, connection, indexes))
                commands = [("MGET", *groups[i][1]) for i in indexes]
                connection.send_packed_command([hiredis.pack_command(c) for c in commands])  # type: ignore[arg-type]
            for name, connection, indexes in sent:
                for i in indexes:
                    answers[i] = connection.read_response()
                free[name].append(connection)
            return answers
        except BaseException as exc:
            for _, connection, _ in sent:  # a connection may hold unread replies: never reuse it
                connection.disconnect()
            free.clear()
            if attempt == 2 or not isinstance(exc, redis.ConnectionError):
                raise
    raise AssertionError("unreachable")
