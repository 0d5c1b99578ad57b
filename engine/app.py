"""The engine: composes store, group commit, intake, channels and the HTTP API.

This is the only place that knows all the parts; connectors, channels and transformers are
handed what they need as callables.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from channels.folder import FileOutcome, FolderChannel, FolderSettings
from channels.mllp import MLLPChannel, MLLPSettings
from channels.outbound import Destination, build_destination
from connectors.mllp.limits import ListenerLimits, SharedLimits
from engine.config import ChannelConfig, Config, ConfigError, load_file
from engine.delivery.bus import Bus
from engine.delivery.leases import PartitionLeases
from engine.delivery.local_bus import LocalBus
from engine.delivery.runner import DeliveryRunner, DeliveryStats
from engine.intake.folders import FileIntake
from engine.intake.group_commit import GroupCommitter
from engine.intake.handler import Intake, IntakePolicy
from engine.routing.router import Router, RouteResult
from engine.routing.transformers import Registry
from engine.settings import Settings
from engine.store.database import Store
from engine.store.models import DeliveryStatus, deliveries
from monitoring.metrics import Metrics, Ownership, Snapshot
from transformers.exchange import Exchange
from transformers.hl7.ack import AckError
from transformers.hl7.header import Header

log = logging.getLogger("parcours.engine")

ROUTE_BATCH = 200  # messages routed per transaction
ROUTE_PAUSE_S = 0.05


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
        on_reused_control_id=ch.on_reused_control_id,
        max_stored_bytes=ch.max_stored_bytes,
        daily_volume_alarm_bytes=ch.daily_volume_alarm_bytes,
    )


class Engine:
    def __init__(self, settings: Settings, config: Config, *, worker_argv: list[str] | None
                 = None, worker_env: dict[str, str] | None = None, is_worker: bool = False
                 ) -> None:
        """`worker_argv`: run routing and delivery in a worker process started with it
        (engine/delivery/worker.py); `is_worker`: this is that process (no channels, no HTTP)."""
        self.settings = settings
        self.is_worker = is_worker
        self.worker: Any = None
        self.config = config
        self.store = Store(settings.store_url)
        from transformers.lab.transformer import configure as configure_lab

        self.lab = configure_lab(settings.mappings_dir)
        self.committer = GroupCommitter(self.store.save_arrivals, on_commit=self._committed)
        self.intake = Intake(self.committer)
        self.file_intake = FileIntake(self.store, self.intake)
        self.channels: dict[str, MLLPChannel | FolderChannel] = {}
        # Issue #17: one budget of connections and unfinished-frame bytes for all listeners.
        self.shared_limits = SharedLimits()
        self._open_file_limit: int | None = None
        self.policies: dict[str, IntakePolicy] = {}
        base = Path(config.file).resolve().parent
        self.registry = Registry(config.transformer_paths, base=base)
        self.router = Router(self.store, config, self.registry.resolve, settings.partitions)
        self.runner = DeliveryRunner(self.store)
        from engine.timeline import install as install_timeline

        install_timeline(self)  # the `timeline` destination type and /api/v1 (issue #5)
        from engine.referrals import install as install_referrals

        install_referrals(self)  # REF^I12/I13/I14 → referrals, intake's REF check (issue #14)
        from channels.outbound.dmp import set_consent_check, set_document_versions
        from engine.delivery.dmp_versions import StoreDocumentVersions
        from engine.timeline.consent import consent_check_for

        self._dmp_consent = consent_check_for(self.store.engine)
        set_consent_check(self._dmp_consent)  # ZFA opposition stops DMP feeds
        # Successive corrections of a CR-BIO become versions 2, 3, … replacing the latest.
        self._dmp_versions = StoreDocumentVersions(self.store.engine)
        set_document_versions(self._dmp_versions)
        self.destinations: dict[str, Destination] = {}
        # Partitions are spread over the live engine processes by leases in the store; the
        # bus consumes only the owned partitions' queues (engine/delivery/leases.py,
        # engine/delivery/bus.py).
        # Embedded, one process owns them all: notices stay in the process (local_bus.py).
        self.leases = PartitionLeases(self.store, settings.partitions,
                                      lease_seconds=settings.lease_seconds)
        self.bus: Bus | LocalBus | Any = (
            LocalBus(settings.partitions, self._on_notice)
            if settings.broker_url.startswith("memory") else
            Bus(settings.broker_url, settings.partitions, self._on_notice, consume=()))
        if worker_argv is not None:
            import os

            from engine.delivery.worker import WorkerLink

            # The worker's own SQLite connections commit with synchronous=NORMAL unless told
            # otherwise; engine/store/wal_sync.py bounds what that can lose.
            env = {**(worker_env or dict(os.environ)),
                   "PARCOURS_SQLITE_SYNCHRONOUS": settings.worker_synchronous}
            self.worker = WorkerLink(worker_argv, env, self._worker_stats,
                                     self._send_application_acks, nice=settings.worker_nice)
            self.bus = self.worker  # this process owns no partition: notices go there
        self.runner.leases = self.leases
        self.runner.notify = self.notify_partition
        self.leases.on_acquired = self._partition_acquired
        self.leases.on_releasing = self._partition_releasing
        self.leases.on_lost = self._partition_lost
        self._passes: set[asyncio.Task[None]] = set()
        self._running: set[int] = set()  # partitions with a local pass running or queued
        self._again: set[int] = set()  # ... and notified again meanwhile
        self.is_router = False
        self._worker_ownership: tuple[int, int] = (0, 0)
        self._worker_stages: dict[str, float] = {}
        self._loop_cpu = 0.0
        self.metrics = Metrics(self._metrics_snapshot, ownership=self.metrics_ownership,
                               forwarded=self.worker is not None)
        self.intake.on_ack = lambda ch, _code, seconds: (
            self.metrics.ack_latency.labels(ch).observe(seconds))
        self.runner.on_outcome = lambda dest, kind, seconds: (
            self.metrics.send_duration.labels(dest, kind).observe(seconds))
        self.runner.on_delivered = lambda dest, seconds: (
            self.metrics.delivery_latency.labels(dest).observe(seconds))
        self.last_reload: dict[str, Any] = {"ok": True, "problems": [], "at": None}
        self._http: Any = None
        self._http_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.started = False

    # -- lifecycle ------------------------------------------------------------------------

    def _committed(self, _count: int, _seconds: float) -> None:
        """Group-commit thread: new messages are durable; wake the router."""
        if self.worker is not None:
            self.worker.wake()
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def metrics_ownership(self) -> Ownership:
        """Partitions this engine delivers: its worker's when it has one."""
        if self.worker is not None:
            return Ownership(*self._worker_ownership, self.worker.restarts,
                             self.worker.recycles)
        return Ownership(len(self.leases.owned()), self.leases.fenced_outcomes)

    def _worker_stats(self, stats: dict[str, Any]) -> None:
        """The worker's counters, for /metrics and the dashboard of the intake process."""
        from engine.delivery.runner import DeliveryStats

        self.runner.stats = {name: DeliveryStats(**v)
                             for name, v in (stats.get("destinations") or {}).items()}
        self.router.normalisation_counts = dict(stats.get("normalisation") or {})
        self.router.routed = int(stats.get("routed") or 0)
        self.is_router = bool(stats.get("is_router"))
        self._worker_ownership = (int(stats.get("owned") or 0), int(stats.get("fenced") or 0))
        self._worker_stages = {str(k): float(v) for k, v in (stats.get("stages") or {}).items()}
        self.metrics.forward(stats.get("histograms") or {})

    def _stats_line(self) -> str:
        self._worker_stages = self.stage_cpu()
        import json
        from dataclasses import asdict

        return json.dumps({"stats": {
            "destinations": {n: asdict(st) for n, st in self.runner.stats.items()},
            "normalisation": self.router.normalisation_counts, "routed": self.router.routed,
            "is_router": self.is_router, "owned": len(self.leases.owned()),
            "fenced": self.leases.fenced_outcomes, "stages": self._worker_stages,
            "histograms": self.metrics.delivery_samples()}})

    async def _report_forever(self) -> None:
        from engine.delivery.worker import IntakeLink, recycle_line, resident_mib

        limit = self.settings.worker_max_rss_mb
        while not self._stop.is_set():
            IntakeLink.write(self._stats_line())
            # Recycle only a worker that has done work since it started: a fresh one above
            # the limit (set too low) would otherwise be replaced every second for nothing.
            worked = self.router.routed > 0 or any(
                st.delivered or st.retried or st.dead for st in self.runner.stats.values())
            if limit and worked and (rss := resident_mib()) > limit:
                log.warning("worker above its memory limit: finishing and handing over to a "
                            "fresh one", extra={"rss_mib": round(rss), "limit_mib": limit})
                IntakeLink.write(recycle_line(rss, limit))
                self._stop.set()
                return
            try:
                await asyncio.wait_for(self._stop.wait(), 1.0)
            except TimeoutError:
                pass

    async def _sync_wal_forever(self) -> None:
        from engine.store.wal_sync import WalSync

        wal = WalSync(str(self.store.engine.url.database))
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), 1.0)
            except TimeoutError:
                pass
            try:
                await asyncio.to_thread(wal.sync)
            except OSError as exc:
                log.error("cannot fsync the WAL", extra={"error": exc.strerror})

    async def start(self, *, http: bool = True, route: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.store.migrate)
        if not self.is_worker:
            self.committer.start()
        self._tasks.append(asyncio.create_task(self._sample_loop_cpu(), name="loop-cpu"))
        if self.worker is not None:
            route = False  # the worker routes and delivers
            self.worker.start(self._loop)
        if self.is_worker:
            from engine.delivery.worker import IntakeLink

            IntakeLink(on_wake=self._wake.set, on_notify=self.notify_partition,
                       on_reload=self.reload, on_gone=self._stop.set).start(self._loop)
            self._tasks.append(asyncio.create_task(self._report_forever(), name="report"))
            if self.store.dialect == "sqlite" and self.settings.worker_synchronous == "NORMAL":
                self._tasks.append(asyncio.create_task(self._sync_wal_forever(),
                                                       name="wal-sync"))
            http = False
        if route:
            self._build_destinations(self.config)
            self.bus.start(self._loop)
            await self.leases.start()
            self._tasks.append(asyncio.create_task(self._route_forever(), name="router"))
            self._tasks.append(asyncio.create_task(self._sweep_forever(), name="sweeper"))
            from engine.store.prune import prune_forever
            from engine.store.retention import from_config

            self._tasks.append(asyncio.create_task(prune_forever(
                self.store, lambda: from_config(self.config.retention),
                lambda: self.is_router, self._stop), name="retention"))
        if not self.is_worker:
            from engine.intake.open_files import raise_soft_limit

            self._open_file_limit = raise_soft_limit()
            self._apply_limits(self.config)
        for ch in self.config.channels.values():
            if ch.enabled and not self.is_worker:
                await self._start_channel(ch)
        if http:
            await self._start_http()
        self.started = True
        log.info("engine started", extra={"channels": len(self.channels),
                                          "store": self.store.dialect})

    def _apply_limits(self, config: Config) -> None:
        from engine.intake.open_files import connection_ceiling

        limits = config.limits
        self.shared_limits.max_connections = connection_ceiling(
            limits.max_connections, self._open_file_limit, limits.fd_headroom)
        self.shared_limits.pending_frame_bytes = limits.pending_frame_bytes

    async def _start_channel(self, ch: ChannelConfig) -> None:
        policy = policy_for(ch)
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
                    limits=ListenerLimits(ch.max_connections, ch.max_connections_per_peer,
                                          ch.frame_timeout),
                ),
                receive=lambda raw, remote, p=policy: self.intake.receive(raw, p, remote),
                receive_cut=lambda head, size, reason, remote, p=policy, c=ch: (
                    self.intake.receive_oversized(head, size, c.max_frame_bytes, p, remote, reason)
                ),
                shared=self.shared_limits,
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
        self.policies[ch.name] = policy

    async def _start_http(self) -> None:
        import uvicorn

        from engine.api.http import create_app

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

    def _prepare_destinations(self, config: Config, built: list[Destination]
                              ) -> tuple[dict[str, Destination], list[Destination]]:
        """(destinations for `config`, the running ones it retires); the ones built now are
        appended to `built`. Nothing running changes here: a reload that fails later closes
        what it built."""
        old_cfg = getattr(self, "_dest_cfg", {})
        new: dict[str, Destination] = {}
        retired: list[Destination] = []
        for name, cfg in config.destinations.items():
            if cfg.get("enabled") is False:
                continue  # not built: it may name certificates this machine does not have
            if name in self.destinations and old_cfg.get(name) == cfg:
                new[name] = self.destinations[name]
            else:
                new[name] = build_destination(name, cfg)
                built.append(new[name])
                if name in self.destinations:
                    retired.append(self.destinations[name])
        retired += [d for n, d in self.destinations.items() if n not in new]
        return new, retired

    def _use_destinations(self, config: Config, new: dict[str, Destination]) -> None:
        self.destinations = new
        self._dest_cfg = dict(config.destinations)
        self.runner.configure(new, config.destinations)

    def _build_destinations(self, config: Config) -> list[Destination]:
        """(Re)build destinations whose settings changed; return the ones to close."""
        new, retired = self._prepare_destinations(config, [])
        self._use_destinations(config, new)
        return retired

    # -- partition ownership ----------------------------------------------------------------

    def notify_partition(self, partition: int) -> None:
        """Work for `partition`: run it here if this process owns it, else tell its owner.

        Coalesced: while a pass of the partition runs, any number of notices make one more
        pass after it (the router touches every partition every batch; queueing one pass
        per notice re-read the outbox for nothing and starved intake)."""
        if self.leases.token(partition) is None:
            self.bus.notify(partition)
        elif partition in self._running:
            self._again.add(partition)
        else:
            self._running.add(partition)
            task = asyncio.ensure_future(self._run_owned(partition))
            self._passes.add(task)
            task.add_done_callback(self._passes.discard)

    async def _on_notice(self, partition: int) -> None:
        """A notice from the bus, coalesced the same way (each owned queue has its own
        prefetch window: one pass per notice would queue many passes a partition)."""
        if self.leases.token(partition) is None:
            return
        if partition in self._running:
            self._again.add(partition)
            return
        self._running.add(partition)
        await self._run_owned(partition)

    async def _run_owned(self, partition: int) -> None:
        """Passes of an owned partition until no notice came in meanwhile."""
        try:
            while True:
                self._again.discard(partition)
                await self.runner.run_partition(partition)
                if partition not in self._again:
                    return
        finally:
            self._running.discard(partition)

    async def _partition_acquired(self, partition: int) -> None:
        """Consume its queue from now on, and sweep it from the store: notices sent while it
        had no owner, or taken and dropped by the previous owner, are not needed."""
        await self.bus.set_partitions(set(self.bus.consuming) | {partition})
        self.notify_partition(partition)

    async def _partition_releasing(self, partition: int) -> None:
        """Before the lease is given back: no more notices, and the pass in flight (whose
        next delivery `token()` already refuses) has recorded its outcome."""
        await self.bus.set_partitions(set(self.bus.consuming) - {partition})
        await self.runner.wait_idle(partition)

    async def _partition_lost(self, partition: int) -> None:
        await self.bus.set_partitions(set(self.bus.consuming) - {partition})

    async def _route_forever(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.is_router:
                    self.is_router = await asyncio.to_thread(self.router.acquire_leadership)
                    if not self.is_router:
                        await self._wait_wake(2.0)
                        continue
                    log.info("this process routes", extra={"store": self.store.dialect})
                count, touched, app_acks = await asyncio.to_thread(
                    self.router.route_batch, ROUTE_BATCH)
                for p in touched:
                    self.notify_partition(p)
                if app_acks:
                    await self._send_application_acks(app_acks)
                if count == 0:
                    await self._wait_wake(1.0)
                elif count < ROUTE_BATCH:
                    # Let arrivals accumulate a little: one routing transaction (one fsync,
                    # one hold of SQLite's write lock) per 50 ms, not one per intake commit.
                    await asyncio.sleep(ROUTE_PAUSE_S)
            except Exception:
                log.exception("routing failed; retrying")
                self.is_router = False
                await asyncio.to_thread(self.router.release_leadership)
                await self._wait_wake(1.0)

    async def _send_application_acks(self, requests: list[dict[str, Any]]) -> None:
        if self.is_worker:  # only the intake process holds the senders' connections
            from engine.delivery.worker import IntakeLink, encode_app_acks

            IntakeLink.write(encode_app_acks(requests))
            return
        from sqlalchemy import update

        from engine.routing.application_ack import build_application_ack
        from engine.store.models import messages

        updates = []
        for req in requests:
            policy = self.policies.get(req["channel"])
            code, ack = build_application_ack(req, policy.application if policy else "PARCOURS")
            status = "not-required"
            if ack is not None:
                runtime = self.channels.get(req["channel"])
                pushed = isinstance(runtime, MLLPChannel) and bool(req["remote"]) and \
                    runtime.server.push(req["remote"], ack)
                status = "sent" if pushed else "undeliverable"
                if not pushed:
                    log.warning("application ACK could not be sent: sender connection gone",
                                extra={"message_id": req["id"], "channel": req["channel"]})
            updates.append({"id": req["id"], "code": code, "ack": ack, "status": status})

        def save() -> None:
            with self.store.engine.begin() as conn:
                for u in updates:
                    conn.execute(update(messages).where(messages.c.id == u["id"]).values(
                        app_ack_code=u["code"], app_ack=u["ack"], app_ack_status=u["status"]))

        await asyncio.to_thread(save)

    async def _wait_wake(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _sweep_forever(self) -> None:
        """The store is the truth: run every owned partition with due work, so a lost
        notice (broker restart, killed consumer, missed timer) only ever delays work. Each
        process sweeps the partitions it owns; the others are their owners' to sweep."""
        while not self._stop.is_set():
            try:
                for p in await asyncio.to_thread(self.due_partitions):
                    if self.leases.token(p) is not None:
                        self.notify_partition(p)
            except Exception:
                log.exception("sweep failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.sweep_interval)
            except TimeoutError:
                pass

    def due_partitions(self) -> list[int]:
        from datetime import UTC, datetime

        from sqlalchemy import select

        q = (select(deliveries.c.partition).distinct()
             .where(deliveries.c.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRY)),
                    deliveries.c.next_attempt_at <= datetime.now(UTC)))
        with self.store.engine.connect() as conn:
            return [int(p) for p in conn.execute(q).scalars()]

    async def reload(self) -> dict[str, Any]:
        """Load routes.yaml again. A bad file changes nothing and says why."""
        from datetime import UTC, datetime

        try:
            config = await asyncio.to_thread(
                load_file, self.settings.routes_file, env=self.settings.interpolation_env()
            )
        except ConfigError as exc:
            self.last_reload = {"ok": False, "problems": [str(p) for p in exc.problems],
                                "at": datetime.now(UTC).isoformat()}
            log.error("reload refused: routes file has problems",
                      extra={"problems": len(exc.problems)})
            return self.last_reload
        try:
            async with self._reload_lock:  # SIGHUP and the API at once: one after the other
                await self._swap(config)
        except Exception as exc:  # the running configuration was kept (see _swap)
            self.last_reload = {"ok": False, "problems": [f"reload failed, the running "
                                                          f"routes and channels were kept: "
                                                          f"{type(exc).__name__}: {exc}"],
                                "at": datetime.now(UTC).isoformat()}
            log.error("reload failed; running configuration kept",
                      extra={"error": type(exc).__name__})
            return self.last_reload
        self.last_reload = {"ok": True, "problems": [], "at": datetime.now(UTC).isoformat()}
        log.info("routes reloaded", extra={"routes": len(config.routes),
                                           "destinations": len(config.destinations)})
        for p in await asyncio.to_thread(self.due_partitions):
            self.notify_partition(p)
        return self.last_reload

    async def _swap(self, config: Config) -> None:
        """All or nothing: destinations are built and channels started first; routes and
        destinations are swapped only once every one of them worked. If a destination
        cannot be built or a channel cannot start (a port taken, a folder not writable),
        the channels started are stopped again, the ones stopped are started again with
        their running settings, and routes, destinations and channels stay as they were."""
        built: list[Destination] = []
        old = self.config
        stopped: list[ChannelConfig] = []
        started: list[str] = []
        try:
            if self.worker is not None:  # the worker builds the destinations it sends to
                new_dests, retired = dict(self.destinations), []
            else:
                new_dests, retired = self._prepare_destinations(config, built)
            routes = self.router.prepare(config)
            # New channels first: they take nothing from a running one, so a port already
            # taken fails the reload before any running channel was touched.
            for name, ch in config.channels.items():
                if self.is_worker:
                    break  # the intake process runs the channels
                if ch.enabled and name not in self.channels and name not in old.channels:
                    await self._start_channel(ch)
                    started.append(name)
            for name, ch in old.channels.items():
                new_ch = config.channels.get(name)
                if name in self.channels and (new_ch is None or new_ch != ch
                                              or not new_ch.enabled):
                    await self.channels.pop(name).stop()
                    stopped.append(ch)
            for name, ch in config.channels.items():
                if ch.enabled and name not in self.channels and not self.is_worker:
                    await self._start_channel(ch)
                    started.append(name)
        except Exception:
            for name in started:
                await self.channels.pop(name).stop()
            for ch in stopped:
                try:
                    await self._start_channel(ch)
                except Exception:  # its port was taken meanwhile: on the health page
                    log.exception("channel could not be restarted after a failed reload",
                                  extra={"channel": ch.name})
            for d in built:
                await d.close()
            raise
        if self.worker is None:
            self._use_destinations(config, new_dests)
        self.router.use(routes)
        self.config = config
        self._apply_limits(config)
        if self.worker is not None:
            self.worker.reload()  # the worker reads the same file again for its routes
        for d in retired:
            await d.close()

    async def stop(self) -> None:
        self._stop.set()
        for runtime in list(self.channels.values()):
            await runtime.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self.worker is not None:
            await self.worker.aclose()  # it finishes and records what it has in flight
        # Passes finish and record their delivery in flight, then every lease goes back at
        # once: the other processes take the partitions on their next tick.
        await self.leases.stop()
        await asyncio.to_thread(self.bus.stop)
        await self.runner.aclose()  # no partition runs any more; in-flight ones record
        await asyncio.to_thread(self.router.release_leadership)
        for d in self.destinations.values():
            await d.close()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_task:
                await self._http_task
        await asyncio.to_thread(self.committer.close)
        self._release_dmp_hooks()
        self.store.close()
        self.started = False
        log.info("engine stopped")

    def _release_dmp_hooks(self) -> None:
        """The DMP hooks are process-wide defaults bound to this engine's store: a stopped
        engine's store must not serve destinations built later (another engine, a test)."""
        from channels.outbound import dmp

        if dmp._default_consent_check is self._dmp_consent:
            dmp.set_consent_check(None)
        if dmp._default_versions is self._dmp_versions:
            dmp.set_document_versions(None)

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        await self.start()
        await self._stop.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    # -- state for the API ----------------------------------------------------------------

    def channel_snapshot(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, rt in self.channels.items():
            st = self.intake.stats_for(name)
            row: dict[str, Any] = {
                "type": rt.state.type, "state": rt.state.state, "detail": rt.state.detail,
                "up": rt.state.state in ("listening", "polling"), "received": st.received,
                "bytes": st.bytes, "acks": dict(st.acks), "duplicates": st.duplicates,
                "control_id_reuses": st.reuses, "control_id_reuses_refused": st.reuses_refused,
                "parse_errors": st.parse_errors, "store_errors": st.store_errors,
                "connections_open": 0,
                "volume_alarms": self.intake.volume_alarms(name),
            }
            if isinstance(rt, MLLPChannel):
                row["connections_open"] = rt.server.stats.connections_open
            else:
                row["files_taken"] = rt.stats.files_taken
                row["files_failed"] = rt.stats.files_failed
            out[name] = row
        return out

    def queue_snapshot(self) -> dict[str, tuple[int, float]]:
        from datetime import UTC, datetime

        from sqlalchemy import func, select

        q = (select(deliveries.c.destination, func.count(), func.min(deliveries.c.created_at))
             .where(deliveries.c.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRY)))
             .group_by(deliveries.c.destination))
        now = datetime.now(UTC)
        out = {name: (0, 0.0) for name in self.config.destinations}
        with self.store.engine.connect() as conn:
            for dest, n, oldest in conn.execute(q):
                if oldest is not None and oldest.tzinfo is None:
                    oldest = oldest.replace(tzinfo=UTC)
                out[dest] = (int(n), (now - oldest).total_seconds() if oldest else 0.0)
        return out

    def _metrics_snapshot(self) -> Snapshot:
        from sqlalchemy import func, select

        from engine.store.models import messages

        with self.store.engine.connect() as conn:
            by_status = {s: int(n) for s, n in conn.execute(
                select(messages.c.status, func.count()).group_by(messages.c.status))}
        destinations = {name: {"delivered": st.delivered, "retried": st.retried,
                               "dead": st.dead} for name, st in self.runner.stats.items()}
        for name in self.config.destinations:
            destinations.setdefault(name, {"delivered": 0, "retried": 0, "dead": 0})
        return Snapshot(
            channels=self.channel_snapshot(), destinations=destinations,
            queues=self.queue_snapshot(), normalisation=dict(self.router.normalisation_counts),
            backlog_codes=self.backlog_size(), messages_by_status=by_status,
            stage_cpu=self.stage_cpu(),
        )

    def stage_cpu(self) -> dict[str, float]:
        """CPU seconds by stage of the pipeline, each measured with `time.thread_time` in the
        thread doing that work (docs/benchmarks.md explains how to read them). With a worker
        process, its stages as it last reported them, beside this process's intake."""
        if self.worker is not None:
            stages = dict(self._worker_stages)
        else:
            stages = {"router": self.router.cpu_seconds,
                      "recorder": self.runner.recorder_cpu_seconds}
            stages.update({f"transformer:{n}": v
                           for n, v in self.router.transformer_cpu.items()})
            for name, dest in self.destinations.items():
                cpu = getattr(dest, "cpu_seconds", None)
                if isinstance(cpu, float):
                    stages[f"destination:{name}"] = cpu
        loop_stage = "worker:event-loop" if self.is_worker else "event-loop"
        stages[loop_stage] = self._loop_cpu
        if not self.is_worker:
            stages["intake:group-commit"] = self.committer.cpu_seconds
        return stages

    async def _sample_loop_cpu(self) -> None:
        """The event loop thread's own CPU (listener, intake decisions, ACKs, the runner's
        orchestration): `thread_time` read from that thread."""
        import time

        while not self._stop.is_set():
            self._loop_cpu = time.thread_time()
            try:
                await asyncio.wait_for(self._stop.wait(), 0.5)
            except TimeoutError:
                pass

    # -- the HTTP side's port (engine/api/port.py) -----------------------------------------

    def running_channels(self) -> set[str]:
        return set(self.channels)

    def destination_stats(self) -> dict[str, DeliveryStats]:
        return {name: self.runner.stats_for(name) for name in list(self.runner.stats)}

    def routing_facts(self) -> dict[str, Any]:
        """This process's part in routing and delivery, as the dashboard shows it; the same
        partition count as the gauge parcours_partitions_owned (with a worker process, the
        worker's share as it reports it)."""
        ownership = self.metrics_ownership()
        return {"routed": self.router.routed, "is_router": self.is_router,
                "partitions_owned": ownership.partitions_owned,
                "partitions": self.settings.partitions,
                "members": len(self.leases.members) or 1,
                "fenced": ownership.fenced_outcomes}

    def evaluate_routes(self, exchange: Exchange) -> list[RouteResult]:
        """A dry run: every route's transformers run, even for disabled destinations."""
        return self.router.evaluate(exchange, run_disabled=True)

    def replay(self, message_id: int) -> int:
        """Route a stored message again; returns the deliveries made. Thread-safe."""
        n, parts = self.router.replay(message_id)
        for p in parts:
            self.bus.notify(p)
        return n

    def retry(self, delivery_ids: Iterable[int], refused: dict[int, str]) -> None:
        """Dead or failed deliveries due again now; `refused` gets why others are not."""
        for p in self.runner.retry(list(delivery_ids), refused):
            self.bus.notify(p)

    def notify_partition_from_thread(self, partition: int) -> None:
        """`notify_partition` for code running outside the engine's loop (a worker thread
        that committed work for the partition)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.notify_partition, partition)

    def add_intake_check(self, message_type: str,
                         check: Callable[[str, Header], list[AckError]]) -> None:
        """A content check intake runs before it answers for `message_type` (MSH-9.1)."""
        self.intake.content_checks[message_type] = check

    def reload_mappings(self) -> Path:
        """Re-read the per-sender mapping files, so replays normalise with a new mapping."""
        from transformers.lab.transformer import configure as configure_lab

        self.lab = configure_lab(self.settings.mappings_dir)
        return self.settings.mappings_dir

    def backlog_size(self) -> int:
        """Distinct unmapped codes still open in the mapping backlog (issue #4)."""
        from engine.routing.backlog import size

        return size(self.store)

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
