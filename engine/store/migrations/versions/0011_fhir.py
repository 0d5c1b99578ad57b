"""FHIR search of a patient's results by code (issue #13): one index on observations.

`Observation?patient=X&code=Y[&_sort=-date]` filters on patient and LOINC and orders by
observation time; with (patient_id, loinc, observed_at) the count and the page are read from
the index alone (docs/benchmarks.md, "FHIR Observation search").

Revision ID: 0011_fhir
Revises: 0010_leases
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0011_fhir"
down_revision = "0010_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_observations_patient_loinc_observed", "observations",
                    ["patient_id", "loinc", "observed_at"])


def downgrade() -> None:
    op.drop_index("ix_observations_patient_loinc_observed", table_name="observations")
