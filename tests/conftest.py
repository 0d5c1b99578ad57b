"""Shared fixtures: real stores (SQLite and PostgreSQL), real engines on real sockets.

Services: on a developer machine without PostgreSQL or RabbitMQ the tests that need them are
skipped with a reason; when CI is set they fail instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("PARCOURS_CORPUS", ROOT.parent / "shared" / "corpus"))
PG_HOST = os.environ.get("PARCOURS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PARCOURS_TEST_PG_PORT", "5432"))
PG_ADMIN_URL = os.environ.get(
    "PARCOURS_TEST_PG_URL", f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test"
)
RABBIT_URL = os.environ.get("PARCOURS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (developer machine) or fail (CI) when a service does not answer."""
    if _answers(host, port):
        return
    msg = f"{name} is not answering on {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{msg} (CI is set: tests that need it must not skip)")
    pytest.skip(f"{msg}; start it to run this test")


def corpus(*parts: str) -> Path:
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"corpus not found at {path}")
        pytest.skip(f"corpus not found at {path} (set PARCOURS_CORPUS)")
    return path


def corpus_messages() -> list[Path]:
    base = CORPUS / "hl7v2"
    return sorted(p for p in base.rglob("*") if p.suffix.lower() in (".hl7", ".er7"))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    from sqlalchemy import create_engine, text

    name = f"parcours_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on both stores: the embedded default and the scaled one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'parcours.db'}"
    return request.getfixturevalue("pg_url")


def routes_text(channels: str = "", destinations: str = "{}", routes: str = "[]") -> str:
    return (
        "version: 1\nchannels:\n"
        + (channels or "  main:\n    type: mllp\n    host: 127.0.0.1\n    port: 0\n")
        + f"destinations: {destinations}\nroutes: {routes}\n"
    )


class RunningEngine:
    """An engine started in this process, on port 0, with helpers to talk to it."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @property
    def store(self) -> Any:
        return self.engine.store

    def port(self, channel: str = "main") -> int:
        return int(self.engine.channels[channel].port)

    async def send(self, payload: bytes, channel: str = "main", timeout: float = 10.0) -> bytes:
        from connectors.mllp.client import MLLPClient

        async with MLLPClient("127.0.0.1", self.port(channel), ack_timeout=timeout) as c:
            return await c.send(payload)


@pytest.fixture
async def make_engine(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Any]]:
    """Start engines from a routes text; all are stopped at the end of the test."""
    from engine.app import Engine
    from engine.config import load_text
    from engine.settings import Settings

    started: list[Any] = []

    async def factory(
        text: str | None = None, *, store_url: str | None = None, http: bool = False,
        home: Path | None = None, route: bool = False, broker_url: str | None = None,
        partitions: int | None = None, extra_env: dict[str, str] | None = None,
    ) -> RunningEngine:
        """route=False keeps intake tests looking at what intake did, before the router."""
        home = home or tmp_path / "home"
        env = {"PARCOURS_HOME": str(home), "PARCOURS_HTTP_PORT": "0"}
        if broker_url:
            env["PARCOURS_BROKER_URL"] = broker_url
        if partitions:
            env["PARCOURS_PARTITIONS"] = str(partitions)
        env["PARCOURS_SWEEP_INTERVAL"] = "0.5"
        env.update(extra_env or {})
        settings = Settings.from_env(env, store_url=store_url or None)
        config = load_text(text or routes_text(), env=settings.interpolation_env())
        engine = Engine(settings, config)
        await engine.start(http=http, route=route)
        started.append(engine)
        return RunningEngine(engine)

    yield factory
    for e in started:
        if e.started:
            await e.stop()
    await asyncio.sleep(0)


# -- running the suite on several workers (pytest-xdist, `make test`) ----------------------------

# Tests that share one thing no fresh database or vhost isolates: the RabbitMQ node itself
# (tests/routing/test_rabbitmq.py stops and restarts it, so nothing else that talks to the broker
# may run meanwhile), and the npm install of the FHIR client under var/. They are marked
# `serial`; `make test` runs everything else on several workers, then these in one process.
# (xdist's `--dist loadgroup` would do it in one run, but with pytest 9 its group suffix on the
# node id has no effect: grouped tests were seen on both workers.)
_BROKER_WORDS = ("fresh_vhost", "RABBIT_URL", "test_rabbitmq", "broker_url")
_module_words: dict[Path, bool] = {}


def _talks_to_the_broker(item: pytest.Item) -> bool:
    if item.get_closest_marker("rabbitmq") or "stack" in getattr(item, "fixturenames", ()):
        return True
    path = Path(str(item.fspath))
    if path not in _module_words:
        text = path.read_text(encoding="utf-8") if path.parent.name == "routing" else ""
        _module_words[path] = any(word in text for word in _BROKER_WORDS)
    return _module_words[path]


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _talks_to_the_broker(item) or Path(str(item.fspath)).name == "test_clients.py":
            item.add_marker(pytest.mark.serial)
