"""Helpers: run a corpus message through its event transformer and apply it to a timeline."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import corpus

ANS = ("hl7v2", "ans")
FHIR = ("hl7v2", "fhir-converter")
DOCS = ("hl7v2", "ans", "Vague_2", "Trans_Doc-CDA-HL7V2", "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1")
TRANSFORMER = {"ADT": "adt_events", "ORU": "oru_events", "MDM": "mdm_events",
               "ORM": "orm_events", "OML": "orm_events", "SIU": "siu_events",
               "CDA": "cda_events", "REF": "ref_events"}
_ids = itertools.count(1000)


def events_of(raw: bytes, message_id: int | None = None) -> dict[str, Any]:
    """The events envelope the default routes would deliver to the timeline for `raw`."""
    from engine.routing.router import exchange_from_bytes
    from transformers.builtin import BUILTIN

    ex = exchange_from_bytes(raw, "main")
    ex.message_id = message_id if message_id is not None else next(_ids)
    out = BUILTIN[TRANSFORMER[ex.headers["message_type"]]](ex)
    assert out is not None
    return out.body


def read(*parts: str) -> bytes:
    return corpus(*parts).read_bytes()


def edit(raw: bytes, segment: str, field: int, value: str) -> bytes:
    """Replace SEG-field (first occurrence) in an ER7 message: test variants of a sample."""
    text = raw.decode("utf-8")
    sep = "\r" if "\r" in text else "\n"
    lines = text.split(sep)
    for i, line in enumerate(lines):
        if line.startswith(segment + "|"):
            f = line.split("|")
            n = field if segment != "MSH" else field - 1
            f += [""] * (n + 1 - len(f))
            f[n] = value
            lines[i] = "|".join(f)
            break
    else:
        raise AssertionError(f"no {segment} in message")
    return sep.join(lines).encode("utf-8")


class TL:
    """A Timeline on a real store, with shortcuts to apply messages and count rows."""

    def __init__(self, url: str) -> None:
        from engine.store.database import Store
        from engine.timeline import Timeline, TimelineSettings

        self.store = Store(url)
        self.store.migrate()
        self.timeline = Timeline(self.store.engine, TimelineSettings())

    def apply(self, raw: bytes, message_id: int | None = None) -> dict[str, Any]:
        env = events_of(raw, message_id)
        self.timeline.apply(env)
        return env

    def rows(self, table: Any, *where: Any) -> list[dict[str, Any]]:
        from sqlalchemy import select

        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(table).where(*where).order_by(table.c[list(table.c.keys())[0]])
            ).mappings()]

    def patient_of(self, authority: str, value: str) -> int:
        from engine.timeline.identity import lookup

        with self.store.engine.connect() as conn:
            pid = lookup(conn, authority, value)
        assert pid is not None
        return pid


@pytest.fixture
def tl(tmp_path: Path) -> Iterator[TL]:
    t = TL(f"sqlite:///{tmp_path / 'tl.db'}")
    yield t
    t.store.close()


@pytest.fixture
def tl_any(store_url: str) -> Iterator[TL]:
    """The same, on SQLite and on PostgreSQL."""
    t = TL(store_url)
    yield t
    t.store.close()
