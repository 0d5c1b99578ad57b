"""The message page tells the truth about the ACK (issue #16: a message from an FHS/BHS batch
file showed "ACKNOWLEDGEMENT SENT CA" above "No ACK was sent")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.intake.test_ack_rules import msg
from tests.intake.test_folder import folder_routes, stored, wait_for
from tests.ui.conftest import http_port, login
from tests.ui.timeline_support import create_account


async def test_batch_file_message_says_no_ack_was_sent(make_engine: Any, store_url: str,
                                                       tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    eng = await make_engine(folder_routes(inbox), store_url=store_url, http=True)
    batch = ("FHS|^~\\&|LAB|LABO|PARCOURS|ARS|20261201120000\rBHS|^~\\&|LAB|LABO\r"
             + msg("B-1", accept="AL") + msg("B-2") + "BTS|2\rFTS|1\r")
    (inbox / "batch.hl7").write_text(batch)
    await wait_for(lambda: len(stored(eng)) == 2)
    filed = stored(eng)[0]
    assert filed["remote"] == "file" and filed["ack_code"] == "CA"  # MSH-15 AL: enhanced
    sent = await eng.send(msg("M-1").encode())
    over_mllp = stored(eng)[-1]
    operator = create_account(eng.engine, "op-ack", "operator")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port(eng)}") as client:
        await login(client, operator)
        page = (await client.get(f"/ui/messages/{filed['id']}")).text
        assert "Acknowledgement sent" not in page
        assert "No ACK was sent: the message arrived in a file" in page
        assert f">{filed['ack_code']}</span>" in page.split('id="no-ack"', 1)[1]
        assert 'id="ack"' not in page and 'id="ack-built"' in page  # built, kept, not sent
        second = (await client.get(f"/ui/messages/{stored(eng)[1]['id']}")).text
        assert "Acknowledgement sent" not in second and "arrived in a file" in second

        page = (await client.get(f"/ui/messages/{over_mllp['id']}")).text
        assert "Acknowledgement sent" in page and 'id="no-ack"' not in page
        assert "MSA|AA|M-1" in page and b"MSA|AA|M-1" in sent
