"""Stored rows scanned into answer columns (online/_rowscan.c; used by online/encoding.py's rows_decoder)."""

from collections.abc import Sequence

def scan(
    rows: Sequence[bytes | None], offsets: Sequence[int], kinds: bytes, exponent_plus: bool, /
) -> tuple[list[int | None], list[bytes], int] | None: ...
def blank(text: bytes, indices: Sequence[int], /) -> bytes: ...
