"""Laboratory result helpers used by the LOINC normalisation transformer."""
