"""Real FHIR clients read a patient end to end: Python `fhirclient` and npm `fhir-kit-client`
(installed by the test setup from the npm registry into var/npm-test)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import INS, Fhir, full_record

ROOT = Path(__file__).resolve().parents[2]
FHIR_KIT = "fhir-kit-client@2.0.3"
NPM_DIR = ROOT / "var" / "npm-test"


@pytest.fixture(scope="session")
def fhir_kit() -> Path:
    """npm install of the pinned fhir-kit-client, once per machine (kept under var/)."""
    if (NPM_DIR / "node_modules" / "fhir-kit-client" / "package.json").exists():
        return NPM_DIR
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are required in CI (fhir-kit-client test)")
        pytest.skip("node/npm not installed")
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix",
                           str(NPM_DIR), FHIR_KIT], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return NPM_DIR


def _fhirclient_reads(base: str, token: str) -> dict[str, Any]:
    from fhirclient import client
    from fhirclient.models.capabilitystatement import CapabilityStatement
    from fhirclient.models.diagnosticreport import DiagnosticReport
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient

    smart = client.FHIRClient(settings={"app_id": "parcours-tests", "api_base": base})
    smart.server.session.headers["Authorization"] = f"Bearer {token}"
    server = smart.server
    cs = CapabilityStatement.read_from("metadata", server)
    (found,) = Patient.where(struct={
        "identifier": f"urn:oid:1.2.250.1.213.1.4.10|{INS}"}).perform_resources_iter(server)
    patient = Patient.read(found.id, server)
    observations = list(Observation.where(struct={
        "patient": patient.id, "_count": "5"}).perform_resources_iter(server))
    reports = list(DiagnosticReport.where(struct={"patient": patient.id})
                   .perform_resources_iter(server))
    return {"fhirVersion": cs.fhirVersion, "patient": patient, "observations": observations,
            "reports": reports}


async def test_python_fhirclient(fhir: Fhir) -> None:
    full_record(fhir)
    out = await asyncio.to_thread(_fhirclient_reads, fhir.base + "/fhir/r4/",
                                  fhir.tokens["inside"])
    assert out["fhirVersion"] == "4.0.1"
    patient = out["patient"]
    assert patient.name[0].family == "PAT-TROIS" and patient.birthDate.isostring == "1979-03-28"
    (official,) = [i for i in patient.identifier if i.use == "official"]
    assert official.system == "urn:oid:1.2.250.1.213.1.4.10" and official.value == INS
    obs = out["observations"]  # every page, followed by the client through `next`
    assert len(obs) == 12 and len({o.id for o in obs}) == 12
    glucose = next(o for o in obs if o.code.coding[0].code == "14749-6")
    assert glucose.valueQuantity.value == 5.83 and glucose.valueQuantity.code == "mmol/L"
    assert glucose.code.coding[1].code == "GLY"
    (report,) = out["reports"]
    assert len(report.result) == 12
    audited = [r for r in fhir.audit() if r["actor"] == "inside"]
    assert {r["action"] for r in audited} == {"fhir.read", "fhir.search"}


async def test_npm_fhir_kit_client(fhir: Fhir, fhir_kit: Path) -> None:
    full_record(fhir)
    script = Path(__file__).with_name("fhir_kit_client.mjs")
    proc = await asyncio.create_subprocess_exec(
        "node", str(script), str(fhir_kit), fhir.base + "/fhir/r4", fhir.tokens["inside"], INS,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    out = json.loads(stdout.decode().strip().splitlines()[-1])
    assert out["fhirVersion"] == "4.0.1"
    assert out["patient"]["family"] == "PAT-TROIS"
    assert [i["value"] for i in out["patient"]["identifier"] if i["use"] == "official"] == [INS]
    assert out["total"] == 12 and len(out["observations"]) == 12
    assert len({o["id"] for o in out["observations"]}) == 12
    assert all(o["unit"] == "http://unitsofmeasure.org" for o in out["observations"])
    assert {"match", "include"} == set(out["reportEntries"])
    assert out["refused"] == {"status": 400, "outcome": "OperationOutcome"}
