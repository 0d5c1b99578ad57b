"""Intake: what arrives, how it is acknowledged and made durable."""
