"""Property (issue #16): for any history and any retention policy, pruning removes nothing
still needed — no undelivered delivery or its message's bytes, no accepted/routed/failed
message, no row another row points at, the timeline applied or the backlog names, no dedup
key inside the dedup window — and, run until it has nothing left to do, leaves nothing the
policy allows it to remove. Checked against an oracle written here, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.store.database import Store, content_digest
from engine.store.models import deliveries, delivery_attempts, mapping_backlog_messages, messages
from engine.store.prune import Pruner
from engine.store.retention import from_config
from engine.timeline.models import applied_events
from tests.retention.history import DeliverySpec, MessageSpec, clear, write

SETTLED = {"done", "unrouted", "duplicate", "error", "rejected"}
STATUSES = ["accepted", "routed", "done", "unrouted", "failed", "duplicate", "error",
            "rejected"]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.migrate()
    yield s
    s.close()


days = st.one_of(st.none(), st.sampled_from([0, 1, 5, 10, 30, 60]))
keep = st.fixed_dictionaries({}, optional={"payload_days": days, "attempt_days": days,
                                           "message_days": days})
statuses = st.dictionaries(st.sampled_from(sorted(SETTLED)), keep, max_size=3)
policy_st = st.fixed_dictionaries({"keep": keep, "statuses": statuses}, optional={
    "dedup_window_days": days,
    "channels": st.fixed_dictionaries({}, optional={"a": st.fixed_dictionaries(
        {}, optional={"payload_days": days, "message_days": days, "statuses": statuses})}),
})
age = st.sampled_from([0.5, 2, 7, 20, 45, 90])
delivery_st = st.builds(DeliverySpec, status=st.sampled_from(["pending", "retry", "delivered",
                                                               "dead", "delivered"]),
                        delivered_age=age, attempts=st.lists(age, max_size=2))


@st.composite
def history(draw: st.DrawFn) -> list[MessageSpec]:
    specs: list[MessageSpec] = []
    for i in range(draw(st.integers(1, 14))):
        s = MessageSpec(
            status=draw(st.sampled_from(STATUSES)), age=draw(age),
            channel=draw(st.sampled_from(["a", "b"])), dedup=draw(st.booleans()),
            digest=draw(st.booleans()), applied=draw(st.booleans()),
            backlog=draw(st.sampled_from([None, None, "open", "mapped"])),
            deliveries=draw(st.lists(delivery_st, max_size=2)),
        )
        if i and draw(st.booleans()):
            ref = draw(st.integers(0, i - 1))
            if draw(st.booleans()):
                s.duplicate_of = ref
            else:
                s.reuse_of = ref
        # A delivery is delivered after its message arrived.
        for d in s.deliveries:
            d.delivered_age = min(d.delivered_age, s.age)
        specs.append(s)
    return specs


def _rule(policy: dict[str, Any], channel: str, status: str) -> dict[str, Any]:
    """Most specific wins, field by field (written apart from engine/store/retention.py)."""
    layers = [policy.get("keep") or {}, (policy.get("statuses") or {}).get(status) or {}]
    chan = (policy.get("channels") or {}).get(channel)
    if chan:
        layers.append({k: v for k, v in chan.items() if k != "statuses"})
        layers.append((chan.get("statuses") or {}).get(status) or {})
    out: dict[str, Any] = {}
    for layer in layers:
        out.update({k: v for k, v in layer.items() if v is not None})
    return out


def _snapshot(store: Store) -> dict[str, Any]:
    with store.engine.connect() as conn:
        return {
            "messages": {r.id: r._asdict() for r in conn.execute(select(messages))},
            "deliveries": {r.id: r._asdict() for r in conn.execute(select(deliveries))},
            "attempts": {r.id: r._asdict() for r in conn.execute(select(delivery_attempts))},
            "applied": {r.message_id for r in conn.execute(select(applied_events))},
            "backlog": {r.message_id for r in conn.execute(select(mapping_backlog_messages))},
        }


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _payload_allowed(m: dict[str, Any], dels: list[dict[str, Any]], rule: dict[str, Any],
                     open_backlog: set[int]) -> bool:
    if m["status"] not in SETTLED or rule.get("payload_days") is None:
        return False
    cutoff = NOW - timedelta(days=rule["payload_days"])
    return (_utc(m["received_at"]) < cutoff and m["id"] not in open_backlog
            and all(d["status"] == "delivered" and _utc(d["delivered_at"]) < cutoff
                    for d in dels))


def _row_allowed(m: dict[str, Any], dels: list[dict[str, Any]], rule: dict[str, Any],
                 window: float | None, pointed_at: set[int]) -> bool:
    if m["status"] not in SETTLED or rule.get("message_days") is None:
        return False
    cutoff = NOW - timedelta(days=rule["message_days"])
    if m["dedup_key"] is not None and (
            window is None or _utc(m["received_at"]) >= NOW - timedelta(days=window)):
        return False
    return (_utc(m["received_at"]) < cutoff and m["id"] not in pointed_at
            and all(d["status"] == "delivered" and _utc(d["delivered_at"]) < cutoff
                    for d in dels))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(specs=history(), policy=policy_st)
def test_pruning_never_removes_needed_rows(store: Store, specs: list[MessageSpec],
                                           policy: dict[str, Any]) -> None:
    with store.engine.begin() as conn:
        clear(conn)
        write(conn, specs, NOW)
    before = _snapshot(store)
    open_backlog = {mid for mid, spec in zip(sorted(before["messages"]), specs, strict=True)
                    if spec.backlog == "open"}
    pruner = Pruner(store, from_config(policy))
    for _ in range(len(specs) + 1):  # a pass frees what the previous one unblocked
        report = pruner.run(now=NOW, vacuum=False)
        if not (report.payloads or report.messages or report.attempts):
            break
    after = _snapshot(store)
    window = policy.get("dedup_window_days")
    bm, am = before["messages"], after["messages"]
    dels_of: dict[int, list[dict[str, Any]]] = {mid: [] for mid in bm}
    for d in before["deliveries"].values():
        dels_of[d["message_id"]].append(d)

    # Undelivered deliveries stay whole, with their message's bytes.
    for did, d in before["deliveries"].items():
        if d["status"] != "delivered":
            assert did in after["deliveries"]
            assert after["deliveries"][did]["payload"] == d["payload"]
            assert am[d["message_id"]]["raw"] == bm[d["message_id"]]["raw"]
    # Messages not settled are untouched.
    for mid, m in bm.items():
        if m["status"] not in SETTLED:
            assert am.get(mid) == m
    # What the timeline and the backlog point at is never deleted; neither are those rows.
    assert after["applied"] == before["applied"]
    assert after["backlog"] == before["backlog"]
    assert before["applied"] <= set(am) and before["backlog"] <= set(am)
    survivors_point_at = {m[k] for m in am.values() for k in ("duplicate_of", "reuse_of")
                          if m[k] is not None}
    assert survivors_point_at <= set(am)

    pointed_at_after = survivors_point_at | before["applied"] | before["backlog"]
    for mid, m in bm.items():
        rule = _rule(policy, m["channel"], m["status"])
        if mid not in am:  # deleted: was it allowed?
            assert _row_allowed(m, dels_of[mid], rule, window, pointed_at_after), m["id"]
            assert all(d["message_id"] != mid for d in after["deliveries"].values())
            continue
        now_m = am[mid]
        if now_m["pruned_at"] is not None:
            assert _payload_allowed(m, dels_of[mid], rule, open_backlog)
            assert bytes(now_m["raw"]) == b""
            # A resend of it is still recognised: the digest of the bytes it had.
            assert now_m["content_digest"] == (m["content_digest"] or content_digest(
                bytes(m["raw"])))
        else:
            assert now_m["raw"] == m["raw"]
            # Maximal: nothing the policy allows is left behind.
            assert not _payload_allowed(m, dels_of[mid], rule, open_backlog), mid
        assert not _row_allowed(m, dels_of[mid], rule, window, pointed_at_after), mid
    # Delivered payloads are emptied only with their message's bytes.
    for did, d in after["deliveries"].items():
        if bytes(d["payload"]) != bytes(before["deliveries"][did]["payload"]):
            assert d["status"] == "delivered" and am[d["message_id"]]["pruned_at"] is not None
    # Attempts go with their delivery, or are attempts of a delivered one past its days.
    for aid, a in before["attempts"].items():
        if aid in after["attempts"]:
            continue
        d = before["deliveries"][a["delivery_id"]]
        m = bm[d["message_id"]]
        if d["message_id"] in am:
            rule = _rule(policy, m["channel"], m["status"])
            assert d["status"] == "delivered" and m["status"] in SETTLED
            assert rule.get("attempt_days") is not None
            assert _utc(a["at"]) < NOW - timedelta(days=rule["attempt_days"])
    for aid, a in after["attempts"].items():  # maximal for attempts too
        d = after["deliveries"][a["delivery_id"]]
        m = am[d["message_id"]]
        days_kept = _rule(policy, m["channel"], m["status"]).get("attempt_days")
        if d["status"] == "delivered" and m["status"] in SETTLED and days_kept is not None:
            assert _utc(a["at"]) >= NOW - timedelta(days=days_kept), aid
