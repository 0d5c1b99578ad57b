"""LOINC normalisation of laboratory results: the transformer behind flow 1 (lab result).

For each OBX of an ORU^R01 (HL7 v2.5.1 chapter 7): resolve the LOINC code (OBX-3 already LOINC,
or the sender's mapping), read the value (NM, SN; ST/FT/TX/CE/CWE are left as sent), move it to
the canonical unit of its analyte and to the LOINC code whose property matches that unit (brief,
Clarifications), convert the reference range (OBX-7) alike, keep or derive the abnormal flag
(OBX-8) and respect the result status (OBX-11). What cannot be normalised is kept as received
with a machine-readable reason and a backlog entry; nothing is dropped, nothing is guessed.

Pure functions on plain data: the engine composes this transformer, it never imports the engine.
"""

from __future__ import annotations

import weakref
from decimal import Decimal
from functools import lru_cache

from loinc.canonical import CanonicalPolicy
from loinc.catalogue import LOINC_SYSTEM_NAMES, Catalogue, LoincTerm, is_valid_loinc_code
from loinc.units import PROPERTY_FAMILY, UnitError, conversion_factor, family, normalise_unit
from mappings.loader import MappingSet
from transformers.lab.er7 import observations_from_oru
from transformers.lab.observation import (
    BacklogEntry,
    NormalisationResult,
    NormalisedObservation,
    Original,
    RawObservation,
)
from transformers.lab.values import (
    Quantity,
    ReferenceRange,
    convert,
    format_decimal,
    parse_numeric,
    parse_range,
)

__all__ = [
    "BacklogEntry",
    "NormalisationResult",
    "NormalisedObservation",
    "Original",
    "RawObservation",
    "normalise_observations",
    "observations_from_oru",
]

# OBX-11 (HL7 v2.5.1 table 0085) → what the receiver does with the series.
_ACTIONS = {
    "F": "add",  # final
    "P": "add",  # preliminary: stored, flagged by its status
    "R": "add",  # entered, not verified
    "S": "add",  # partial
    "I": "add",  # in process (specimen received)
    "C": "correct",  # correction: replaces the final result sent before
    "W": "correct",  # posted to the wrong patient/order: replaces what was sent
    "U": "add",  # changed to final without retransmitting the value
    "D": "delete",  # delete the result sent before
    "X": "none",  # result cannot be obtained
    "": "add",
}
_NO_VALUE = frozenset({"D", "X"})
_NUMERIC_TYPES = frozenset({"NM", "SN"})
_FAMILY_PROPERTY = {"mass_conc": "MCnc", "substance_conc": "SCnc", "number_conc": "NCnc"}
_UNITLESS_FAMILIES = frozenset({"fraction", "ph"})

_policies: dict[int, tuple[Catalogue, CanonicalPolicy]] = {}


def _policy(catalogue: Catalogue) -> CanonicalPolicy:
    """One CanonicalPolicy per catalogue (its target cache is what makes this fast)."""
    cached = _policies.get(id(catalogue))
    if cached is None or cached[0] is not catalogue:
        cached = (catalogue, CanonicalPolicy(catalogue))
        _policies[id(catalogue)] = cached
    return cached[1]


def _original(obx: RawObservation) -> Original:
    return Original(
        code=obx.code,
        coding_system=obx.coding_system,
        text=obx.text,
        value=obx.value,
        unit=obx.units,
        reference_range=obx.reference_range,
    )


def _as_sent(
    obx: RawObservation, action: str, outcome: str, term: LoincTerm | None, *,
    reason: str | None = None, notes: tuple[str, ...] = (), loinc: str | None = None,
) -> NormalisedObservation:
    """The value, unit and range exactly as the laboratory sent them, with whatever LOINC
    term could be resolved: results kept as received, text/coded results, status X/D."""
    return NormalisedObservation(
        set_id=obx.set_id,
        outcome=outcome,
        action=action,
        status=obx.result_status,
        loinc=term.code if term else loinc,
        display=term.long_common_name if term else obx.text,
        display_fr=term.display_fr if term else "",
        analyte=term.analyte if term else None,
        value_type=obx.value_type,
        value=None,
        value_text=obx.value,
        comparator="",
        unit=obx.units,
        reference_low=None,
        reference_high=None,
        reference_text=obx.reference_range,
        abnormal_flag=obx.abnormal_flags,
        abnormal_flag_source="received" if obx.abnormal_flags else "",
        performing_lab=obx.performing_lab,
        observed_at=obx.observed_at,
        original=_original(obx),
        reason=reason,
        notes=notes,
    )


def _as_received(
    obx: RawObservation, action: str, reason: str, term: LoincTerm | None = None
) -> NormalisedObservation:
    return _as_sent(obx, action, "as_received", term, reason=reason)


def _kept(
    obx: RawObservation, term: LoincTerm, action: str, outcome: str, notes: tuple[str, ...] = ()
) -> NormalisedObservation:
    """LOINC resolved, value left as sent (text/coded results, or status X/D)."""
    return _as_sent(obx, action, outcome, term, notes=notes)


def _backlog(sender: str, obx: RawObservation, reason: str) -> BacklogEntry:
    return BacklogEntry(
        sender=sender,
        performing_lab=obx.performing_lab,
        code=obx.code,
        coding_system=obx.coding_system,
        text=obx.text,
        unit=obx.units,
        example_value=obx.value,
        reason=reason,
    )


def _sent_as_loinc(obx: RawObservation, loinc: str) -> bool:
    """The code came from OBX-3 (or its alternate, OBX-3.4-6) coded LOINC, not a mapping."""
    return (obx.coding_system.strip().upper() in LOINC_SYSTEM_NAMES and obx.code.strip() == loinc
            or obx.alt_coding_system.strip().upper() in LOINC_SYSTEM_NAMES
            and obx.alt_code.strip() == loinc)


def _resolve(
    obx: RawObservation, sender: str, mappings: MappingSet
) -> tuple[str | None, str | None]:
    """(LOINC code, unit override) from OBX-3 itself or from the sender's mapping file."""
    if obx.coding_system.strip().upper() in LOINC_SYSTEM_NAMES and obx.code:
        return obx.code.strip(), None
    if obx.alt_coding_system.strip().upper() in LOINC_SYSTEM_NAMES and obx.alt_code:
        entry = mappings.lookup(sender, obx.code, obx.coding_system, obx.performing_lab)
        return obx.alt_code.strip(), entry.unit if entry else None
    entry = mappings.lookup(sender, obx.code, obx.coding_system, obx.performing_lab)
    if entry is None:
        return None, None
    return entry.loinc, entry.unit


def _format_range(low: Decimal | None, high: Decimal | None, source: ReferenceRange) -> str:
    if low is not None and high is not None:
        return f"{format_decimal(low)}-{format_decimal(high)}"
    if high is not None:
        return f"{'<=' if source.high_inclusive else '<'}{format_decimal(high)}"
    if low is not None:
        return f"{'>=' if source.low_inclusive else '>'}{format_decimal(low)}"
    return ""


@lru_cache(maxsize=8192)
def _converted_range(
    reference: ReferenceRange, factor: Decimal, offset: Decimal = Decimal(0)
) -> tuple[Decimal | None, Decimal | None, str]:
    """Bounds of OBX-7 in the canonical unit (cached: a lab sends the same ranges all day).

    The same conversion as the value, equation included: declared equations are increasing
    (``loinc.canonical.load_equations``), so the bounds keep their order and the flag its side.
    """
    low = convert(reference.low, factor, offset=offset) if reference.low is not None else None
    high = convert(reference.high, factor, offset=offset) if reference.high is not None else None
    return low, high, _format_range(low, high, reference)


def _derive_flag(
    quantity: Quantity,
    value: Decimal,
    low: Decimal | None,
    high: Decimal | None,
    ref: ReferenceRange,
) -> str:
    """L/H/N from the canonical value and range (HL7 table 0078); '' when undecidable.

    A one-sided range (``<5``) excludes its bound unless written ``<=``. A censored value
    (``<0.5``) only gets a flag when every value it stands for falls on the same side.
    """
    below = low is not None and (value < low or (value == low and not ref.low_inclusive))
    above = high is not None and (value > high or (value == high and not ref.high_inclusive))
    comparator = quantity.comparator
    if comparator.startswith("<"):
        if low is not None and value <= low:
            return "L"
        return "N" if high is not None and value <= high and low is None else ""
    if comparator.startswith(">"):
        if high is not None and value >= high:
            return "H"
        return "N" if low is not None and value >= low and high is None else ""
    if below:
        return "L"
    if above:
        return "H"
    return "N"


_Plan = tuple[LoincTerm, str, Decimal, Decimal, tuple[str, ...]]
# Plans per policy object, dropped with it: keyed by id(policy), a later policy allocated at a
# freed one's address would have read the plans of another policy (another set of equations).
_plans: weakref.WeakKeyDictionary[CanonicalPolicy, dict[tuple[str, str], _Plan | str]] = (
    weakref.WeakKeyDictionary())


def _unit_plan(policy: CanonicalPolicy, term: LoincTerm, raw_unit: str) -> _Plan | str:
    """(target term, target unit, factor, offset, notes) for a code and unit, or the reason
    it fails (the value in the target unit is ``value × factor + offset``).

    Cached per (policy, code, unit as written): a laboratory sends the same few hundred
    code/unit pairs all day, so UCUM parsing and pint run once per pair, not per result.
    """
    plans = _plans.get(policy)
    if plans is None:
        plans = _plans[policy] = {}
    key = (term.code, raw_unit)
    plan = plans.get(key)
    if plan is None:
        if len(plans) > 100_000:  # bounded memory, whatever senders send
            plans.clear()
        plan = plans[key] = _compute_plan(policy, term, raw_unit)
    return plan


def _compute_plan(policy: CanonicalPolicy, term: LoincTerm, raw_unit: str) -> _Plan | str:
    notes: list[str] = []
    target = policy.target(term)
    try:
        if raw_unit.strip():
            source_unit = normalise_unit(raw_unit, term.property)
        elif target is not None and family(target.unit) in _UNITLESS_FAMILIES:
            source_unit = target.unit  # INR, pH, ratios: labs leave OBX-6 empty
            notes.append("unit_assumed")
        else:
            return "missing_unit"
    except UnitError as exc:
        return exc.reason

    # LOINC property follows the unit (brief, Clarifications): a glucose sent in mmol/L under
    # the mass code 2345-7 is a moles result; it is recoded before anything else. Where the
    # unit's dimension cannot tell two codes apart (HbA1c IFCC mmol/mol and NGSP %, both
    # fractions), the declared equations say which code the unit fixes.
    declared = policy.code_for_unit(term, source_unit)
    if declared is not None:
        term = declared
        target = policy.target(term)
        notes.append("recoded_to_unit_property")
    source_family = family(source_unit)
    wanted_family = PROPERTY_FAMILY.get(term.property)
    if (
        wanted_family is not None
        and source_family != wanted_family
        # the unit the code itself gives (14585-4 in mg/mmol{creat}) always fits it
        and source_unit != policy.own_unit(term)
        and not (wanted_family == "arbitrary_conc" and source_family == "catalytic_conc")
    ):
        prop = _FAMILY_PROPERTY.get(source_family)
        sibling = policy.catalogue.sibling(term, prop) if prop else None
        if sibling is None:
            return "unit_incompatible_with_loinc"
        term = sibling
        target = policy.target(term)
        notes.append("recoded_to_unit_property")

    if target is None:
        target_term, target_unit = term, source_unit
    else:
        target_term, target_unit = target.term, target.unit
    offset = Decimal(0)
    equation = policy.equation(term, source_unit, target_unit) if source_unit != target_unit \
        else None
    if equation is not None:
        factor, offset = equation
        notes.append("converted_by_declared_equation")
    else:
        # A ratio of units is only right between codes of one property, or mass ↔ substance
        # through a molar mass; any other change of property (substance fraction → mass
        # fraction) is a different quantity that no factor relates.
        if (target_term.property != term.property
                and {PROPERTY_FAMILY.get(term.property), PROPERTY_FAMILY.get(
                    target_term.property)} != {"mass_conc", "substance_conc"}):
            return "no_declared_conversion"
        try:
            factor = conversion_factor(source_unit, target_unit, policy.molar_mass(term))
        except UnitError as exc:
            return exc.reason
    if target_term.code != term.code:
        notes.append("recoded_to_canonical_unit")
    return target_term, target_unit, factor, offset, tuple(notes)


def _normalise_one(
    obx: RawObservation,
    sender: str,
    catalogue: Catalogue,
    mappings: MappingSet,
    policy: CanonicalPolicy,
    backlog: list[BacklogEntry],
) -> NormalisedObservation:
    status = obx.result_status.strip().upper()
    action = _ACTIONS.get(status, "add")
    loinc, unit_override = _resolve(obx, sender, mappings)
    if loinc is None:
        backlog.append(_backlog(sender, obx, "unmapped_code"))
        return _as_received(obx, action, "unmapped_code")
    term = catalogue.get(loinc)
    if term is None:
        if _sent_as_loinc(obx, loinc) and is_valid_loinc_code(loinc):
            # A real LOINC code (OBX-3 coded LN, check digit right) outside the catalogue: it
            # is kept as the LOINC code it is, value as sent, and noted — an operator has
            # nothing to map, so it is no backlog entry with a guessed suggestion.
            return _as_sent(obx, action, "as_received", None, reason="loinc_not_in_catalogue",
                            notes=("not_in_catalogue",), loinc=loinc)
        reason = "loinc_not_in_catalogue" if is_valid_loinc_code(loinc) else "invalid_loinc_code"
        backlog.append(_backlog(sender, obx, reason))
        return _as_received(obx, action, reason)
    if status in _NO_VALUE:
        return _kept(obx, term, action, "no_value")
    if obx.value_type.strip().upper() not in _NUMERIC_TYPES:
        return _kept(obx, term, action, "coded")
    quantity = parse_numeric(obx.value_type.strip().upper(), obx.value)
    if quantity is None:
        if obx.value_type.strip().upper() == "SN":
            return _kept(obx, term, action, "coded", ("sn_kept_as_sent",))
        return _as_received(obx, action, "unparseable_value", term)

    plan = _unit_plan(policy, term, unit_override or obx.units)
    if isinstance(plan, str):
        backlog.append(_backlog(sender, obx, plan))
        return _as_received(obx, action, plan, term)
    target_term, target_unit, factor, offset, notes = plan
    notes = list(notes)

    value = convert(quantity.value, factor, offset=offset)
    low = high = None
    reference_text = ""
    reference = parse_range(obx.reference_range)
    if reference is not None:
        low, high, reference_text = _converted_range(reference, factor, offset)
    elif obx.reference_range.strip():
        reference_text = obx.reference_range
        notes.append("reference_range_unparsed")

    flag, flag_source = obx.abnormal_flags.strip(), "received"
    if not flag:
        flag = _derive_flag(quantity, value, low, high, reference) if reference else ""
        flag_source = "derived" if flag else ""

    return NormalisedObservation(
        set_id=obx.set_id,
        outcome="normalised",
        action=action,
        status=obx.result_status,
        loinc=target_term.code,
        display=target_term.long_common_name,
        display_fr=target_term.display_fr,
        analyte=target_term.analyte,
        value_type=obx.value_type,
        value=value,
        value_text=quantity.comparator + format_decimal(value),
        comparator=quantity.comparator,
        unit=target_unit,
        reference_low=low,
        reference_high=high,
        reference_text=reference_text,
        abnormal_flag=flag,
        abnormal_flag_source=flag_source,
        performing_lab=obx.performing_lab,
        observed_at=obx.observed_at,
        original=_original(obx),
        notes=tuple(notes),
    )


def normalise_observations(
    observations: list[RawObservation],
    *,
    sender: str,
    catalogue: Catalogue,
    mappings: MappingSet,
    policy: CanonicalPolicy | None = None,
) -> NormalisationResult:
    """Normalise the OBX of one message from ``sender`` (MSH-4.1).

    Every input observation yields exactly one output observation, in order; those that could
    not be normalised also yield a ``BacklogEntry``.
    """
    chosen = policy or _policy(catalogue)
    result = NormalisationResult()
    for obx in observations:
        result.observations.append(
            _normalise_one(obx, sender, catalogue, mappings, chosen, result.backlog)
        )
    return result
