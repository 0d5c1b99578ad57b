"""Accounts for the UI tests, made the way an administrator does (`parcours users add`)."""

from __future__ import annotations

from typing import Any

from tests.ui.conftest import Account


def create_account(engine: Any, username: str, role: str,
                   professional_id: str | None = None) -> Account:
    from engine.timeline.auth import add_user

    _uid, token = add_user(engine.timeline.db, username, role, professional_id)
    return Account(username, token, role)
