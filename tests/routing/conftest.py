"""Fixtures shared by the routing tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(params=["embedded", "scaled"])
def stack(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """make_engine keyword arguments: embedded default, or PostgreSQL + RabbitMQ (a fresh
    database and vhost)."""
    from tests.routing.test_rabbitmq import fresh_vhost

    if request.param == "embedded":
        yield {}
        return
    pg_url = request.getfixturevalue("pg_url")
    with fresh_vhost() as broker_url:
        yield {"store_url": pg_url, "broker_url": broker_url}
