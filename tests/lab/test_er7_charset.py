"""One ER7 reader: `\\Xhh\\` in lab results decoded in the message's declared character set,
in what the normalised-lab destination receives and in the timeline's observations."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.conftest import routes_text
from transformers.hl7.ack import read_ack
from transformers.lab.er7 import observations_from_oru

TEXT = "Présence de Streptocoque à réévaluer"
ORU = ("MSH|^~\\&|LAB|LABO-LATIN|PARCOURS|ARS|20261125120000||ORU^R01^ORU_R01|LAT-1|P|2.5"
       "|||||FRA|8859/1\r"
       "PID|1||123^^^LABO&1.2.3&ISO^PI||MULLER^JOSE||19800101|M\r"
       "OBR|1|PL1|FI1|XGERM^Recherche^L|||20261125110000\r"
       "OBX|1|ST|XGERM^Germe^L||Pr\\XE9\\sence de Streptocoque \\XE0\\ r\\XE9\\\\XE9\\valuer"
       "||||||F\r")


def test_hex_escapes_follow_the_declared_charset() -> None:
    _sender, [obx] = observations_from_oru(ORU, "latin-1")
    assert obx.value == TEXT
    _sender, [obx] = observations_from_oru(ORU.replace("\\XE9\\", "\\XC3A9\\"), "utf-8")
    assert obx.value.startswith("Présence")


async def test_latin1_lab_result_reaches_destinations_readable(make_engine: Any,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    eng = await make_engine(routes_text(
        destinations=f'{{lab: {{type: file, path: "{out}", filename: "{{message_id}}.json"}},'
                     " timeline: {type: timeline}}",
        routes="\n  - {name: lab, when: {message_type: ORU}, transform: [normalise_lab], "
               "to: [lab]}\n"
               "  - {name: tl, when: {message_type: ORU}, transform: [oru_events], "
               "to: [timeline]}\n"), route=True)
    assert read_ack(await eng.send(ORU.encode("latin-1")))[0] == "AA"
    for _ in range(200):
        files = list(out.rglob("*.json"))
        if files:
            break
        await asyncio.sleep(0.05)
    [obs] = json.loads(files[0].read_text(encoding="utf-8"))["observations"]
    assert obs["value_text"] == TEXT and obs["original"]["value"] == TEXT
    from sqlalchemy import select

    from engine.timeline.models import observations

    for _ in range(200):
        with eng.store.engine.connect() as conn:
            values = conn.execute(select(observations.c.value_text)).scalars().all()
        if values:
            break
        await asyncio.sleep(0.05)
    assert values == [TEXT]
