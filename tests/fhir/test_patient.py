"""Patient over real HTTP: FR Core INS slices and identifiers, search parameters, merges."""

from __future__ import annotations

from typing import Any

from fhirclient.models.patient import Patient

from tests.timeline.conftest import edit

from .conftest import CONSENT, INS, Fhir, read

NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
TYPES = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"


def _official(p: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in p.get("identifier", []) if i.get("use") == "official"]


async def _search(fhir: Fhir, **params: str) -> list[dict[str, Any]]:
    async with fhir.client() as c:
        r = await c.get("Patient", params=params)
    assert r.status_code == 200, r.text
    return [Patient(e["resource"], strict=True).as_json() | {"meta": e["resource"]["meta"]}
            for e in r.json().get("entry", [])]


async def test_ins_slices_of_a_qualified_identity(fhir: Fhir) -> None:
    (p,) = await _search(fhir, identifier=f"{NIR_TEST}|{INS}")
    (official,) = _official(p)  # FR Core: one official identifier, the INS
    assert official == {"use": "official", "system": NIR_TEST, "value": INS,
                        "type": {"coding": [{"system": TYPES, "code": "INS-NIR-TEST"}]}}
    (ipp,) = [i for i in p["identifier"] if i is not official and i != official]
    assert ipp["use"] == "usual" and ipp["value"] == "000003"
    assert ipp["type"]["coding"][0]["code"] == "PI"
    assert ipp["assigner"] == {"display": "CHU-X"}
    assert p["meta"]["profile"] == [
        "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient",
        "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-ins"]
    (rel,) = p["extension"]
    assert rel["url"].endswith("fr-core-identity-reliability")
    assert rel["extension"][0]["valueCoding"]["code"] == "VALI"
    assert p["name"] == [{"use": "official", "family": "PAT-TROIS", "given": ["DOMINIQUE"]}]
    assert p["gender"] == "female" and p["birthDate"] == "1979-03-28"
    # the local id with its authority's name, or any system
    assert [x["id"] for x in await _search(fhir, identifier="CHU-X|000003")] == [p["id"]]
    assert [x["id"] for x in await _search(fhir, identifier="000003")] == [p["id"]]
    assert await _search(fhir, identifier="OTHER|000003") == []
    assert await _search(fhir, identifier=f"urn:oid:1.2.250.1.213.1.4.8|{INS}") == []


async def test_no_ins_without_a_qualified_identity(fhir: Fhir) -> None:
    raw = edit(edit(read(*CONSENT), "PID", 3,
                    "000009^^^CHU-X&000897406&N^PI~180012345678901^^^ASIP-SANTE-INS-NIR"
                    "&1.2.250.1.213.1.4.8&ISO^INS"), "PID", 32, "PROV")
    fhir.apply(raw, 2)
    (p,) = await _search(fhir, identifier="CHU-X|000009")
    assert _official(p) == []  # RNIV: the INS is not shared for a provisional identity
    assert all(i["type"]["coding"][0]["code"] == "PI" for i in p["identifier"])
    assert p["meta"]["profile"] == [
        "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"]
    assert p["extension"][0]["extension"][0]["valueCoding"]["code"] == "PROV"


async def test_demographic_search(fhir: Fhir) -> None:
    ids = lambda found: [p["id"] for p in found]  # noqa: E731
    assert ids(await _search(fhir, family="pat-t")) == ["1"]  # starts with, any case
    assert ids(await _search(fhir, family="TROIS")) == []
    assert ids(await _search(fhir, **{"family:contains": "trois"})) == ["1"]
    assert ids(await _search(fhir, **{"family:exact": "PAT-TROIS"})) == ["1"]
    assert ids(await _search(fhir, **{"family:exact": "pat-trois"})) == []
    assert ids(await _search(fhir, given="dom")) == ["1"]
    assert ids(await _search(fhir, birthdate="1979-03-28")) == ["1"]
    assert ids(await _search(fhir, birthdate="1979")) == ["1"]
    assert ids(await _search(fhir, birthdate="ge1980-01-01")) == []
    assert ids(await _search(fhir, birthdate="lt1979-03-29")) == ["1"]
    assert ids(await _search(fhir, gender="female")) == ["1"]
    assert ids(await _search(fhir, gender="male")) == []
    assert ids(await _search(fhir, _id="1,2")) == ["1"]
    assert ids(await _search(fhir, family="PAT", gender="male")) == []


async def test_merged_patient_is_gone_and_linked(fhir: Fhir) -> None:
    other = edit(edit(read(*CONSENT), "PID", 3, "000004^^^CHU-X&000897406&N^PI"),
                 "MSH", 10, "3976")
    fhir.apply(other, 2)
    (second,) = await _search(fhir, identifier="CHU-X|000004")
    assert second["id"] == "2"
    a40 = "\r".join([
        "MSH|^~\\&|GAM|CHU-X|DPI|CHU-X|20240307111154||ADT^A40^ADT_A39|3990|P|2.5^FRA^2.11"
        "|||||FRA|UNICODE UTF-8|FR||2.11^IHE_FRANCE-2.11-PAM",
        "EVN||20240307111154",
        "PID|1||000003^^^CHU-X&000897406&N^PI||PAT-TROIS^DOMINIQUE^^^^^L||19790328|F",
        "MRG|000004^^^CHU-X&000897406&N^PI"]) + "\r"
    fhir.apply(a40.encode(), 3)
    async with fhir.client() as c:
        r = await c.get("Patient/2")
        assert r.status_code == 410
        issue = r.json()["issue"][0]
        assert issue["code"] == "deleted" and "replaced-by Patient/1" in issue["diagnostics"]
        r = await c.get("Patient/1")
        assert r.json()["link"] == [{"other": {"reference": "Patient/2"}, "type": "replaces"}]
        # the absorbed id's local identifier now finds the survivor
        assert [p["id"] for p in await _search(fhir, identifier="CHU-X|000004")] == ["1"]
        # a search naming the absorbed patient follows the merge
        r = await c.get("Encounter", params={"patient": "Patient/2"})
        assert r.json()["total"] >= 1
        assert {e["resource"]["subject"]["reference"] for e in r.json()["entry"]} == \
            {"Patient/1"}
    async with fhir.client("outside") as c:  # outside the circle: not even "gone"
        assert (await c.get("Patient/2")).status_code == 404
