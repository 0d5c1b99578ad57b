"""Delivery: the outbox drained per partition, the bus, leases, the worker process."""
