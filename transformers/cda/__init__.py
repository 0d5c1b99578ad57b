"""CDA R2 documents: safe parsing and header reading (HL7 CDA R2, ANS CI-SIS)."""
