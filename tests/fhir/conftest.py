"""A running engine with the FHIR API, a patient from the ANS corpus, and four callers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from engine.timeline import auth
from tests.timeline.conftest import ANS, events_of, read

CONSENT = (*ANS, "Vague_2", "Consentement_DMP_PAMFR",
           "ConsentementConsultation_NonOppositionAlimentation.er7")
INS = "279035121518989"  # the corpus patient's test NIR (PID-3, OID 1.2.250.1.213.1.4.10)
INSIDE_RPPS = "801234567897"  # PV1-7/17 of that message


@dataclass
class Fhir:
    eng: Any
    base: str
    tokens: dict[str, str]

    @property
    def timeline(self) -> Any:
        return self.eng.engine.timeline

    @property
    def db(self) -> Any:
        return self.eng.store.engine

    def apply(self, raw: bytes, message_id: int) -> dict[str, Any]:
        env = events_of(raw, message_id)
        self.timeline.apply(env)
        return env

    def client(self, who: str | None = "inside") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.AsyncClient(base_url=self.base + "/fhir/r4", headers=headers)

    def audit(self) -> list[dict[str, Any]]:
        from sqlalchemy import select

        from engine.timeline.models import audit_log

        with self.db.connect() as conn:
            return [dict(r) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))
                    .mappings()]


async def start(make_engine: Any, store_url: str) -> Fhir:
    eng = await make_engine(store_url=store_url, http=True)
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    db = eng.store.engine
    tokens = {}
    for name, role, rpps in (("inside", "clinician", INSIDE_RPPS),
                             ("outside", "clinician", "899999999999"),
                             ("ops", "operator", None), ("root", "admin", None)):
        tokens[name] = auth.add_user(db, name, role, rpps)[1]
    f = Fhir(eng, f"http://127.0.0.1:{port}", tokens)
    f.apply(read(*CONSENT), 1)
    return f


@pytest.fixture
async def fhir(make_engine: Any, store_url: str) -> Fhir:
    """On SQLite and on PostgreSQL."""
    return await start(make_engine, store_url)


FHIR_CONVERTER = ("hl7v2", "fhir-converter")
ORU_PARIS15 = ("tests", "loinc", "data", "oru_labo-bio-paris15_12.hl7")
MDM = (*ANS, "Vague_2", "Trans_Doc-CDA-HL7V2", "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1", "MDM",
       "Transmission_initiale_MDM", "message_MDM_CR_Radio_INIT_N1_Base64.er7")


def segments(raw: bytes) -> list[str]:
    text = raw.decode("utf-8")
    return [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]


def with_pid(raw: bytes, pid: str) -> bytes:
    """The message for another patient: its PID segment replaced by `pid`."""
    return ("\r".join(pid if s.startswith("PID|") else s for s in segments(raw))
            + "\r").encode("utf-8")


def consent_pid() -> str:
    return next(s for s in segments(read(*CONSENT)) if s.startswith("PID|"))


def repo_file(*parts: str) -> bytes:
    from pathlib import Path

    return Path(__file__).resolve().parents[2].joinpath(*parts).read_bytes()


def full_record(f: Fhir) -> None:
    """The corpus patient with results, a report, a document, two orders (the second
    possibly redundant) and an appointment, all on patient 1 (message ids 2–6)."""
    pid = consent_pid()
    f.apply(with_pid(repo_file(*ORU_PARIS15), pid), 2)
    f.apply(with_pid(read(*MDM), pid), 3)
    from tests.timeline.test_apply import _order as order  # ORM^O01, prescriber and time set

    f.apply(with_pid(order("3850", "20240301100000", "A1"), pid), 4)
    f.apply(with_pid(order("4000", "20240303100000", "A2"), pid), 5)
    f.apply(with_pid(read(*FHIR_CONVERTER, "SIU-S12-01.hl7"), pid), 6)
