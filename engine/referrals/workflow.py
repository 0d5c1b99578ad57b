"""The one life cycle of a request for support, and how each standard names its states.

The DAC's workflow is the model (it is FHIR Task.status, R4 task-status); the request's
FHIR ServiceRequest.status (R4 request-status) and HL7 RF1-1 (table 0283) are views of it.
A transition not listed here is refused with the allowed ones named, whoever asks (the UI,
FHIR PUT/PATCH, an HL7 message).
"""

from __future__ import annotations

DRAFT, REQUESTED, ACCEPTED, REJECTED = "draft", "requested", "accepted", "rejected"
IN_PROGRESS, ON_HOLD, COMPLETED = "in-progress", "on-hold", "completed"
CANCELLED, EXPIRED = "cancelled", "expired"

TRANSITIONS: dict[str, frozenset[str]] = {
    DRAFT: frozenset({REQUESTED, CANCELLED}),
    REQUESTED: frozenset({ACCEPTED, REJECTED, CANCELLED, EXPIRED}),
    ACCEPTED: frozenset({IN_PROGRESS, ON_HOLD, COMPLETED, CANCELLED}),
    IN_PROGRESS: frozenset({ON_HOLD, COMPLETED, CANCELLED}),
    ON_HOLD: frozenset({IN_PROGRESS, COMPLETED, CANCELLED}),
    REJECTED: frozenset(), COMPLETED: frozenset(), CANCELLED: frozenset(),
    EXPIRED: frozenset(),
}
STATUSES = tuple(TRANSITIONS)
OPEN = frozenset({DRAFT, REQUESTED, ACCEPTED, IN_PROGRESS, ON_HOLD})
# The DAC is in the care circle from acceptance until the request closes (then the grace).
WITH_ACCESS = frozenset({ACCEPTED, IN_PROGRESS, ON_HOLD})

# FHIR R4 ServiceRequest.status (request-status) for each workflow status.
SERVICE_REQUEST_STATUS = {
    DRAFT: "draft", REQUESTED: "active", ACCEPTED: "active", IN_PROGRESS: "active",
    ON_HOLD: "on-hold", COMPLETED: "completed", REJECTED: "revoked", CANCELLED: "revoked",
    EXPIRED: "revoked",
}
# HL7 table 0283 referral status (RF1-1).
RF1_STATUS = {
    DRAFT: "P", REQUESTED: "P", ACCEPTED: "A", IN_PROGRESS: "A", ON_HOLD: "A",
    COMPLETED: "A", REJECTED: "R", CANCELLED: "R", EXPIRED: "E",
}
# RF1-1 as sent by a requester → the workflow status it asks for.
FROM_RF1 = {"P": REQUESTED, "A": ACCEPTED, "R": REJECTED, "E": EXPIRED}
# A FHIR client setting ServiceRequest.status → the workflow status it means (a requester
# may put its request on hold, resume it, or revoke it; completion is the DAC's).
FROM_SERVICE_REQUEST = {"draft": DRAFT, "active": REQUESTED, "on-hold": ON_HOLD,
                        "revoked": CANCELLED, "completed": COMPLETED}

TITLES = {
    "created": "Support request sent", "modified": "Support request modified",
    ACCEPTED: "Support request accepted", REJECTED: "Support request declined",
    IN_PROGRESS: "Support request: evaluation in progress",
    ON_HOLD: "Support request on hold", COMPLETED: "Support request closed",
    CANCELLED: "Support request cancelled", EXPIRED: "Support request expired",
    REQUESTED: "Support request resumed", "assigned": "Coordinator assigned",
    "note": "Note on the support request", "evaluation": "Evaluation recorded",
    "transferred": "Support request handed on",
}


class TransitionError(ValueError):
    """A status change the workflow does not allow; the text names the allowed ones."""


def check(current: str, target: str) -> None:
    if target not in TRANSITIONS:
        raise TransitionError(f"unknown status {target!r}; statuses: {', '.join(STATUSES)}")
    if target == current:
        return
    allowed = TRANSITIONS.get(current, frozenset())
    if target not in allowed:
        names = ", ".join(sorted(allowed)) or "none (the request is closed)"
        raise TransitionError(f"a request {current} cannot become {target}; "
                              f"allowed from {current}: {names}")


def is_closed(status: str) -> bool:
    return status not in OPEN
