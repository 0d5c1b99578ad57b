"""Routing decisions on the corpus, evaluation modes, transformers and their failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_text
from engine.routing.router import Router, exchange_from_bytes
from engine.routing.transformers import Registry
from tests.conftest import corpus
from transformers.exchange import Exchange

ROUTES = """\
version: 1
evaluation: {mode}
channels:
  main: {{type: mllp, port: 2575}}
destinations:
  adt: {{type: discard}}
  inpatient: {{type: discard}}
  lab: {{type: discard}}
  local-lab: {{type: discard}}
  orders: {{type: discard}}
  docs: {{type: discard}}
  json: {{type: discard}}
routes:
  - name: inpatient-stays
    when: {{message_type: ADT, fields: ["PV1-2 == I"]}}
    to: [inpatient]
  - name: adt
    when: {{message_type: ADT}}
    to: [adt]
  - name: local-codes
    when: {{message_type: ORU, fields: ["OBX-3.3 in [L, 99LOC, LOCAL]"]}}
    to: [local-lab]
  - name: lab
    when: {{message_type: ORU, trigger_event: R01}}
    to: [lab]
  - name: orders
    when: {{message_type: [ORM, OML]}}
    to: [orders]
  - name: docs
    when: {{message_type: [MDM, CDA]}}
    to: [docs]
  - name: json-for-chu-x
    when: {{sending_facility: CHU-X}}
    transform: [hl7_to_json]
    to: [json]
"""


def router(mode: str = "all", text: str | None = None) -> Router:
    cfg = load_text(text or ROUTES.format(mode=mode), env={})
    return Router(None, cfg, Registry().resolve, 8)  # type: ignore[arg-type]


def matched(r: Router, raw: bytes) -> list[str]:
    return [res.route for res in r.evaluate(exchange_from_bytes(raw)) if res.matched]


def test_corpus_messages_go_where_they_should() -> None:
    r = router()
    hl7 = corpus("hl7v2")
    adt = (hl7 / "ans" / "SGL" / "admission.er7").read_bytes()
    assert matched(r, adt) == ["inpatient-stays", "adt", "json-for-chu-x"]  # PV1-2 = I
    out = (hl7 / "fhir-converter" / "ADT-A04-01.hl7").read_bytes()
    assert "inpatient-stays" not in matched(r, out) and "adt" in matched(r, out)
    oru = next((hl7 / "ans" / "Vague_2").rglob("message_ORU_CR_Bio_INIT_N3_SEGUR.hl7"))
    assert "lab" in matched(r, oru.read_bytes())
    orm = (hl7 / "fhir-converter" / "ORM-O01-01.hl7").read_bytes()
    assert matched(r, orm) == ["orders"]
    mdm = next((hl7 / "ans" / "Vague_2").rglob("message_MDM_CR_Radio_INIT_N1.er7"))
    assert "docs" in matched(r, mdm.read_bytes())
    cda = (corpus("cda", "ans-examples") / "BIO-CR-BIO_2024.01_TSH_1.xml").read_bytes()
    assert matched(r, cda) == ["docs"]


def test_field_condition_on_repeating_obx() -> None:
    r = router()
    base = ("MSH|^~\\&|LAB|LABO|P|P|2026||ORU^R01|1|P|2.5\rPID|1||9^^^L^PI\rOBR|1\r"
            "OBX|1|NM|2345-7^Glucose^LN||5.5|mmol/L\r")
    assert "local-codes" not in matched(r, base.encode())
    with_local = base + "OBX|2|NM|GLY^Glycemie^L||1,05|g/L\r"
    assert "local-codes" in matched(r, with_local.encode())


def test_first_match_and_stop() -> None:
    adt = (corpus("hl7v2", "ans", "SGL") / "admission.er7").read_bytes()
    assert matched(router("first"), adt) == ["inpatient-stays"]
    text = ROUTES.format(mode="all").replace("    to: [inpatient]",
                                             "    to: [inpatient]\n    stop: true")
    assert matched(router(text=text), adt) == ["inpatient-stays"]


def test_reasons_for_not_matching_are_plain() -> None:
    orm = (corpus("hl7v2", "fhir-converter") / "ORM-O01-01.hl7").read_bytes()
    res = {x.route: x for x in router().evaluate(exchange_from_bytes(orm))}
    assert res["adt"].reason == "message_type 'ORM' is not one of ['ADT']"
    assert res["inpatient-stays"].reason.startswith("message_type")


def test_transformer_chain_filter_and_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    (tmp_path / "site_rules.py").write_text(
        "def only_inpatients(ex):\n"
        "    return ex if ex.message.get('PV1-2') == 'I' else None\n"
        "def upper(ex):\n"
        "    ex.body = ex.text.upper()\n    return ex\n"
        "def broken(ex):\n    raise ValueError('bad mapping')\n"
    )
    text = f"""\
version: 1
transformer_paths: ["{tmp_path}"]
channels:
  main: {{type: mllp, port: 2575}}
destinations:
  out: {{type: discard}}
routes:
  - name: filtered
    transform: ["site_rules:only_inpatients", "site_rules:upper"]
    to: [out]
  - name: failing
    transform: ["site_rules:broken"]
    to: [out]
"""
    r = router(text=text)
    adt = (corpus("hl7v2", "fhir-converter") / "ADT-A04-01.hl7").read_bytes()
    res = {x.route: x for x in r.evaluate(exchange_from_bytes(adt))}
    assert res["filtered"].matched and res["filtered"].filtered_by == "site_rules:only_inpatients"
    assert res["filtered"].payloads == []
    assert res["failing"].error and "bad mapping" in res["failing"].error
    inpatient = (corpus("hl7v2", "ans", "SGL") / "admission.er7").read_bytes()
    res2 = {x.route: x for x in r.evaluate(exchange_from_bytes(inpatient))}
    assert res2["filtered"].payloads[0].payload.startswith(b"MSH|^~\\&|GAM|CHU-X")
    assert b"PAT-TROIS" in res2["filtered"].payloads[0].payload  # upper-cased copy


def test_routes_do_not_see_each_others_changes() -> None:
    def mutate(ex: Exchange) -> Exchange:
        ex.headers["message_type"] = "XXX"
        ex.body = "changed"
        return ex

    reg = Registry()
    reg.register("mutate", mutate)
    text = """\
version: 1
channels:
  main: {type: mllp, port: 2575}
destinations:
  out: {type: discard}
routes:
  - {name: first, transform: [mutate], to: [out]}
  - {name: second, when: {message_type: ADT}, to: [out]}
"""
    cfg = load_text(text, env={}, known_transformers=lambda n: None)
    r = Router(None, cfg, reg.resolve, 8)  # type: ignore[arg-type]
    adt = (corpus("hl7v2", "ans", "SGL") / "admission.er7").read_bytes()
    res = r.evaluate(exchange_from_bytes(adt))
    assert [x.matched for x in res] == [True, True]
    assert res[1].payloads[0].payload.startswith(b"MSH")


def test_transformers_of_a_route_to_disabled_destinations_do_not_run() -> None:
    """Routing skips them (nothing would be queued); a dry run still shows their output."""
    calls: list[int] = []

    def counted(ex: Exchange) -> Exchange:
        calls.append(ex.message_id)
        return ex

    reg = Registry()
    reg.register("counted", counted)
    text = """\
version: 1
channels:
  main: {type: mllp, port: 2575}
destinations:
  off: {type: discard, enabled: false}
  on: {type: discard}
routes:
  - {name: to-off, transform: [counted], to: [off]}
  - {name: to-both, transform: [counted], to: [off, on]}
"""
    cfg = load_text(text, env={}, known_transformers=lambda n: None)
    r = Router(None, cfg, reg.resolve, 8)  # type: ignore[arg-type]
    adt = exchange_from_bytes((corpus("hl7v2", "ans", "SGL") / "admission.er7").read_bytes())
    res = {x.route: x for x in r.evaluate(adt)}
    assert len(calls) == 1  # to-both only
    assert res["to-off"].matched and res["to-off"].payloads == []
    assert "disabled" in res["to-off"].reason
    assert [p.destination for p in res["to-both"].payloads] == ["off", "on"]
    dry = {x.route: x for x in r.evaluate(adt, run_disabled=True)}
    assert len(calls) == 3
    assert [p.destination for p in dry["to-off"].payloads] == ["off"]
