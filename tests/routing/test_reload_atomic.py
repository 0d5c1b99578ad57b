"""A reload is all or nothing, and a router batch routes with one routes.yaml throughout."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine.config import load_text
from engine.routing.router import Router
from engine.routing.transformers import Registry
from engine.store.models import deliveries
from tests.conftest import routes_text
from tests.intake.test_ack_rules import msg
from transformers.exchange import Exchange
from transformers.hl7.ack import read_ack

_RELOAD: list[Callable[[], None]] = []


def reload_now(ex: Exchange) -> Exchange:
    """A transformer that reloads the routes the first time it runs."""
    while _RELOAD:
        _RELOAD.pop()()
    return ex


def _routes(route: str, extra_channel: str = "") -> str:
    return routes_text(
        channels="  main:\n    type: mllp\n    host: 127.0.0.1\n    port: 0\n" + extra_channel,
        destinations="{out: {type: discard}}",
        routes=f"\n  - {{name: {route}, when: {{message_type: ADT}}, to: [out]}}\n")


async def test_reload_mid_batch_keeps_the_batch_on_its_routes(make_engine: Any,
                                                               store_url: str) -> None:
    """The reload lands while the router thread is between two messages of one batch (the
    transformer of the first message triggers it): both messages are routed with the routes
    the batch started with, and the next batch uses the new ones."""
    eng = await make_engine(store_url=store_url)
    for cid in ("B-1", "B-2"):
        assert read_ack(await eng.send(msg(cid).encode()))[0] == "AA"
    new_cfg = load_text(_routes("new"), env={})
    old_cfg = load_text(routes_text(
        destinations="{out: {type: discard}}",
        routes="\n  - {name: old, when: {message_type: ADT}, "
               "transform: ['tests.routing.test_reload_atomic:reload_now'], to: [out]}\n"),
        env={})
    router = Router(eng.store, old_cfg, Registry().resolve, 8)
    _RELOAD.append(lambda: router.set_config(new_cfg))  # what Engine.reload does, mid-batch
    count, _, _ = await asyncio.to_thread(router.route_batch)
    assert count == 2
    with eng.store.engine.connect() as conn:
        routes = conn.execute(select(deliveries.c.route).order_by(deliveries.c.id)
                              ).scalars().all()
    assert routes == ["old", "old"]
    assert [r.cfg.name for r in router.active.routes] == ["new"]


async def test_failed_channel_start_keeps_everything_running(make_engine: Any,
                                                             tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        rf = tmp_path / "routes.yaml"
        rf.write_text(_routes("one"))
        eng = await make_engine(rf.read_text(), http=True)
        object.__setattr__(eng.engine.settings, "routes_file", rf)
        main_port = eng.port()
        extra = f"  extra:\n    type: mllp\n    host: 127.0.0.1\n    port: {port}\n"
        rf.write_text(_routes("two", extra))
        result = await eng.engine.reload()
        assert not result["ok"]
        assert any("reload failed" in p and "kept" in p for p in result["problems"])
        assert [r.name for r in eng.engine.config.routes] == ["one"]
        assert [r.cfg.name for r in eng.engine.router.active.routes] == ["one"]
        assert set(eng.engine.channels) == {"main"} and eng.port() == main_port
        assert read_ack(await eng.send(msg("STILL-UP").encode()))[0] == "AA"
        # What the operator sees: the API says the reload failed and what still runs.
        import httpx

        http_port = eng.engine._http.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{http_port}/api/routes/reload")
            assert r.status_code == 422 and "reload failed" in r.text
            r = await client.get(f"http://127.0.0.1:{http_port}/api/routes")
            assert r.json()["routes"] == ["one"]
    finally:
        taken.close()
    # Once the port is free, the same file reloads completely.
    assert (await eng.engine.reload())["ok"]
    assert set(eng.engine.channels) == {"main", "extra"}
    assert [r.name for r in eng.engine.config.routes] == ["two"]
