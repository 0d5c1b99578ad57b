"""Issue #4 end to end: ORUs from three labs → normalised JSON; an unmapped code lands in the
backlog, `parcours mappings` lists it, suggests LOINC, accepts, and the result is reprocessed."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from connectors.mllp.client import MLLPClient
from tests.routing.test_delivery_e2e import wait_status
from transformers.hl7.ack import read_ack
from transformers.hl7.batch import split_messages

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "loinc" / "data"
PARCOURS = [sys.executable, "-c", "from engine.cli.main import main; main()"]


def routes(out: Path) -> str:
    return f"""\
version: 1
channels:
  main: {{type: mllp, host: 127.0.0.1, port: 0}}
destinations:
  lab: {{type: file, path: "{out}", filename: "{{message_id}}_g{{generation}}.json"}}
routes:
  - name: lab-normalised
    when: {{message_type: ORU}}
    transform: [normalise_lab]
    to: [lab]
"""


async def test_three_labs_one_series_and_the_backlog(make_engine: Any, tmp_path: Path,
                                                     store_url: str) -> None:
    mapping_dir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mapping_dir, ignore=shutil.ignore_patterns("*.py"))
    out = tmp_path / "out"
    rf = tmp_path / "routes.yaml"
    rf.write_text(routes(out))
    eng = await make_engine(rf.read_text(), route=True, store_url=store_url,
                            extra_env={"PARCOURS_MAPPINGS_DIR": str(mapping_dir)})
    assert eng.engine.lab.mapping_dir == mapping_dir
    files = sorted(DATA.glob("oru_*_full.hl7"))
    assert len(files) == 3
    for f in files:
        for raw in split_messages(f.read_bytes()).messages:
            async with MLLPClient("127.0.0.1", eng.port()) as c:
                assert read_ack(await c.send(raw))[0] in ("AA", "CA")
    await wait_status(eng, 3)
    docs = [json.loads(p.read_text()) for p in sorted(out.glob("*_g0.json"))]
    glucose = [o for d in docs for o in d["observations"] if o["loinc"] == "14749-6"]
    assert len(glucose) == 3  # one series: GLY g/L, GLU mmol/L, GLYC mg/dL
    assert {o["unit"] for o in glucose} == {"mmol/L"}
    assert {o["original"]["code"] for o in glucose} == {"GLY", "GLU", "GLYC"}
    assert len({o["performing_lab"] for o in glucose}) == 3
    unmapped = [o for d in docs for o in d["observations"] if o["outcome"] == "as_received"
                and o["reason"] == "unmapped_code"]
    assert unmapped, "the demo ORUs carry at least one unmapped code"
    code = unmapped[0]["original"]["code"]

    env = {"PARCOURS_STORE_URL": eng.store.url, "PARCOURS_MAPPINGS_DIR": str(mapping_dir),
           "PARCOURS_ROUTES": str(rf), "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PARCOURS, "mappings", *args], capture_output=True, text=True,
                              env=env, timeout=120)

    backlog = await asyncio.to_thread(cli, "backlog")
    assert backlog.returncode == 0 and code in backlog.stdout, backlog.stdout + backlog.stderr
    metrics = eng.engine._metrics_snapshot()
    assert metrics.backlog_codes >= 1 and metrics.normalisation.get("as_received", 0) >= 1
    sugg = await asyncio.to_thread(cli, "suggest", code)
    assert sugg.returncode == 0 and " 1. " in sugg.stdout, sugg.stdout + sugg.stderr
    best = sugg.stdout.split(" 1. ")[1].split()[0]
    entry = next(e for e in (await asyncio.to_thread(
        lambda: __import__("engine.routing.backlog", fromlist=["x"]).open_entries(eng.store)))
        if e["code"] == code)
    acc = await asyncio.to_thread(cli, "accept", entry["sender"], code, best)
    assert acc.returncode == 0, acc.stdout + acc.stderr
    assert "reprocessed 1 message(s): 1 new deliveries" in acc.stdout
    for _ in range(200):
        regen = list(out.glob("*_g1.json"))
        if regen:
            break
        await asyncio.sleep(0.05)
    [regenerated] = regen
    obs = [o for o in json.loads(regenerated.read_text())["observations"]
           if o["original"]["code"] == code]
    assert obs and obs[0]["outcome"] in ("normalised", "coded") and obs[0]["reason"] is None
    # The accepted code, or its sibling whose property matches the canonical unit (brief:
    # "LOINC property follows the unit"): the same analyte either way.
    from loinc.catalogue import load_catalogue

    term = load_catalogue().get(best)
    assert term is not None
    assert obs[0]["analyte"] == [term.component, term.system]
    after = await asyncio.to_thread(cli, "backlog", "--sender", entry["sender"])
    assert code not in after.stdout
    bad = await asyncio.to_thread(cli, "accept", entry["sender"], "XYZ", "1234-0")
    assert bad.returncode == 1 and "refused" in bad.stderr


async def test_suggest_without_a_sender_prints_a_command_that_works(
        make_engine: Any, tmp_path: Path, store_url: str) -> None:
    """Issue #15: `suggest CODE --text` for a code not in the backlog printed `accept '?'`;
    the printed command names a SENDER placeholder, and once filled in it works. Low scores
    are marked, and a LOINC-style label keeps its analyte."""
    mapping_dir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mapping_dir, ignore=shutil.ignore_patterns("*.py"))
    out = tmp_path / "out"
    rf = tmp_path / "routes.yaml"
    rf.write_text(routes(out))
    eng = await make_engine(rf.read_text(), route=True, store_url=store_url,
                            extra_env={"PARCOURS_MAPPINGS_DIR": str(mapping_dir)})
    env = {"PARCOURS_STORE_URL": eng.store.url, "PARCOURS_MAPPINGS_DIR": str(mapping_dir),
           "PARCOURS_ROUTES": str(rf), "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PARCOURS, "mappings", *args], capture_output=True, text=True,
                              env=env, timeout=120)

    sugg = await asyncio.to_thread(cli, "suggest", "UREM", "--text",
                                   "Urée [Moles/Volume] Sérum/Plasma ; Numérique",
                                   "--unit", "mmol/L")
    assert sugg.returncode == 0, sugg.stderr
    assert " 1. 22664-7" in sugg.stdout and "'?'" not in sugg.stdout
    [command] = [line.split("accept: ", 1)[1] for line in sugg.stdout.splitlines()
                 if "accept: " in line]
    assert command == "parcours mappings accept SENDER UREM 22664-7"
    args = command.split()[3:]
    args[0] = "LABO-BIO-PARIS15"
    acc = await asyncio.to_thread(cli, "accept", *args)
    assert acc.returncode == 0, acc.stdout + acc.stderr
    assert "UREM" in (mapping_dir / "labo-bio-paris15.yaml").read_text()

    weak = await asyncio.to_thread(cli, "suggest", "AGLOB", "--text",
                                   "Alpha-1 globulines [Masse/Volume] Sérum/Plasma ; "
                                   "Numérique ; Electrophorèse", "--unit", "g/L")
    assert "(low score: check before accepting)" in weak.stdout
    assert "accept SENDER AGLOB LOINC" in weak.stdout  # nothing pre-filled


async def test_a_loinc_code_outside_the_subset_is_kept_and_not_backlogged(
        make_engine: Any, tmp_path: Path, store_url: str) -> None:
    out = tmp_path / "out"
    eng = await make_engine(routes(out), route=True, store_url=store_url)
    raw = ("MSH|^~\\&|SIL|LABO-BIO-PARIS15|PARCOURS|X|20250114093000||ORU^R01^ORU_R01|COV-1|P"
           "|2.5.1\rPID|1||COV0001^^^PARCOURS-DEMO^PI||PATIENT^COV||19700101|F\r"
           "OBR|1|O-1|R-1|COVID^Covid^L|||20250114080000\r"
           "OBX|1|CWE|94558-4^SARS-CoV-2 Ag Resp Ql IA.rapid^LN||260385009^Negative^SCT"
           "||||||F\r")
    async with MLLPClient("127.0.0.1", eng.port()) as c:
        assert read_ack(await c.send(raw.encode()))[0] in ("AA", "CA")
    await wait_status(eng, 1)
    [doc] = [json.loads(p.read_text()) for p in out.glob("*_g0.json")]
    [obs] = doc["observations"]
    assert (obs["loinc"], obs["reason"], obs["notes"]) == (
        "94558-4", "loinc_not_in_catalogue", ["not_in_catalogue"])
    from engine.routing.backlog import open_entries

    assert await asyncio.to_thread(open_entries, eng.store) == []
