"""Property (issue #15): for any sequence of arrivals — new messages, identical resends,
resends differing only in MSH-7, new content under a seen control id — committed in any
batching, every arrival answered AA/CA is either a message the router will process, or an
identical resend of one that is. Run on both stores, through intake's real decision and the
group commit's real write path."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.intake.group_commit import GroupCommitter
from engine.intake.handler import Intake, IntakePolicy
from engine.store.database import Store
from engine.store.models import MessageStatus, messages
from tests.intake.test_ack_rules import msg
from tests.intake.test_reuse import _content, with_msh7

_channels = itertools.count(1)  # one channel per example: its own dedup keys


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.migrate()
    yield s
    s.close()

# (what, which earlier message, new batch here?)
step = st.tuples(st.sampled_from(["new", "resend", "msh7", "reuse", "crlf"]),
                 st.integers(0, 50), st.booleans())


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=30),
       policy=st.sampled_from(["process", "refuse"]), enhanced=st.booleans())
def test_no_aa_is_left_unprocessed(store: Store, steps: list[tuple[str, int, bool]],
                                   policy: str, enhanced: bool) -> None:
    channel = f"p{next(_channels)}"
    intake = Intake(GroupCommitter(store.save_arrivals))
    pol = IntakePolicy(channel=channel, on_reused_control_id=policy)
    sent: list[str] = []
    versions = itertools.count(1)
    batches: list[list[Any]] = [[]]
    for what, pick, cut in steps:
        if what == "new" or not sent:
            text = msg(f"C{len(sent)}", accept="AL" if enhanced else "")
        else:
            earlier = sent[pick % len(sent)]
            if what == "resend":
                text = earlier
            elif what == "msh7":
                text = with_msh7(earlier, f"2026112513{next(versions):04d}")
            elif what == "crlf":
                text = earlier.replace("\r", "\r\n")
            else:  # same MSH, another patient name: new content under a seen MSH-10
                text = earlier.replace("PID|1||12345", f"PID|1||{next(versions)}")
        sent.append(text)
        if cut and batches[-1]:
            batches.append([])
        batches[-1].append(intake.decide(text.encode(), pol).arrival)

    answered: list[tuple[Any, Any]] = []
    for batch in batches:
        answered.extend(zip(batch, store.save_arrivals(batch), strict=True))
    with store.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(
            select(messages.c.id, messages.c.raw, messages.c.status, messages.c.duplicate_of)
            .where(messages.c.channel == channel))}
    processed: set[tuple[str | None, bytes]] = set()
    for arrival, saved in answered:
        code = (saved.original_ack_code if saved.duplicate_of is not None
                else saved.refusal_code if saved.refused else arrival.ack_code)
        row = rows[saved.id]
        if code not in ("AA", "CA"):
            assert row.status != MessageStatus.ACCEPTED  # refused: never processed
            continue
        if saved.duplicate_of is None:
            assert row.status == MessageStatus.ACCEPTED  # the router takes it
            key = (arrival.control_id, _content(bytes(row.raw)))
            assert key not in processed  # and nothing is processed twice
            processed.add(key)
        else:
            original = rows[saved.duplicate_of]
            assert row.status == MessageStatus.DUPLICATE
            assert original.status == MessageStatus.ACCEPTED
            assert _content(bytes(original.raw)) == _content(bytes(row.raw))

