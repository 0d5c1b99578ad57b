"""The audit log says what happened: the outcome returned (allowed, denied, not_found,
error), the parameters that changed what was read, and failed authentications — on both
stores, over real HTTP."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from engine.timeline import auth
from engine.timeline.models import api_tokens, audit_log
from tests.timeline.conftest import events_of, read
from tests.timeline.test_api import CONSENT, MDM


async def start(make_engine: Any, store_url: str, env: dict[str, str] | None = None) -> Any:
    eng = await make_engine(store_url=store_url, http=True, extra_env=env)
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    return eng, f"http://127.0.0.1:{port}"


def rows(eng: Any) -> list[dict[str, Any]]:
    with eng.store.engine.connect() as conn:
        out = [dict(r) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))
               .mappings()]
    for r in out:
        r["detail"] = json.loads(r["detail"] or "{}")
    return out


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def test_outcomes_are_what_the_caller_got(make_engine: Any, store_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    eng, base = await start(make_engine, store_url)
    tl, db = eng.engine.timeline, eng.store.engine
    tl.apply(events_of(read(*MDM), 1))
    _, admin = auth.add_user(db, "root", "admin")
    _, ops = auth.add_user(db, "ops", "operator")
    async with httpx.AsyncClient(base_url=base) as c:
        assert (await c.get("/api/v1/documents/999", headers=bearer(admin))).status_code == 404
        assert (await c.get("/api/v1/patients/1", headers=bearer(ops))).status_code == 403
        assert (await c.get("/api/v1/patients/777", headers=bearer(admin))).status_code == 403
        r = await c.get("/api/v1/patients/1/timeline", headers=bearer(admin),
                        params={"include_inactive": "true", "type": "document",
                                "from": "2020-01-01T00:00:00Z", "limit": "7"})
        assert r.status_code == 200
        got = rows(eng)
        assert [(a["action"], a["outcome"]) for a in got] == [
            ("document", "not_found"), ("patient", "denied"), ("patient", "denied"),
            ("timeline", "allowed")]
        assert got[2]["detail"]["exists"] is False and got[1]["detail"]["exists"] is True
        assert got[3]["detail"]["include_inactive"] is True
        assert got[3]["detail"]["types"] == ["document"] and got[3]["detail"]["limit"] == 7
        assert got[3]["detail"]["from"].startswith("2020-01-01")

        # A read that fails inside the timeline: its row says error, and the request's
        # failure row follows (the exception path), naming the caller.
        def broken(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(type(tl), "_summary", broken)
        before = len(rows(eng))
        r = await c.get("/api/v1/patients/1", headers=bearer(admin))
        assert r.status_code == 500
        new = rows(eng)[before:]
        assert ("patient", "error", "root") in [(a["action"], a["outcome"], a["actor"])
                                                for a in new]
        failed = [a for a in new if a["action"] == "request_failed"]
        assert len(failed) == 1 and failed[0]["outcome"] == "error"
        assert failed[0]["actor"] == "root" and failed[0]["patient_id"] == 1
        assert failed[0]["detail"]["error"] == "RuntimeError"
        # The exception text may hold patient data: only its type is recorded.
        assert "disk on fire" not in json.dumps(new, default=str)

        # A failure before the timeline wrote anything still leaves a row.
        monkeypatch.setattr(type(tl), "find_patients", broken)
        before = len(rows(eng))
        r = await c.get("/api/v1/patients", params={"identifier": "INS|1"},
                        headers=bearer(admin))
        assert r.status_code == 500
        new = rows(eng)[before:]
        assert [(a["action"], a["outcome"]) for a in new] == [("request_failed", "error")]


async def test_failed_logins_say_who_from_where_and_why_never_the_token(
        make_engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
    eng, base = await start(make_engine, f"sqlite:///{tmp_path / 'a.db'}")
    db = eng.store.engine
    eng.engine.timeline.apply(events_of(read(*CONSENT), 1))
    _, revoked = auth.add_user(db, "gone", "clinician", "801234567897")
    auth.revoke_tokens(db, "gone")
    uid, _ = auth.add_user(db, "late", "clinician")
    expired = auth.new_token(db, uid, expires_at=datetime.now(UTC) - timedelta(minutes=1))

    def claims(**over: Any) -> dict[str, Any]:
        return {"sub": "f:claimed-user", "iss": "https://psc.example", "aud": "parcours",
                "exp": int(time.time()) + 300} | over

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(sub="f:forger"), other, algorithm="RS256",
                        headers={"kid": "k1"})
    expired_jwt = jwt.encode(claims(sub="f:late", exp=int(time.time()) - 60), key,
                             algorithm="RS256", headers={"kid": "k1"})
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    alg_none = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(sub='f:admin'))}."
    cases = {"pct_unknown-token-value": ("claimed:unknown", "unknown_token"),
             revoked: ("claimed:gone", "revoked"), expired: ("claimed:late", "expired"),
             forged: ("claimed:f:forger", "forged"), expired_jwt: ("claimed:f:late",
                                                                   "expired_jwt"),
             alg_none: ("claimed:f:admin", "alg_not_allowed")}
    async with httpx.AsyncClient(base_url=base) as c:
        for tok in cases:
            r = await c.get("/api/v1/patients/1/timeline", headers=bearer(tok))
            assert r.status_code == 401
    got = [a for a in rows(eng) if a["action"] == "authenticate"]
    assert [(a["actor"], a["detail"]["reason"]) for a in got] == list(cases.values())
    for a in got:
        assert a["outcome"] == "denied" and a["remote"].startswith("127.0.0.1:")
        assert a["detail"]["where"] == "/api/v1/patients/1/timeline"
    dump = json.dumps(rows(eng), default=str)
    for tok in cases:
        assert tok not in dump
        signature = tok.split(".")[-1]
        assert not signature or signature[:20] not in dump
    with db.connect() as conn:  # tokens are stored hashed only
        assert not conn.execute(select(api_tokens).where(
            api_tokens.c.token_hash == revoked)).first()


async def test_failed_ui_sign_in_is_audited(make_engine: Any, store_url: str) -> None:
    from tests.ui.conftest import Account, login

    eng, base = await start(make_engine, store_url)
    _, token = auth.add_user(eng.store.engine, "ops", "operator")
    async with httpx.AsyncClient(base_url=base) as c:
        r = await login(c, Account("ops", "pct_not-it", "operator"))
        assert r.status_code == 401
        r = await login(c, Account("someone-else", token, "operator"))
        assert r.status_code == 401
    got = [(a["actor"], a["detail"]["reason"], a["detail"]["where"]) for a in rows(eng)
           if a["action"] == "authenticate"]
    assert got == [("claimed:ops", "unknown_token", "/ui/login"),
                   ("claimed:someone-else", "wrong_user", "/ui/login")]
    assert token not in json.dumps(rows(eng), default=str)
