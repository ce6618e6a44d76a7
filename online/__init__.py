"""The online store: the latest published row per entity and view, served in one round trip.

:class:`RedisOnlineStore` implements :class:`features.protocols.OnlineStore` on Redis or Valkey; ``embedded``
runs a server per repository with zero setup (:func:`ensure_embedded_server`, :func:`stop_embedded_server`).
"""

from online.embedded import ensure_embedded_server, stop_embedded_server
from online.encoding import decode_row, encode_entity_key, encode_row
from online.redis_publication import RedisPublication
from online.redis_store import RedisOnlineStore

__all__ = [
    "RedisOnlineStore",
    "RedisPublication",
    "decode_row",
    "encode_entity_key",
    "encode_row",
    "ensure_embedded_server",
    "stop_embedded_server",
]
