"""Inbound channel runtime: lifecycle, state and per-channel stats around the connectors.

Channels are given the intake as plain callables, so they import nothing from the engine.
"""
