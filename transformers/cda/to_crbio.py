"""`crbio` transformer: a lab result (ORU^R01) → a CR-BIO CDA document for the DMP.

The ORU is normalised first (LOINC/UCUM, the same code path as `normalise_lab`), then the
CI-SIS CR-BIO is built from it. What an ORU does not carry (the laboratory's address, its
FINESS, the biologist's RPPS when OBR-32 is empty, OIDs under which this platform numbers
documents) comes from `CrBioSettings`, set once by the engine with `configure()`.

Identifiers are derived from the message, never from a clock or a random source, so that a
replay builds the very same document (transformer contract: deterministic, no side effects):
setId = <document_oid>^<sender>.<filler order>, document id =
<document_oid>^<sender>.<filler order>.v<version>.<MSH-10>. An ORU whose OBX-11 are C
(correction) is built as version 2 replacing version 1 (RPLC); the content type
`application/cda+xml; versioning=feed` tells the `dmp` destination to give it its real number
from what it already submitted (a second correction becomes version 3 replacing version 2,
see transformers/cda/versioning.py) — a pure transformer cannot know that.

Settings: `transformer_options.crbio` in routes.yaml (docs/dmp.md), turned into
`CrBioSettings` by `settings_from_options` and installed by the engine with `configure()`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from transformers.exchange import Exchange
from transformers.hl7.header import INS_OIDS

from .crbio import Address, CrBioRequest, Organisation, Patient, Professional, Result, build_crbio

CDA_CONTENT_TYPE = "application/cda+xml"
# The version is numbered by the feed (channels/outbound/dmp.py), not by this transformer.
CRBIO_CONTENT_TYPE = f"{CDA_CONTENT_TYPE}; versioning=feed"


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
    # The custodian (CDA custodian, who keeps the document); None: the laboratory.
    custodian: Organisation | None = None
    custodians: dict[str, Organisation] = field(default_factory=dict)
    configured: bool = False  # False: the placeholders above, never meant for the DMP


_settings = CrBioSettings()


def configure(settings: CrBioSettings) -> None:
    """Install the settings every later `crbio` run uses (the engine does it at start and on
    reload, from routes.yaml)."""
    global _settings
    _settings = settings


class SettingsError(ValueError):
    """A `transformer_options.crbio` value that cannot make a valid CR-BIO; `path` says where
    (e.g. ["laboratory", "address", "postal_code"])."""

    def __init__(self, path: list[str], message: str) -> None:
        super().__init__(f"{'.'.join(path)}: {message}" if path else message)
        self.path = path
        self.message = message


def _text(opts: Mapping[str, Any], key: str, path: list[str], required: bool = True,
          default: str = "") -> str:
    value = opts.get(key)
    if value is None or str(value).strip() == "":
        if required:
            raise SettingsError([*path, key], "is required")
        return default
    return str(value).strip()


def _organisation_from(opts: Mapping[str, Any], path: list[str]) -> Organisation:
    """CI-SIS structure: IDNST id (1 + FINESS, 3 + SIRET) under 1.2.250.1.71.4.2.2."""
    addr = opts.get("address") or {}
    org = Organisation(
        id_extension=_text(opts, "id", path), name=_text(opts, "name", path),
        address=Address(_text(addr, "street", [*path, "address"], False),
                         _text(addr, "postal_code", [*path, "address"], False),
                         _text(addr, "city", [*path, "address"], False)),
        telecom=_text(opts, "telecom", path, False))
    extra = {k: str(opts[k]) for k in ("practice_setting", "practice_setting_display",
                                       "facility_type", "facility_type_display") if k in opts}
    return replace(org, **extra) if extra else org


def _professional_from(opts: Mapping[str, Any], path: list[str]) -> Professional:
    """CI-SIS person: IDNPS id (8 + RPPS) under 1.2.250.1.71.4.2.1."""
    pro = Professional(id_extension=_text(opts, "id", path), family=_text(opts, "family", path),
                       given=_text(opts, "given", path, False),
                       prefix=_text(opts, "prefix", path, False))
    extra = {k: str(opts[k]) for k in ("role_code", "role_display") if k in opts}
    return replace(pro, **extra) if extra else pro


def settings_from_options(options: Mapping[str, Any]) -> CrBioSettings:
    """`transformer_options.crbio` of routes.yaml → settings. Raises SettingsError with the
    path of the first value that is missing or unusable. The JSON schema checks formats (OIDs,
    identifier patterns) first, with file:line; this checks what the schema cannot say."""
    base = CrBioSettings()
    lab = _organisation_from(options.get("laboratory") or {}, ["laboratory"])
    bio = _professional_from(options.get("biologist") or {}, ["biologist"])
    custodian = (_organisation_from(options["custodian"], ["custodian"])
                 if options.get("custodian") else None)
    labs: dict[str, Organisation] = {}
    bios: dict[str, Professional] = {}
    custs: dict[str, Organisation] = {}
    for sender, per in (options.get("senders") or {}).items():
        path = ["senders", str(sender)]
        if not per:
            raise SettingsError(path, "give a laboratory, biologist and/or custodian")
        if per.get("laboratory"):
            labs[str(sender)] = _organisation_from(per["laboratory"], [*path, "laboratory"])
        if per.get("biologist"):
            bios[str(sender)] = _professional_from(per["biologist"], [*path, "biologist"])
        if per.get("custodian"):
            custs[str(sender)] = _organisation_from(per["custodian"], [*path, "custodian"])
    return CrBioSettings(
        document_oid=_text(options, "document_oid", []),
        order_oid=_text(options, "order_oid", [], False, base.order_oid),
        local_code_oid=_text(options, "local_code_oid", [], False, base.local_code_oid),
        time_zone=_text(options, "time_zone", [], False, base.time_zone),
        laboratory=lab, biologist=bio, laboratories=labs, biologists=bios,
        custodian=custodian, custodians=custs, configured=True)


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
        # The version-1 id is not derivable (it carries the first MSH-10): this placeholder
        # parent stands until the `dmp` destination numbers the version and points RPLC at
        # the latest version it submitted (transformers/cda/versioning.py).
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
        custodian=cfg.custodians.get(sender, cfg.custodian),
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
    # The action rides in the content type too: it is stored with the delivery, headers
    # are not (a deletion must still be one when the delivery is retried).
    exchange.content_type = (CRBIO_CONTENT_TYPE + "; action=delete" if action == "delete"
                             else CRBIO_CONTENT_TYPE)
    exchange.headers["dmp_action"] = action
    exchange.headers["cda_document_id"] = f"{req.document_root}^{req.document_extension}"
    exchange.headers["cda_set_id"] = f"{req.document_root}^{req.set_extension}"
    exchange.headers["mapping_backlog"] = data["backlog"]
    return exchange
