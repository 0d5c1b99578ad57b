"""The store-backed record of document versions the `dmp` destination submitted, per set.

Why in the store: the DMP must receive each correction of a report as the next version,
replacing the latest one it holds (CDA R2 §4.2.3.1 RPLC; ITI-41 RPLC association). The
transformer that builds the CR-BIO is pure and the DMP cannot be asked by setId, so the feed
remembers what it numbered and what it got accepted; the store is the truth, so the record
survives restarts and is shared by every engine process.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from channels.outbound.dmp import SetVersion
from engine.store.models import dmp_documents

RESERVED = "reserved"
SUBMITTED = "submitted"
DELETED = "deleted"


class StoreDocumentVersions:
    """`channels.outbound.dmp.DocumentVersions` on the Parcours store (SQLite, PostgreSQL)."""

    def __init__(self, engine: Engine, attempts: int = 5) -> None:
        self.engine = engine
        self.attempts = attempts

    def reserve(self, destination: str, set_id: str, key: str) -> SetVersion:
        """The delivery's version (kept across retries: same key, same version) and the
        latest submitted version below it, which the document replaces.

        Two processes numbering the same set at once meet the unique (set, version)
        constraint; the loser reads again and takes the next number.
        """
        d = dmp_documents.c
        for _ in range(self.attempts):
            try:
                with self.engine.begin() as conn:
                    version = conn.execute(select(d.version).where(
                        d.destination == destination, d.idempotency_key == key)).scalar()
                    if version is None:
                        top = conn.execute(select(func.max(d.version)).where(
                            d.destination == destination, d.set_id == set_id)).scalar()
                        version = int(top or 0) + 1
                        now = datetime.now(UTC)
                        conn.execute(insert(dmp_documents).values(
                            destination=destination, set_id=set_id, version=version,
                            unique_id="", idempotency_key=key, status=RESERVED,
                            created_at=now, updated_at=now))
                    previous = conn.execute(
                        select(d.unique_id).where(d.destination == destination,
                                                  d.set_id == set_id, d.status == SUBMITTED,
                                                  d.version < version)
                        .order_by(d.version.desc()).limit(1)).scalar()
                    return SetVersion(int(version), previous or "")
            except IntegrityError:
                continue
        raise RuntimeError(f"could not number a version of set {set_id!r} after "
                           f"{self.attempts} attempts")

    def submitted(self, destination: str, key: str, unique_id: str) -> None:
        """The DMP accepted the version: later ones replace it."""
        d = dmp_documents.c
        with self.engine.begin() as conn:
            conn.execute(update(dmp_documents)
                         .where(d.destination == destination, d.idempotency_key == key)
                         .values(status=SUBMITTED, unique_id=unique_id,
                                 updated_at=datetime.now(UTC)))

    def latest(self, destination: str, set_id: str) -> str:
        """uniqueId of the set's latest version the DMP accepted ("" if none): what a
        deletion of the report removes."""
        d = dmp_documents.c
        with self.engine.connect() as conn:
            found = conn.execute(
                select(d.unique_id).where(d.destination == destination, d.set_id == set_id,
                                          d.status == SUBMITTED)
                .order_by(d.version.desc()).limit(1)).scalar()
        return found or ""

    def deleted(self, destination: str, unique_id: str) -> None:
        """The DMP deleted the version: a later correction must not name it as replaced."""
        d = dmp_documents.c
        with self.engine.begin() as conn:
            conn.execute(update(dmp_documents)
                         .where(d.destination == destination, d.unique_id == unique_id)
                         .values(status=DELETED, updated_at=datetime.now(UTC)))
