"""Billing sink: LabReport events -> charges, corrections and reversals (see README.md)."""
