"""Who may call the service: bearer tokens, kept as hashes in ``skewless.yaml`` (``serving.tokens``), each scoped.

A token is a random string its holder sends as ``Authorization: Bearer <token>`` (or as the password of HTTP
Basic, which a browser prompts for: the catalog at ``/ui/``). The configuration holds only its SHA-256,
``sha256:<hex>``, so a leaked ``skewless.yaml`` lets nobody in; ``${NAME}`` takes the hash from the environment.
``skewless token create`` prints a new token and the entry to paste.

What a token may do (its :class:`Grant`):

- ``services``: the feature services it may look up (``POST /v1/features``, ``POST /get-online-features``);
  ``'*'``: every service, plain ``features`` lists, and the catalog at ``/ui/`` (it shows every definition).
- ``push``: the views it may push rows to (``POST /v1/push``); ``'*'``: every view. Looking up never implies
  pushing: a model server's token cannot write features.

With no token configured there is no authentication (every caller gets :data:`OPEN`), and ``skewless serve``
refuses to listen beyond loopback unless told ``--insecure-no-auth``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from features.errors import ConfigError

ALL = "*"
HASH_PREFIX = "sha256:"
TOKEN_PREFIX = "skw_"  # so a token pasted somewhere it should not be is recognisable (secret scanners)
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
#: Valid ``Authorization`` headers kept per process with their grant (a few per token in practice: each client sends
#: the same header every time); the table is emptied when full.
VERIFIED_KEPT = 1024


@dataclass(frozen=True, slots=True)
class Grant:
    """What one caller may do: the token's name (for the log) and its scopes."""

    name: str
    services: frozenset[str]
    push: frozenset[str]

    def may_look_up(self, feature_service: str | None) -> bool:
        """A lookup of ``feature_service`` (None: a plain ``features`` list, which needs ``'*'``)."""
        return ALL in self.services or (feature_service is not None and feature_service in self.services)

    def may_push(self, view: str) -> bool:
        return ALL in self.push or view in self.push

    @property
    def may_browse(self) -> bool:
        """The catalog shows every definition: it takes a token that may look up everything."""
        return ALL in self.services


OPEN = Grant("", frozenset({ALL}), frozenset({ALL}))  # no authentication configured: everyone may do everything


def hash_token(token: str) -> str:
    """The entry a configuration keeps of ``token``: ``sha256:<hex>``."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A new random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class Authenticator:
    """The configured tokens, by hash; :meth:`grant` says what the caller of a request may do.

    The presented token is hashed and looked up by its hash: a timing difference can tell an attacker at most
    something about a SHA-256 of what they sent, not about a valid token. The ``Authorization`` headers that
    carried a valid token are kept with their grant (up to :data:`VERIFIED_KEPT`), so a client sending the same
    header on every request is not parsed and hashed again: that look-up is by the header's hash, salted per
    process (Python's ``hash`` of bytes), so its timing tells nothing either. Refused headers are never kept: a
    caller cannot fill the table.
    """

    def __init__(self, tokens: Mapping[str, Mapping[str, Any]]) -> None:
        self._verified: dict[bytes, Grant] = {}  # Authorization header -> its grant (valid tokens only)
        self._by_hash: dict[str, Grant] = {}
        for name, entry in tokens.items():
            digest = str(entry.get("hash", ""))
            if not _HASH.fullmatch(digest):
                raise ConfigError(
                    f"serving.tokens.{name}.hash must be 'sha256:' and 64 lower-case hex digits "
                    "(run 'skewless token create' for a token and its hash)"
                )
            if digest in self._by_hash:
                raise ConfigError(f"serving.tokens.{name} has the same hash as '{self._by_hash[digest].name}'")
            self._by_hash[digest] = Grant(
                str(name), frozenset(entry.get("services") or ()), frozenset(entry.get("push") or ())
            )

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    def grant(self, authorization: bytes | None) -> Grant | None:
        """The grant of the ``Authorization`` header's token, :data:`OPEN` with no tokens configured, None when
        the header is missing, malformed, or its token is not configured."""
        if not self._by_hash:
            return OPEN
        if authorization is None:
            return None
        grant = self._verified.get(authorization)
        if grant is not None:
            return grant
        token = _presented_token(authorization)
        if token is None:
            return None
        grant = self._by_hash.get(HASH_PREFIX + hashlib.sha256(token).hexdigest())
        if grant is not None:
            if len(self._verified) >= VERIFIED_KEPT:
                self._verified.clear()
            self._verified[authorization] = grant
        return grant


def _presented_token(authorization: bytes | None) -> bytes | None:
    """The token of ``Bearer <token>``, or the password of ``Basic base64(user:token)``."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(b" ")
    scheme = scheme.lower()
    if scheme == b"bearer":
        return credentials.strip() or None
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(b":")[2] or None
    return None


def register_token(subparsers: Any) -> None:
    """Add ``token create`` to the CLI's subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "token", help="create a bearer token for the HTTP service (prints the token and the entry for skewless.yaml)"
    )
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="print a new token and its serving.tokens entry")
    create.add_argument("--name", default="client", help="the token's name in skewless.yaml and in the log")
    create.add_argument(
        "--service",
        action="append",
        default=[],
        help="a feature service the token may look up (repeat for more; '*' for all, plain feature lists and /ui/)",
    )
    create.add_argument("--push", action="append", default=[], help="a view the token may push to ('*' for all)")
    create.set_defaults(handler=cmd_token_create)


def cmd_token_create(args: argparse.Namespace) -> int:
    from features.console import console

    token = new_token()
    console.print(f"token (give it to the caller; it is shown only once):\n{token}\n", highlight=False, soft_wrap=True)
    console.print("add under 'serving: tokens:' in skewless.yaml:", highlight=False)
    console.print(token_entry(args.name, token, args.service, args.push), highlight=False, soft_wrap=True)
    return 0


def token_entry(name: str, token: str, services: Iterable[str], push: Iterable[str]) -> str:
    """The YAML of one ``serving.tokens`` entry (indented as it goes under ``serving: tokens:``)."""

    def names(values: Iterable[str]) -> str:
        return "[" + ", ".join(f'"{v}"' for v in values) + "]"

    return f'    {name}: {{hash: "{hash_token(token)}", services: {names(services)}, push: {names(push)}}}'
