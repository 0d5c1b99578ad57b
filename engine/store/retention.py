"""How long the store keeps what, per channel and per status (routes.yaml `retention:`).

Why a policy and not a cron of DELETEs: what may go depends on where a message stands. A
message still owed to a destination, the rows the dedup window needs to recognise a resend,
and what the timeline and the audit log keep are never candidates, whatever the clocks say
(engine/store/prune.py applies that). Until `retention:` is set, nothing is ever removed: the
behaviour of versions before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from engine.store.models import MessageStatus

# Statuses whose clocks run: a message routed and settled (done: every delivery delivered;
# unrouted: nothing to deliver), and the ones intake settled at once, which have no
# deliveries and whose clock is their arrival (duplicate, error, rejected). Accepted,
# routed and failed messages (one delivery dead-lettered: an operator may retry it) are
# never pruned.
SETTLED = (MessageStatus.DONE, MessageStatus.UNROUTED, MessageStatus.DUPLICATE,
           MessageStatus.ERROR, MessageStatus.REJECTED)


@dataclass(frozen=True)
class Keep:
    """Days after settlement; None keeps forever."""

    payload_days: float | None = None  # raw bytes and delivered payloads
    attempt_days: float | None = None  # delivery attempts of delivered deliveries
    message_days: float | None = None  # the whole message row with its deliveries

    def over(self, other: Keep) -> Keep:
        """This rule's values where set, `other`'s elsewhere."""
        return Keep(*(mine if mine is not None else theirs for mine, theirs in zip(
            (self.payload_days, self.attempt_days, self.message_days),
            (other.payload_days, other.attempt_days, other.message_days), strict=True)))

    @property
    def forever(self) -> bool:
        return self.payload_days is None and self.attempt_days is None and \
            self.message_days is None


@dataclass(frozen=True)
class ChannelRetention:
    keep: Keep = field(default_factory=Keep)
    statuses: Mapping[str, Keep] = field(default_factory=dict)


@dataclass(frozen=True)
class Retention:
    keep: Keep = field(default_factory=Keep)
    statuses: Mapping[str, Keep] = field(default_factory=dict)
    channels: Mapping[str, ChannelRetention] = field(default_factory=dict)
    # A resend (same sender, same MSH-10) is recognised as long as the first message's row
    # exists. Whole rows holding a dedup key go only once this window has passed too; None
    # (the default) recognises resends forever, so such rows are never removed.
    dedup_window_days: float | None = None
    every_minutes: float = 0.0  # the engine's scheduled pass; 0: only `parcours prune`

    @property
    def enabled(self) -> bool:
        return not (self.keep.forever and all(k.forever for k in self.statuses.values())
                    and all(c.keep.forever and all(k.forever for k in c.statuses.values())
                            for c in self.channels.values()))

    def rule(self, channel: str | None, status: str) -> Keep:
        """Most specific first: channel + status, channel, status, everything."""
        c = self.channels.get(channel) if channel is not None else None
        rule = self.statuses.get(status, Keep()).over(self.keep)
        if c is not None:
            rule = c.keep.over(rule)
            rule = c.statuses.get(status, Keep()).over(rule)
        return rule

    def dedup_cutoff(self, now: datetime) -> datetime | None:
        if self.dedup_window_days is None:
            return None
        return now - timedelta(days=self.dedup_window_days)


def _keep(data: Mapping[str, Any] | None) -> Keep:
    data = data or {}
    return Keep(data.get("payload_days"), data.get("attempt_days"), data.get("message_days"))


def _statuses(data: Mapping[str, Any] | None) -> dict[str, Keep]:
    return {status: _keep(rule) for status, rule in (data or {}).items()}


def from_config(data: Mapping[str, Any] | None) -> Retention:
    """The `retention:` mapping of routes.yaml, already checked by the JSON Schema."""
    if not data:
        return Retention()
    channels = {
        name: ChannelRetention(_keep(c), _statuses(c.get("statuses")))
        for name, c in (data.get("channels") or {}).items()
    }
    return Retention(
        keep=_keep(data.get("keep")), statuses=_statuses(data.get("statuses")),
        channels=channels, dedup_window_days=data.get("dedup_window_days"),
        every_minutes=float(data.get("every_minutes", 0) or 0),
    )


def payloads_only() -> Retention:
    """The operator's one-off (`parcours prune --settled-before DATE`): the payloads of every
    settled message, whatever the policy. A policy of zero days run with DATE as "now", so
    the same guarded queries decide."""
    return replace(Retention(), keep=Keep(payload_days=0.0))
