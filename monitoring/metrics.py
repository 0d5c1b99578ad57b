"""Prometheus metrics (prometheus-client), following the naming conventions: base units in
names (`_seconds`, `_bytes`), `_total` for counters, and bounded label sets — a channel, a
destination, an ACK code, an outcome; never a patient id or a message id.

Counters that parts of the engine already keep (intake, listener and delivery statistics) are
read at scrape time by a collector, so the hot path pays nothing for them; only latency
histograms are observed as events happen. The queue gauges come from the store, which is the
truth after a restart, cached for a couple of seconds so a scrape storm cannot load it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
               3600.0)


@dataclass
class Snapshot:
    """What the collector reads: plain numbers gathered by the engine at scrape time."""

    channels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    destinations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    queues: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # depth, oldest age
    normalisation: Mapping[str, int] = field(default_factory=dict)  # outcome -> count
    backlog_codes: int = 0
    messages_by_status: Mapping[str, int] = field(default_factory=dict)
    stage_cpu: Mapping[str, float] = field(default_factory=dict)  # stage -> CPU seconds


class _Collector:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self._snapshot()
        received = CounterMetricFamily("parcours_channel_messages_received",
                                       "Messages received, per channel.", labels=["channel"])
        rbytes = CounterMetricFamily("parcours_channel_received_bytes",
                                     "Bytes of messages received, per channel.",
                                     labels=["channel"])
        acks = CounterMetricFamily("parcours_channel_acks_sent",
                                   "Acknowledgements sent, per channel and MSA-1 code.",
                                   labels=["channel", "code"])
        parse = CounterMetricFamily("parcours_channel_parse_errors",
                                    "Messages whose MSH or character set could not be read.",
                                    labels=["channel"])
        dups = CounterMetricFamily("parcours_channel_duplicates",
                                   "Identical resends (MSH-7 aside) answered with the "
                                   "original ACK and not processed again.",
                                   labels=["channel"])
        reuses = CounterMetricFamily("parcours_control_id_reuses",
                                     "New content under a control id the sender already used "
                                     "(MSH-10, or a CDA ClinicalDocument/id): processed as a "
                                     "new message and flagged, or refused (channel option "
                                     "on_reused_control_id). Never counted as duplicates.",
                                     labels=["channel", "outcome"])
        alarms = CounterMetricFamily("parcours_sender_volume_alarms",
                                     "Senders that passed the channel's daily volume alarm "
                                     "(daily_volume_alarm_bytes), once per sender and day.",
                                     labels=["channel"])
        conns = GaugeMetricFamily("parcours_channel_open_connections",
                                  "Open MLLP connections, per channel.", labels=["channel"])
        up = GaugeMetricFamily("parcours_channel_up",
                               "1 when the channel listens or polls, else 0.",
                               labels=["channel", "type"])
        for name, c in s.channels.items():
            received.add_metric([name], c.get("received", 0))
            rbytes.add_metric([name], c.get("bytes", 0))
            parse.add_metric([name], c.get("parse_errors", 0))
            dups.add_metric([name], c.get("duplicates", 0))
            reuses.add_metric([name, "processed"], c.get("control_id_reuses", 0))
            reuses.add_metric([name, "refused"], c.get("control_id_reuses_refused", 0))
            conns.add_metric([name], c.get("connections_open", 0))
            alarms.add_metric([name], c.get("volume_alarms", 0))
            up.add_metric([name, c.get("type", "")], 1 if c.get("up") else 0)
            for code, n in c.get("acks", {}).items():
                acks.add_metric([name, code], n)
        yield from (received, rbytes, acks, parse, dups, reuses, conns, up, alarms)

        delivered = CounterMetricFamily("parcours_destination_delivered",
                                        "Deliveries that succeeded.", labels=["destination"])
        retried = CounterMetricFamily("parcours_destination_retries",
                                      "Delivery attempts that failed and will be retried.",
                                      labels=["destination"])
        dead = CounterMetricFamily("parcours_destination_dead_letters",
                                   "Deliveries given up (dead-letter).", labels=["destination"])
        for name, d in s.destinations.items():
            delivered.add_metric([name], d.get("delivered", 0))
            retried.add_metric([name], d.get("retried", 0))
            dead.add_metric([name], d.get("dead", 0))
        yield from (delivered, retried, dead)

        depth = GaugeMetricFamily("parcours_destination_queue_depth",
                                  "Deliveries waiting (pending or retry), from the store.",
                                  labels=["destination"])
        age = GaugeMetricFamily("parcours_destination_oldest_pending_age_seconds",
                                "Age of the oldest waiting delivery, from the store.",
                                labels=["destination"])
        for name, (n, oldest) in s.queues.items():
            depth.add_metric([name], n)
            age.add_metric([name], oldest)
        yield from (depth, age)

        obs = CounterMetricFamily("parcours_normalisation_observations",
                                  "Observations through LOINC/UCUM normalisation, by outcome.",
                                  labels=["outcome"])
        for outcome, n in s.normalisation.items():
            obs.add_metric([outcome], n)
        yield obs
        backlog = GaugeMetricFamily("parcours_mapping_backlog_codes",
                                    "Distinct local codes waiting for a LOINC mapping.")
        backlog.add_metric([], s.backlog_codes)
        yield backlog
        stored = GaugeMetricFamily("parcours_store_messages",
                                   "Messages in the store, by status.", labels=["status"])
        for status, n in s.messages_by_status.items():
            stored.add_metric([status], n)
        yield stored
        stages = CounterMetricFamily(
            "parcours_stage_cpu_seconds",
            "CPU time by pipeline stage (event loop, group commit, router, each transformer, "
            "each destination that measures itself, outcome recorder).", labels=["stage"])
        for stage, seconds in sorted(s.stage_cpu.items()):
            stages.add_metric([stage], seconds)
        yield stages


@dataclass
class Ownership:
    """What this process owns of the partitions, read live at every scrape (not cached: a
    takeover is measured in seconds and must show as it happens)."""

    partitions_owned: int = 0
    fenced_outcomes: int = 0
    # The embedded default's worker process: started again after it died, and replaced
    # after it reached its memory limit (PARCOURS_WORKER_MAX_RSS_MB).
    worker_restarts: int = 0
    worker_recycles: int = 0


class _OwnershipCollector:
    def __init__(self, read: Callable[[], Ownership]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        o = self._read()
        owned = GaugeMetricFamily("parcours_partitions_owned",
                                  "Partitions whose lease this engine process holds.")
        owned.add_metric([], o.partitions_owned)
        fenced = CounterMetricFamily(
            "parcours_delivery_outcomes_fenced",
            "Delivery outcomes refused because the partition's lease had moved to another "
            "process (a stale owner's writes).")
        fenced.add_metric([], o.fenced_outcomes)
        restarts = CounterMetricFamily(
            "parcours_worker_restarts", "Worker processes started again after one exited "
            "unasked (a crash, a kill).")
        restarts.add_metric([], o.worker_restarts)
        recycles = CounterMetricFamily(
            "parcours_worker_recycles", "Worker processes replaced after reaching their "
            "memory limit (PARCOURS_WORKER_MAX_RSS_MB); nothing failed.")
        recycles.add_metric([], o.worker_recycles)
        yield from (owned, fenced, restarts, recycles)


Samples = list[tuple[str, dict[str, str], float]]  # (series name, labels, value)

_DELIVERY_HISTOGRAMS = {
    "parcours_destination_end_to_end_latency_seconds":
        "From reception of a message to its successful delivery.",
    "parcours_destination_send_duration_seconds": "Duration of one delivery attempt.",
}


class _ForwardedHistograms:
    """The delivery histograms of the process that delivers (the embedded default's worker),
    exposed by the process that serves /metrics: cumulative series, so a lost stats line
    loses nothing but freshness."""

    def __init__(self) -> None:
        self.samples: dict[str, Samples] = {}

    def collect(self) -> Iterable[Metric]:
        for name, doc in _DELIVERY_HISTOGRAMS.items():
            family = Metric(name, doc, "histogram")
            for series, labels, value in self.samples.get(name, ()):
                family.add_sample(series, labels, value)
            yield family


class Metrics:
    """One registry per engine (tests run several engines in one process).

    `forwarded`: this process delivers nothing itself (a worker process does); its delivery
    histograms are the worker's, received with `forward()`."""

    def __init__(self, snapshot: Callable[[], Snapshot], cache_seconds: float = 2.0,
                 ownership: Callable[[], Ownership] | None = None,
                 forwarded: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        own = None if forwarded else self.registry
        self._forwarded = _ForwardedHistograms() if forwarded else None
        self._snapshot_fn = snapshot
        self._cache_seconds = cache_seconds
        self._cached: tuple[float, Snapshot] | None = None
        self.ack_latency = Histogram(
            "parcours_channel_ack_latency_seconds",
            "From a complete frame to its ACK being released (store commit included).",
            ["channel"], buckets=LATENCY_BUCKETS, registry=self.registry)
        names = list(_DELIVERY_HISTOGRAMS)
        self.delivery_latency = Histogram(
            names[0], _DELIVERY_HISTOGRAMS[names[0]], ["destination"], buckets=E2E_BUCKETS,
            registry=own)
        self.send_duration = Histogram(
            names[1], _DELIVERY_HISTOGRAMS[names[1]], ["destination", "outcome"],
            buckets=LATENCY_BUCKETS, registry=own)
        if self._forwarded is not None:
            self.registry.register(self._forwarded)
        self.registry.register(_Collector(self._snapshot))
        self.registry.register(_OwnershipCollector(ownership or Ownership))

    def _snapshot(self) -> Snapshot:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self._cache_seconds:
            self._cached = (now, self._snapshot_fn())
        return self._cached[1]

    def delivery_samples(self) -> dict[str, Samples]:
        """This process's delivery histograms, cumulative, for `forward()` in another."""
        out: dict[str, Samples] = {}
        for histogram in (self.delivery_latency, self.send_duration):
            for metric in histogram.collect():
                out[metric.name] = [(x.name, dict(x.labels), x.value) for x in metric.samples
                                    if not x.name.endswith("_created")]
        return out

    def forward(self, samples: Mapping[str, Samples]) -> None:
        if self._forwarded is not None:
            self._forwarded.samples = {
                name: [(str(n), {str(k): str(v) for k, v in labels.items()}, float(value))
                       for n, labels, value in series]
                for name, series in samples.items() if name in _DELIVERY_HISTOGRAMS}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def names(self) -> set[str]:
        """Every series name the engine can expose, observed yet or not (tests check that
        dashboards and alert rules only use these)."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "gauge": ("",)}
        out: set[str] = set()
        for metric in self.registry.collect():
            for suffix in suffixes.get(metric.type, ("",)):
                out.add(metric.name + suffix)
        return out
