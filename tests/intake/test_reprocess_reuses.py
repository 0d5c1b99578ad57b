"""`parcours messages reprocess-reuses`: the reuses stored as 'duplicate' by versions before
issue #15 become new accepted messages that the router routes; identical resends stay
resends; a second run does nothing. On both stores, through the CLI a user runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from engine.cli.main import main
from engine.intake.group_commit import GroupCommitter
from engine.intake.handler import Intake, IntakePolicy
from engine.store.database import Store
from engine.store.models import messages
from tests.intake.test_ack_rules import msg
from tests.intake.test_reuse import delivered, routes, settled, with_msh7

LEGACY_ERROR = "MSH-10 reused with different content: kept, not processed"


def _legacy_store(url: str) -> list[int]:
    """What a store written by an older version looks like: the first message under MSH-10
    L-1 accepted, everything after it under the same id 'duplicate' of it, no digests."""
    store = Store(url)
    store.migrate()
    intake = Intake(GroupCommitter(store.save_arrivals))
    pol = IntakePolicy(channel="main")
    texts = [
        msg("L-1"),
        msg("L-1"),  # an identical resend
        msg("L-1", name="MARTIN^PAUL"),  # a reuse
        with_msh7(msg("L-1", name="MARTIN^PAUL"), "20261126090000"),  # the reuse resent
        msg("L-1", name="DURAND^ANNE"),  # another reuse
    ]
    saved = store.save_arrivals([intake.decide(t.encode(), pol).arrival for t in texts])
    ids = [s.id for s in saved]
    with store.engine.begin() as conn:
        conn.execute(update(messages).values(content_digest=None))
        for mid, text in zip(ids[1:], texts[1:], strict=True):
            differs = "PAUL" in text or "ANNE" in text
            conn.execute(update(messages).where(messages.c.id == mid).values(
                status="duplicate", duplicate_of=ids[0], reuse_of=None, dedup_key=None,
                error=LEGACY_ERROR if differs else None))
    store.close()
    return ids


def run_cli(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["messages", *args, "--store-url", url])
    assert exit_.value.code == 0
    return capsys.readouterr().out


async def test_reprocess_turns_stored_reuses_into_routed_messages(
    make_engine: Any, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    first, resend, reuse, reuse_resend, other = _legacy_store(store_url)
    out = run_cli(capsys, store_url, "reprocess-reuses")
    assert f"message {reuse} (main, control id L-1): reused the id of message {first}" in out
    assert f"message {other} (main, control id L-1): reused the id of message {first}" in out
    assert f"message {reuse_resend} (main, control id L-1): a resend of message {reuse}" in out
    assert f"message {resend} " not in out  # an identical resend is left alone
    assert "2 reuse(s) reprocessed, 1 resend(s) of them re-pointed" in out

    listing = run_cli(capsys, store_url, "list", "--reused")
    assert f"reused id of {first}" in listing and "2 message(s)" in listing

    eng = await make_engine(routes(tmp_path / "out", tmp_path / "in"), store_url=store_url,
                            route=True)
    rows = {r["id"]: r for r in await settled(eng, 5)}
    assert {i: rows[i]["status"] for i in (first, resend, reuse, reuse_resend, other)} == {
        first: "done", resend: "duplicate", reuse: "done", reuse_resend: "duplicate",
        other: "done"}
    assert rows[reuse_resend]["duplicate_of"] == reuse and rows[resend]["duplicate_of"] == first
    assert rows[reuse]["error"] is None and rows[reuse]["reuse_of"] == first
    assert set(delivered(eng)) == {first, reuse, other}
    assert b"MARTIN^PAUL" in (tmp_path / "out" / f"{reuse}.hl7").read_bytes()

    # The reprocessed message now answers its own resends, as any new arrival would.
    ack = await eng.send(msg("L-1", name="MARTIN^PAUL").encode())
    with eng.store.engine.connect() as conn:
        last = conn.execute(select(messages.c.duplicate_of, messages.c.ack)
                            .order_by(messages.c.id.desc()).limit(1)).one()
    assert last.duplicate_of == reuse and ack == bytes(last.ack)

    again = run_cli(capsys, store_url, "reprocess-reuses")
    assert "nothing to reprocess" in again
