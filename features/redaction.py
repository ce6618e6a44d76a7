"""Secrets out of anything shown: the one redaction of URLs and of messages that may hold URLs.

Every place that shows a URL or an error that may carry one (error messages, logs, HTTP answers, ``/health``,
command output) goes through :func:`redact_url` or :func:`redact_text`, so one rule decides what a password
looks like:

- the password of the user-info part, ``scheme://user:pw@host`` and ``scheme://:pw@host``; the user-info ends at
  the *last* ``@`` of the authority, so a password holding an unescaped ``@`` is masked whole;
- query-string values whose name says secret (``password=``, ``pass=``, ``pwd=``, ``token=``, ``secret=``,
  ``sslpassword=``, ``api_key=``, ...).

>>> redact_url("redis://:p@ss@cache:6379/0?password=s3cret&db=1")
'redis://:***@cache:6379/0?password=***&db=1'
"""

from __future__ import annotations

import re

MASK = "***"
# Query parameters whose value is a secret: names containing one of these (case-insensitive).
_SECRET_WORDS = ("pass", "pwd", "token", "secret", "credential", "auth", "apikey", "api_key", "access_key")
# A URL inside free text: a scheme, "://", then everything up to white space or a quote that ends the URL.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """``url`` with its passwords masked (see the module docstring); text that is not a URL comes back as given."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The query starts at the first "?" after the authority; "#" ends what can hold secrets we know of.
    authority_end = len(rest)
    for stop in ("?", "#"):
        at = rest.find(stop)
        if at != -1:
            authority_end = min(authority_end, at)
    head, query = rest[:authority_end], rest[authority_end:]
    if "@" in head and not head.startswith("/"):  # "sqlite:////tmp/a@b.db" has a path, not user-info
        userinfo, _, location = head.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        head = f"{user}:{MASK}@{location}" if colon else f"{userinfo}@{location}"
    return f"{scheme}://{head}{_redact_query(query)}"


def _redact_query(query: str) -> str:
    if len(query) < 2 or query[0] != "?":
        return query
    body, hash_sign, fragment = query[1:].partition("#")
    parts = []
    for pair in body.split("&"):
        name, equals, value = pair.partition("=")
        secret = equals and value and any(word in name.lower() for word in _SECRET_WORDS)
        parts.append(f"{name}={MASK}" if secret else pair)
    return "?" + "&".join(parts) + hash_sign + fragment


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url` (error messages, tracebacks, log lines)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
