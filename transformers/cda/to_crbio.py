"""`crbio` transformer: a lab result (ORU^R01) → a CR-BIO CDA document for the DMP.

The ORU is normalised first (LOINC/UCUM, the same code path as `normalise_lab`), then the
CI-SIS CR-BIO is built from it. What an ORU does not carry (the laboratory's address, its
FINESS, the biologist's RPPS when OBR-32 is empty, OIDs under which this platform numbers
documents) comes from `CrBioSettings`, set once by the engine with `configure()`.

Identifiers are derived from the message, never from a clock or a random source, so that a
replay builds the very same document (transformer contract: deterministic, no side effects):
document id = <document_oid>.<sender>.<MSH-10>, setId = <sender>.<filler order>. An ORU whose
OBX-11 are C (correction) produces version 2 of the set, replacing version 1 (RPLC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from transformers.exchange import Exchange
from transformers.hl7.header import INS_OIDS

from .crbio import Address, CrBioRequest, Organisation, Patient, Professional, Result, build_crbio

CDA_CONTENT_TYPE = "application/cda+xml"


@dataclass
class CrBioSettings:
    document_oid: str = "1.2.250.1.213.1.1.9.999"  # replace with the platform's own OID arc
    order_oid: str = "1.2.250.1.213.1.1.9.998"
    local_code_oid: str = "1.2.250.1.213.1.1.9.997"
    time_zone: str = "+0100"
    laboratory: Organisation = field(default_factory=lambda: Organisation(
        id_extension="1000000000", name="Laboratoire (à configurer)",
        address=Address("1 rue de la Santé", "75014", "PARIS"), telecom="tel:0100000000"))
    biologist: Professional = field(default_factory=lambda: Professional(
        id_extension="899999999999", family="BIOLOGISTE", given="Responsable"))
    # Per sender (MSH-4): its own laboratory / biologist when one platform serves several labs.
    laboratories: dict[str, Organisation] = field(default_factory=dict)
    biologists: dict[str, Professional] = field(default_factory=dict)


_settings = CrBioSettings()


def configure(settings: CrBioSettings) -> None:
    global _settings
    _settings = settings


def settings() -> CrBioSettings:
    return _settings


class NoINS(ValueError):
    """The DMP is indexed by the INS: without it no CR-BIO can be fed (the route fails)."""


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]", "-", value)[:64] or "x"


def _ts(value: str, zone: str) -> str:
    value = value.strip()
    if not value:
        return ""
    return value if ("+" in value or "-" in value or len(value) <= 8) else value + zone


def patient_from_pid(exchange: Exchange) -> Patient:
    msg = exchange.message
    assert msg is not None
    pid = msg.segment("PID")
    if pid is None:
        raise NoINS("no PID segment")
    ins: tuple[str, str] | None = None
    local: list[tuple[str, str]] = []
    for r in range(1, len(pid.repetitions(3)) + 1):
        ident = pid.get(3, r, 1)
        authority_oid = pid.get(3, r, 4, 2)
        id_type = pid.get(3, r, 5)
        if authority_oid in INS_OIDS or (id_type == "INS" and authority_oid):
            ins = ins or (authority_oid, ident)
        elif ident and authority_oid:
            local.append((authority_oid, ident))
    if ins is None:
        raise NoINS("PID-3 carries no INS with its OID (1.2.250.1.213.1.4.8 or test .10)")
    return Patient(ins=ins[1], ins_oid=ins[0], family=pid.get(5, 1, 1), given=pid.get(5, 1, 2),
                   gender=pid.get(8) or "UN", birth_date=pid.get(7)[:8],
                   local_ids=tuple(local))


def crbio_request(exchange: Exchange, observations: list[dict], sender: str,
                  cfg: CrBioSettings | None = None) -> CrBioRequest:
    cfg = cfg or _settings
    msg = exchange.message
    assert msg is not None
    control_id = msg.get("MSH-10")
    placer = msg.get("ORC-2.1") or msg.get("OBR-2.1")
    filler = msg.get("ORC-3.1") or msg.get("OBR-3.1") or control_id
    results = tuple(Result.from_normalised(o) for o in observations)
    corrected = any(o.get("status") == "C" for o in observations)
    lab = cfg.laboratories.get(sender, cfg.laboratory)
    bio = cfg.biologists.get(sender, cfg.biologist)
    interpreter = msg.get("OBR-32.1.1")  # principal result interpreter (ID&name&...)
    if interpreter and sender not in cfg.biologists:
        bio = replace(bio, id_extension=interpreter)
    effective = _ts(msg.get("OBR-22") or msg.get("MSH-7"), cfg.time_zone)
    set_ext = f"{_safe(sender)}.{_safe(filler)}"
    version = 2 if corrected else 1
    doc_ext = f"{set_ext}.v{version}.{_safe(control_id)}"
    parent = None
    if corrected:
        # The version-1 id is not derivable (it carries the first MSH-10): the replacement
        # points at the set's first version through the setId; the DMP destination resolves
        # the entry to replace by ITI-18 (see docs/dmp.md, "Replacement").
        parent = (cfg.document_oid, f"{set_ext}.v1")
    return CrBioRequest(
        document_root=cfg.document_oid,
        document_extension=doc_ext,
        set_extension=set_ext,
        version=version,
        effective_time=effective,
        patient=patient_from_pid(exchange),
        biologist=bio,
        laboratory=lab,
        results=results,
        order_root=cfg.order_oid,
        order_extension=placer,
        filler_extension=filler,
        collected_at=_ts(msg.get("OBR-7"), cfg.time_zone),
        local_code_system=cfg.local_code_oid,
        parent_document=parent,
    )


def to_crbio(exchange: Exchange) -> Exchange | None:
    """ORU^R01 → CR-BIO (bytes, `application/cda+xml`). Other messages pass unchanged.

    Headers set for the DMP destination: `dmp_action` (submit / replace / delete from
    OBX-11 = F / C / D), `cda_document_id`, `cda_set_id`.
    """
    if exchange.message is None or exchange.headers.get("message_type") not in ("ORU", None):
        return exchange
    if exchange.message.msh.get(9, 1, 1) != "ORU":
        return exchange
    from transformers.lab.transformer import normalise_exchange

    data = normalise_exchange(exchange)
    observations = data["observations"]
    if not observations:
        return None  # nothing to report
    req = crbio_request(exchange, observations, data["sender"])
    statuses = {o.get("status") for o in observations}
    action = "delete" if statuses == {"D"} else "replace" if "C" in statuses else "submit"
    exchange.body = build_crbio(req)
    exchange.content_type = CDA_CONTENT_TYPE
    exchange.headers["dmp_action"] = action
    exchange.headers["cda_document_id"] = f"{req.document_root}^{req.document_extension}"
    exchange.headers["cda_set_id"] = f"{req.document_root}^{req.set_extension}"
    exchange.headers["mapping_backlog"] = data["backlog"]
    return exchange
