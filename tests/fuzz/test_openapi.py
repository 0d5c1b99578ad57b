"""schemathesis against the engine's own `/openapi.json`, over real HTTP, on both stores:
whatever a client sends — with an admin token or with none — the answer is never a 5xx.

Examples are bounded (`EXAMPLES` per operation and per token mode) so `make test` stays fast;
the Hypothesis database is off, so each run draws afresh from a fixed seed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from engine.timeline import auth

EXAMPLES = int(os.environ.get("PARCOURS_SCHEMATHESIS_EXAMPLES", "12"))


def _server_errors(base: str, headers: dict[str, str]) -> tuple[int, list[str]]:
    """(requests made, one line per 5xx: method, path template, status). Runs in a thread:
    schemathesis calls are blocking and the engine answers on the test's event loop."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed, settings

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    calls = 0
    errors: list[str] = []
    def check(op: Any) -> None:
        @seed(17)
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def call(case: Any) -> None:
            nonlocal calls
            response = case.call(base_url=base, headers=headers, timeout=30)
            calls += 1
            if response.status_code >= 500:
                errors.append(f"{op.method.upper()} {op.path} -> {response.status_code}")

        call()

    for result in schema.get_all_operations():
        check(result.ok())
    return calls, errors


@pytest.mark.timeout(600)
@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "admin-token"])
async def test_no_server_error_on_any_generated_request(
        make_engine: Any, store_url: str, tmp_path: Path, with_token: bool) -> None:
    eng = await make_engine(store_url=store_url, http=True)
    port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
    headers: dict[str, str] = {}
    if with_token:
        _, token = auth.add_user(eng.store.engine, "root", "admin")
        headers["Authorization"] = f"Bearer {token}"
    calls, errors = await asyncio.to_thread(_server_errors, f"http://127.0.0.1:{port}", headers)
    print(f"{calls} requests, {len(errors)} server errors")
    assert calls >= EXAMPLES  # the schema was read and operations were exercised
    distinct = sorted(set(errors))
    assert not errors, f"{len(errors)} server errors:\n" + "\n".join(distinct)
