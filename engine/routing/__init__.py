"""Routing: accepted messages through routes and transformers into the outbox."""
