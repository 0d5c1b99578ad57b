"""REF messages as a GP's software sends them, and an engine that routes them."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import routes_text

DAC = "750000001"  # FINESS of the support structure under test
INS = "279035121518989"
GP_RPPS = "810000000001"

ROUTES = routes_text(
    destinations="""
  timeline: {type: timeline}
  replies: {type: file, path: "${PARCOURS_HOME}/out/rri", filename: "{message_id}_{route}.hl7"}
""",
    routes="""
  - {name: referrals-timeline, when: {message_type: REF}, transform: [ref_events], to: [timeline]}
  - name: referral-response
    when: {message_type: REF}
    transform: [referral_response]
    to: [replies]
""")


def ref(trigger: str, control_id: str, *, ref_id: str = "DEM-1", status: str = "P",
        structure: str | None = DAC, pid: bool = True, reason: str = "O^provider ordered^HL70336",
        priority: str = "R", note: str = "Isolement, chutes répétées") -> bytes:
    segs = [
        f"MSH|^~\\&|MEDIGP|CAB-DUPONT|PARCOURS|GHT|20261201101500||REF^{trigger}^REF_I12|"
        f"{control_id}|P|2.5|||||FRA|UNICODE UTF-8",
        f"RF1|{status}|{priority}^^HL70280|Med^Medical^HL70281|AM^Assume management^HL70282|O|"
        f"{ref_id}^MEDIGP^1.2.250.1.999.1^ISO|20261201101000|20270101||{reason}",
        f"PRD|RP|DUPONT^Jeanne^^^Dr||^^^^^^^^Cabinet Dupont|||{GP_RPPS}^RPPS",
    ]
    if structure is not None:
        segs.append(f"PRD|RT|DAC Paris Centre||^^^^^^^^DAC Paris Centre|||{structure}^FINESS")
    if pid:
        segs.append(f"PID|1||{INS}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS~"
                    "PAT-77^^^CAB-DUPONT^PI||MARTIN^Paul^^^^^L||19450321|M" + "|" * 24 + "VALI")
    segs += ["DG1|1||Z60.2^Personne vivant seule^I10", f"NTE|1||{note}"]
    return "\r".join(segs).encode("utf-8")


async def settle(eng: Any, count: int, timeout: float = 20.0) -> None:
    from tests.routing.test_delivery_e2e import wait_status

    await wait_status(eng, count, ("done",), timeout)
    await asyncio.sleep(0)
