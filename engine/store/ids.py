"""The range of a store id, for everything that takes an id from a URL.

Ids are 64-bit signed integers in both stores (PostgreSQL BIGINT, SQLite INTEGER): a value
outside 1 … 2^63 − 1 can name no row, and binding it fails inside the driver (SQLite raises
OverflowError) — a 500 for what is the caller's mistake. Routes declare their ids with these
types so such a request is answered 422 (API) or 404 (pages) before any query runs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_STORE_ID = 2**63 - 1

StoreId = Annotated[int, Path(ge=1, le=MAX_STORE_ID, description="a store id (1 … 2^63 − 1)")]
Offset = Annotated[int, Query(ge=0, le=MAX_STORE_ID)]


def parse_store_id(text: str | None) -> int | None:
    """An id typed by a person (a page URL, a form field), or None when it can name no row."""
    if text is None or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if 1 <= value <= MAX_STORE_ID else None


def clamp_offset(text: str | None) -> int:
    """A page offset from a query string: junk is the first page, a huge one is past the end."""
    if text is None or not text.isascii() or not text.isdigit():
        return 0
    return min(int(text), MAX_STORE_ID)
