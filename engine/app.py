"""The engine: composes store, group commit, intake, channels and the HTTP API.

This is the only place that knows all the parts; connectors, channels and transformers are
handed what they need as callables.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from channels.folder import FileOutcome, FolderChannel, FolderSettings
from channels.mllp import MLLPChannel, MLLPSettings

from .config import ChannelConfig, Config
from .file_intake import FileIntake
from .group_commit import GroupCommitter
from .intake import Intake, IntakePolicy
from .settings import Settings
from .store import Store

log = logging.getLogger("parcours.engine")


def policy_for(ch: ChannelConfig) -> IntakePolicy:
    return IntakePolicy(
        channel=ch.name,
        charset=ch.charset,
        default_charset=ch.default_charset,
        processing_ids=ch.accept.processing_ids,
        versions=ch.accept.versions,
        message_types=ch.accept.message_types,
        require_segments=ch.accept.require_segments,
        application=ch.application,
    )


class Engine:
    def __init__(self, settings: Settings, config: Config) -> None:
        self.settings = settings
        self.config = config
        self.store = Store(settings.store_url)
        self.committer = GroupCommitter(self.store.save_arrivals)
        self.intake = Intake(self.committer)
        self.file_intake = FileIntake(self.store, self.intake)
        self.channels: dict[str, MLLPChannel | FolderChannel] = {}
        self.policies: dict[str, IntakePolicy] = {}
        self._http: Any = None
        self._http_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.started = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, *, http: bool = True) -> None:
        await asyncio.to_thread(self.store.migrate)
        self.committer.start()
        for ch in self.config.channels.values():
            if ch.enabled:
                await self._start_channel(ch)
        if http:
            await self._start_http()
        self.started = True
        log.info("engine started", extra={"channels": len(self.channels),
                                          "store": self.store.dialect})

    async def _start_channel(self, ch: ChannelConfig) -> None:
        policy = policy_for(ch)
        self.policies[ch.name] = policy
        runtime: MLLPChannel | FolderChannel
        if ch.type == "mllp":
            tls = ch.tls
            runtime = MLLPChannel(
                ch.name,
                MLLPSettings(
                    host=ch.host, port=ch.port, max_frame_bytes=ch.max_frame_bytes,
                    idle_timeout=ch.idle_timeout,
                    tls_cert=tls.cert if tls else None, tls_key=tls.key if tls else None,
                    tls_ca=tls.ca if tls else None,
                    require_client_cert=tls.require_client_cert if tls else False,
                    allowed_subjects=tls.allowed_subjects if tls else (),
                ),
                receive=lambda raw, remote, p=policy: self.intake.receive(raw, p, remote),
                receive_cut=lambda head, size, reason, remote, p=policy, c=ch: (
                    self.intake.receive_oversized(head, size, c.max_frame_bytes, p, remote, reason)
                ),
            )
        else:
            path = Path(ch.path)

            async def process(name: str, data: bytes, sha: str, p: IntakePolicy = policy
                              ) -> FileOutcome:
                return await self.file_intake.process(p, name, data, sha)

            runtime = FolderChannel(
                ch.name,
                FolderSettings(
                    path=path, patterns=ch.patterns, poll_interval=ch.poll_interval,
                    settle_seconds=ch.settle_seconds,
                    archive=Path(ch.archive) if ch.archive else None,
                    error=Path(ch.error) if ch.error else None,
                ),
                process,
            )
        await runtime.start()
        self.channels[ch.name] = runtime

    async def _start_http(self) -> None:
        import uvicorn

        from .http import create_app

        config = uvicorn.Config(
            create_app(self), host=self.settings.host, port=self.settings.http_port,
            log_level="warning", lifespan="off", access_log=False,
        )
        self._http = uvicorn.Server(config)
        self._http.install_signal_handlers = lambda: None  # the engine owns signals
        self._http_task = asyncio.create_task(self._http.serve(), name="http")
        for _ in range(200):
            if self._http.started or self._http_task.done():
                break
            await asyncio.sleep(0.01)
        if self._http_task.done():
            self._http_task.result()

    async def stop(self) -> None:
        for runtime in list(self.channels.values()):
            await runtime.stop()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_task:
                await self._http_task
        await asyncio.to_thread(self.committer.close)
        self.store.close()
        self.started = False
        log.info("engine stopped")

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self.start()
        await self._stop.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    # -- state for the API ----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        try:
            self.store.ping()
            store_ok = True
        except Exception:
            store_ok = False
        channels = {name: {"type": rt.state.type, "state": rt.state.state,
                           "detail": rt.state.detail} for name, rt in self.channels.items()}
        ok = store_ok and all(c["state"] in ("listening", "polling") for c in channels.values())
        return {"status": "ok" if ok else "degraded", "store": "ok" if store_ok else "down",
                "channels": channels}
