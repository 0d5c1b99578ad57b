"""FHIR errors as OperationOutcome (FHIR R4 §3.1.0.7 "OperationOutcome", http.html §2.21.0).

A handler raises `FhirError`; the router turns it into the resource and the HTTP status. The
diagnostics never carry patient data: they name parameters, types and ids only.
"""

from __future__ import annotations

from typing import Any

# HTTP status → OperationOutcome.issue.code (FHIR R4 ValueSet issue-type)
ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
               405: "not-supported", 406: "not-supported", 409: "conflict", 410: "deleted",
               412: "conflict", 415: "not-supported", 422: "processing", 500: "exception"}


class FhirError(Exception):
    """An error answered as an OperationOutcome with `status`."""

    def __init__(self, status: int, diagnostics: str, code: str | None = None,
                 headers: dict[str, str] | None = None, expression: str | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or ISSUE_CODES.get(status, "processing")
        self.headers = headers or {}
        self.expression = expression


def operation_outcome(diagnostics: str, code: str = "processing", severity: str = "error",
                      expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_of(error: FhirError) -> dict[str, Any]:
    return operation_outcome(error.diagnostics, error.code, expression=error.expression)
