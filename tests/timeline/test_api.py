"""/api/v1 over real HTTP on both stores: auth, roles, care circle, masking, audit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.timeline import auth, care_circle
from engine.timeline.models import audit_log, documents

from .conftest import ANS, DOCS, events_of, read

CONSENT = (*ANS, "Vague_2", "Consentement_DMP_PAMFR",
           "ConsentementConsultation_NonOppositionAlimentation.er7")
MDM = (*DOCS, "MDM", "Transmission_initiale_MDM", "message_MDM_CR_Radio_INIT_N1_Base64.er7")


async def _start(make_engine: Any, store_url: str, env: dict[str, str] | None = None) -> Any:
    eng = await make_engine(store_url=store_url, http=True, extra_env=env)
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    return eng, f"http://127.0.0.1:{port}"


def _audit(eng: Any) -> list[dict[str, Any]]:
    from sqlalchemy import select

    with eng.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))
                .mappings()]


async def test_access_rules_and_audit(make_engine: Any, store_url: str) -> None:
    eng, base = await _start(make_engine, store_url)
    tl = eng.engine.timeline
    tl.apply(events_of(read(*CONSENT), 1))  # PV1-7/17: 801234567897 (Dr Réault)
    db = eng.store.engine
    _, inside = auth.add_user(db, "reault", "clinician", "801234567897")
    _, outside = auth.add_user(db, "other", "clinician", "899999999999")
    _, operator = auth.add_user(db, "ops", "operator")
    _, admin = auth.add_user(db, "root", "admin")

    async with httpx.AsyncClient(base_url=base) as c:
        def h(tok: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tok}"}

        r = await c.get("/api/v1/patients", params={"identifier": "INS|279035121518989"})
        assert r.status_code == 401
        r = await c.get("/api/v1/patients/1/timeline", headers=h("pct_wrong"))
        assert r.status_code == 401
        r = await c.get("/api/v1/patients/1/timeline", headers=h(operator))
        assert r.status_code == 403
        r = await c.get("/api/v1/patients", params={"identifier": "INS|279035121518989"},
                        headers=h(outside))
        assert r.status_code == 200 and r.json()["patients"] == []
        pid = tl.patient_count() and 1
        r = await c.get(f"/api/v1/patients/{pid}/timeline", headers=h(outside))
        assert r.status_code == 403
        r = await c.get("/api/v1/patients/999/timeline", headers=h(outside))
        assert r.status_code == 403  # same answer whether the patient exists or not

        r = await c.get("/api/v1/patients", params={"identifier": "INS|279035121518989"},
                        headers=h(inside))
        assert r.status_code == 200
        (found,) = r.json()["patients"]
        assert found["ins"] == "279035121518989" and found["dmp"]["feeding_opposition"] is False
        r = await c.get(f"/api/v1/patients/{found['id']}/timeline", headers=h(inside))
        assert r.status_code == 200
        body = r.json()
        assert {e["type"] for e in body["events"]} == {"stay", "movement"}
        r = await c.get(f"/api/v1/patients/{found['id']}/timeline",
                        params={"type": "movement", "limit": 1}, headers=h(inside))
        assert [e["type"] for e in r.json()["events"]] == ["movement"]
        r = await c.get(f"/api/v1/patients/{found['id']}/timeline",
                        params={"from": "2030-01-01T00:00:00Z"}, headers=h(inside))
        assert r.json()["events"] == []
        r = await c.get(f"/api/v1/patients/{found['id']}/timeline", headers=h(admin))
        assert r.status_code == 200

        # explicit grant
        r = await c.get(f"/api/v1/patients/{found['id']}/timeline", headers=h(outside))
        assert r.status_code == 403
        care_circle.grant(db, found["id"], "other", "test")
        r = await c.get(f"/api/v1/patients/{found['id']}/timeline", headers=h(outside))
        assert r.status_code == 200
        assert (await c.get("/openapi.json")).json()["paths"]["/api/v1/patients/{patient_id}"
                                                              "/timeline"]

    rows = _audit(eng)
    outcomes = [(r["actor"], r["action"], r["outcome"]) for r in rows]
    assert ("ops", "timeline", "denied") in outcomes  # refused by role, and audited
    assert ("other", "timeline", "denied") in outcomes
    assert ("reault", "timeline", "allowed") in outcomes
    assert ("reault", "search", "allowed") in outcomes
    assert ("other", "timeline", "allowed") in outcomes
    reads = [r for r in rows if r["outcome"] == "allowed" and r["action"] == "timeline"]
    assert all(r["patient_id"] == found["id"] and r["remote"] for r in reads)
    assert len(reads) == 5  # every allowed timeline read left a row


async def test_operator_read_attempts_are_audited(make_engine: Any, tmp_path: Path) -> None:
    eng, base = await _start(make_engine, f"sqlite:///{tmp_path / 'a.db'}")
    eng.engine.timeline.apply(events_of(read(*CONSENT), 1))
    _, operator = auth.add_user(eng.store.engine, "ops", "operator")
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.get("/api/v1/patients/1/timeline",
                        headers={"Authorization": f"Bearer {operator}"})
    assert r.status_code == 403
    assert [(a["actor"], a["outcome"]) for a in _audit(eng)] == [("ops", "denied")]


async def test_masking_and_documents(make_engine: Any, store_url: str) -> None:
    eng, base = await _start(make_engine, store_url)
    tl, db = eng.engine.timeline, eng.store.engine
    raw = read(*MDM)
    flag = "MASQUE_PS^Masqué aux professionnels de Santé^MetaDMPMSS||".encode()
    masked = raw.replace(flag + b"N", flag + b"Y")
    assert masked != raw
    tl.apply(events_of(masked, 1))
    pid = 1
    _, author = auth.add_user(db, "eric", "clinician", "801234564895")  # the CDA's author
    _, colleague = auth.add_user(db, "col", "clinician", "811111111111")
    care_circle.grant(db, pid, "eric", "test")
    care_circle.grant(db, pid, "col", "test")
    from sqlalchemy import select

    with db.connect() as conn:
        doc_id = conn.execute(select(documents.c.id)).scalar_one()
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.get(f"/api/v1/patients/{pid}/timeline",
                        headers={"Authorization": f"Bearer {colleague}"})
        assert r.status_code == 200 and r.json()["events"] == []
        r = await c.get(f"/api/v1/documents/{doc_id}",
                        headers={"Authorization": f"Bearer {colleague}"})
        assert r.status_code == 404
        r = await c.get(f"/api/v1/patients/{pid}/timeline",
                        headers={"Authorization": f"Bearer {author}"})
        (ev,) = r.json()["events"]
        assert ev["masking"]["MASQUE_PS"] is True and ev["document_id"] == doc_id
        r = await c.get(f"/api/v1/documents/{doc_id}",
                        headers={"Authorization": f"Bearer {author}"})
        assert r.status_code == 200 and r.content.startswith(b"<ClinicalDocument")
        assert r.headers["content-type"].startswith("application/xml")
    assert [a["action"] for a in _audit(eng) if a["actor"] == "eric"] == ["timeline",
                                                                          "document"]


async def test_observation_series(make_engine: Any, store_url: str) -> None:
    eng, base = await _start(make_engine, store_url)
    tl, db = eng.engine.timeline, eng.store.engine
    tl.apply(events_of(read("hl7v2", "fhir-converter", "LAB-ORU-1.hl7"), 1))
    _, admin = auth.add_user(db, "root", "admin")
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.get("/api/v1/patients/1/observations", params={"loinc": "26450-7"},
                        headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200
        body = r.json()
        (point,) = body["points"]
        assert body["unit"] == "%" and point["value"] == "2"
        assert point["original"]["value"] == "2" and point["message_id"] == 1
        r = await c.get("/api/v1/patients/1/observations", params={"loinc": "drop table"},
                        headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 422
    assert [a["action"] for a in _audit(eng)] == ["observations"]


async def test_oidc_jwt(make_engine: Any, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    jwt = pytest.importorskip("jwt")
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    for k, v in {"PARCOURS_OIDC_JWKS": str(jwks), "PARCOURS_OIDC_ISSUER": "https://psc.example",
                 "PARCOURS_OIDC_AUDIENCE": "parcours"}.items():
        monkeypatch.setenv(k, v)
    eng, base = await _start(make_engine, f"sqlite:///{tmp_path / 'o.db'}")
    eng.engine.timeline.apply(events_of(read(*CONSENT), 1))
    auth.add_user(eng.store.engine, "reault", "clinician", "801234567897")

    def token(**over: Any) -> str:
        claims = {"sub": "f:abc", "SubjectNameID": "801234567897", "iss": "https://psc.example",
                  "aud": "parcours", "exp": int(time.time()) + 300} | over
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"sub": "x", "SubjectNameID": "801234567897", "iss":
                         "https://psc.example", "aud": "parcours",
                         "exp": int(time.time()) + 300}, other, algorithm="RS256",
                        headers={"kid": "k1"})
    async with httpx.AsyncClient(base_url=base) as c:
        async def get(tok: str) -> int:
            r = await c.get("/api/v1/patients/1/timeline",
                            headers={"Authorization": f"Bearer {tok}"})
            return r.status_code

        assert await get(token()) == 200
        assert await get(token(exp=int(time.time()) - 10)) == 401
        assert await get(token(aud="someone-else")) == 401
        assert await get(forged) == 401
        assert await get(token(SubjectNameID="899999999999", sub="nobody")) == 401
