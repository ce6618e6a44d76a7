"""The one redaction of URLs and messages: each form a password takes, masked; nothing else touched."""

from __future__ import annotations

import pytest

from features.redaction import redact_text, redact_url

# Written by hand: the URL, and what may be shown of it.
CASES = [
    ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
    ("rediss://:secret@host/0", "rediss://:***@host/0"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),  # '@' in the password: the last '@' ends it
    ("redis://u:a@b@c@host/0", "redis://u:***@host/0"),
    ("postgresql://u:pa/ss@db/x", "postgresql://u:***@db/x"),  # '/' in the password
    ("redis://host/0?password=secret", "redis://host/0?password=***"),
    ("redis://host/0?db=1&PASS=secret&x=2", "redis://host/0?db=1&PASS=***&x=2"),
    ("postgresql://h/db?sslpassword=s&token=t&api_key=k", "postgresql://h/db?sslpassword=***&token=***&api_key=***"),
    ("redis://:one@host/0?password=two#frag", "redis://:***@host/0?password=***#frag"),
    ("sqlite:////tmp/a@b.db", "sqlite:////tmp/a@b.db"),  # a path holding '@' has no password
    ("sqlite:///.skewless/registry.db", "sqlite:///.skewless/registry.db"),
    ("postgresql://reader@db/payments", "postgresql://reader@db/payments"),  # a user without a password
    ("embedded", "embedded"),
]


@pytest.mark.parametrize(("url", "shown"), CASES)
def test_every_form_of_password_is_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_urls_inside_messages_are_masked() -> None:
    message = (
        "online store at redis://:p@ss@cache:6379/0?password=two failed; "
        "registry 'postgresql://u:pw@db/r' down (see https://example.org/help?x=1)"
    )
    assert redact_text(message) == (
        "online store at redis://:***@cache:6379/0?password=*** failed; "
        "registry 'postgresql://u:***@db/r' down (see https://example.org/help?x=1)"
    )
    assert redact_text("no URL here: a:b@c") == "no URL here: a:b@c"
