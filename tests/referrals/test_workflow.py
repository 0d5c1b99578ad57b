"""The one model: transitions, care circle from acceptance to the end of the grace, the
same HL7 event applied again, a modification that asks for a refused transition."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from engine.referrals import Referrals, ReferralSettings, TransitionError
from engine.referrals import workflow as wf
from engine.referrals.models import referral_history, referrals
from engine.timeline.apply import register_event_type
from engine.timeline.auth import Principal, add_user
from engine.timeline.care_circle import may_read
from tests.timeline.conftest import TL, events_of

from .support import DAC, ref


@pytest.fixture
def dac(store_url: str) -> Any:
    tl = TL(store_url)
    svc = Referrals(tl.store.engine, ReferralSettings(grace_days=0))
    register_event_type("referral", svc.apply_hl7)
    svc.add_structure(DAC, "DAC Paris Centre")
    uid, _ = add_user(tl.store.engine, "coord", "clinician", "10000000011")
    svc.add_member(DAC, "coord")
    tl.svc = svc
    tl.coord = Principal(uid, "coord", "clinician", "10000000011", "token")
    yield tl
    tl.store.close()


def _only(tl: Any) -> dict[str, Any]:
    [r] = tl.rows(referrals)
    return r


def _reads(tl: Any, who: Principal) -> bool:
    with tl.store.engine.connect() as conn:
        return may_read(conn, who, _only(tl)["patient_id"], 90)


def test_transitions_table() -> None:
    wf.check(wf.REQUESTED, wf.ACCEPTED)
    wf.check(wf.ON_HOLD, wf.IN_PROGRESS)
    with pytest.raises(TransitionError, match="allowed from requested: accepted, cancelled, "
                                              "expired, rejected"):
        wf.check(wf.REQUESTED, wf.COMPLETED)
    with pytest.raises(TransitionError, match="none \\(the request is closed\\)"):
        wf.check(wf.CANCELLED, wf.ACCEPTED)
    with pytest.raises(TransitionError, match="unknown status 'done'"):
        wf.check(wf.ACCEPTED, "done")
    # every status has its FHIR and HL7 names
    assert set(wf.SERVICE_REQUEST_STATUS) == set(wf.RF1_STATUS) == set(wf.STATUSES)


def test_care_circle_from_acceptance_to_closure(dac: Any) -> None:
    dac.apply(ref("I12", "W-1"), message_id=1)
    rid = _only(dac)["id"]
    assert not _reads(dac, dac.coord)
    dac.svc.act(dac.coord, rid, "accepted")
    assert _reads(dac, dac.coord)
    dac.svc.act(dac.coord, rid, "in-progress")
    dac.svc.act(dac.coord, rid, "completed")  # grace 0: the access ends with the request
    assert not _reads(dac, dac.coord)
    with pytest.raises(TransitionError):
        dac.svc.act(dac.coord, rid, "accepted")


def test_the_grace_keeps_access_for_a_while(store_url: str) -> None:
    tl = TL(store_url)
    svc = Referrals(tl.store.engine, ReferralSettings(grace_days=30))
    register_event_type("referral", svc.apply_hl7)
    svc.add_structure(DAC, "DAC")
    uid, _ = add_user(tl.store.engine, "coord", "clinician", None)
    svc.add_member(DAC, "coord")
    who = Principal(uid, "coord", "clinician", None, "token")
    tl.apply(ref("I12", "G-1"), message_id=1)
    rid = tl.rows(referrals)[0]["id"]
    svc.act(who, rid, "accepted")
    svc.act(who, rid, "cancelled")
    with tl.store.engine.connect() as conn:
        assert may_read(conn, who, tl.rows(referrals)[0]["patient_id"], 90)
    tl.store.close()


def test_same_event_again_changes_nothing(dac: Any) -> None:
    env = events_of(ref("I12", "R-1"), message_id=7)
    dac.timeline.apply(env)
    dac.timeline.apply(env)  # a redelivery
    dac.timeline.apply(env, generation=1)  # an operator's replay: applied, nothing new
    assert len(dac.rows(referrals)) == 1
    assert [h["action"] for h in dac.rows(referral_history)] == ["created"]


def test_modification_asking_a_refused_transition_is_recorded(dac: Any) -> None:
    dac.apply(ref("I12", "M-1"), message_id=1)
    rid = _only(dac)["id"]
    dac.svc.act(dac.coord, rid, "rejected", reason="hors territoire")
    dac.apply(ref("I13", "M-2", status="A"), message_id=2)  # the requester says "accepted"
    assert _only(dac)["status"] == "rejected"
    last = dac.rows(referral_history, referral_history.c.referral_id == rid)[-1]
    assert last["action"] == "refused" and "a request rejected cannot become accepted" \
        in last["detail"]


def test_transfer_to_another_structure(dac: Any) -> None:
    dac.svc.add_structure("750000002", "DAC Paris Est")
    dac.apply(ref("I12", "X-1"), message_id=1)
    rid = _only(dac)["id"]
    dac.svc.act(dac.coord, rid, "accepted")
    out = dac.svc.act(dac.coord, rid, "transfer", structure_id="750000002")
    assert (out["status"], out["structure_id"]) == ("requested", "750000002")
    assert not _reads(dac, dac.coord)  # grace 0: the first structure's access ended
    with dac.store.engine.connect() as conn:
        assert conn.execute(select(referrals.c.coordinator)).scalar() is None
    from engine.referrals import NotFound

    with pytest.raises(NotFound):  # no longer its structure's request
        dac.svc.read(dac.coord, rid)


def test_modification_keeps_what_it_leaves_out(dac: Any) -> None:
    dac.apply(ref("I12", "K-1"), message_id=1)
    dac.apply(ref("I13", "K-2", structure=None, priority="S"), message_id=2)
    r = _only(dac)
    assert (r["structure_id"], r["priority"]) == (DAC, "stat")  # still the DAC's request
    assert dac.svc.worklist(dac.coord)[0]["id"] == r["id"]
