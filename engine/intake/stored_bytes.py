"""How much of a message the store keeps, and how much one sender sends a day.

A refused message is kept so the operator can see what arrived and why it was refused —
its head is enough for that, and storing all of it lets one sender fill the disk (issue
#17: a refused 50 MB file was stored whole; 100,000 fuzzed frames made a 5.2 GB database).
Accepted messages are always stored whole: they are routed from the store.

The daily volume alarm is a tripwire, not a limit: when one sender (MSH-3/MSH-4, or the
folder for files) passes the channel's `daily_volume_alarm_bytes` in a UTC day, one warning
is logged (ids and counts only) and the channel's alarm counter goes up; nothing is refused.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

from engine.store.database import Arrival

log = logging.getLogger("parcours.intake")

DEFAULT_MAX_STORED_BYTES = 1024 * 1024


def keep_head(arrival: Arrival, limit: int) -> None:
    """Store only the first `limit` bytes of a message that is not accepted; its full size
    stays in `size` and `truncated` says the rest was dropped (the message page shows it)."""
    if arrival.status == "accepted" or len(arrival.raw) <= limit:
        return
    if arrival.size is None:
        arrival.size = len(arrival.raw)
    arrival.raw = arrival.raw[:limit]
    arrival.truncated = True
    arrival.digest = None  # the digest is of what is stored


class SenderVolume:
    """Bytes per sender for the current UTC day, on one channel."""

    def __init__(self, channel: str, alarm_bytes: int) -> None:
        self.channel = channel
        self.alarm_bytes = alarm_bytes
        self.alarms = 0
        self._day: date | None = None
        self._bytes: dict[str, int] = {}
        self._warned: set[str] = set()

    def add(self, sender: str, size: int, now: datetime | None = None) -> bool:
        """Count `size` bytes from `sender`; True the one time a day it crosses the alarm."""
        today = (now or datetime.now(UTC)).date()
        if today != self._day:
            self._day, self._bytes, self._warned = today, {}, set()
        total = self._bytes.get(sender, 0) + size
        self._bytes[sender] = total
        if total <= self.alarm_bytes or sender in self._warned:
            return False
        self._warned.add(sender)
        self.alarms += 1
        log.warning("sender over its daily volume alarm", extra={
            "channel": self.channel, "sender": sender, "bytes_today": total,
            "alarm_bytes": self.alarm_bytes})
        return True
