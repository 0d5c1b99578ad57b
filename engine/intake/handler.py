"""Intake: read MSH, decide the acknowledgement, commit, then answer.

HL7 v2.5.1 §2.9 is the rulebook. The order of work is the invariant "an ACK means durable":
the ACK is built before the commit (so the store keeps exactly what was sent, for resends)
but released only after the group commit resolved.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from engine.intake.group_commit import GroupCommitter
from engine.intake.stored_bytes import SenderVolume, keep_head
from engine.store.database import Arrival, ReusePolicy, Saved, dedup_key
from engine.store.models import MessageStatus
from transformers.hl7.ack import AckError, build_ack_bytes
from transformers.hl7.charset import UnsupportedCharset
from transformers.hl7.header import (
    Header,
    HeaderError,
    patient_key,
    read_header,
    resolve_charset,
)
from transformers.hl7.reader import normalise_separators
from transformers.hl7.triggers import trigger_problem

log = logging.getLogger("parcours.intake")


@dataclass(frozen=True)
class IntakePolicy:
    """What a channel accepts. Defaults accept any HL7 v2 message a hospital would send."""

    channel: str
    charset: str | None = None  # force a character set (a feed known to lie in MSH-18)
    default_charset: str = "UNICODE UTF-8"  # when MSH-18 is empty
    processing_ids: tuple[str, ...] = ("P", "D", "T")  # HL7 table 0103
    versions: tuple[str, ...] = ()  # e.g. ("2.5", "2.5.1"); empty = any 2.x
    message_types: tuple[str, ...] = ()  # e.g. ("ADT^*", "ORU^R01"); empty = any
    require_segments: tuple[str, ...] = ()  # e.g. ("PID",): missing → AE 100
    application: str = "PARCOURS"
    facility: str = ""
    # New content under a seen control id: "process" (a new message, flagged) or "refuse"
    # (AR/CR with ERR 205). An identical resend always gets the original ACK back.
    on_reused_control_id: str = ReusePolicy.PROCESS
    # Issue #17: bytes kept of a message that is not accepted (engine/intake/stored_bytes.py), and
    # the per-sender daily volume that logs one warning (None: no alarm).
    max_stored_bytes: int = 1024 * 1024
    daily_volume_alarm_bytes: int | None = None


@dataclass
class IntakeStats:
    """Counters per channel, read by metrics and the dashboard."""

    received: int = 0
    bytes: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # identical resends: answered with the original ACK, not processed
    reuses: int = 0  # new content under a seen control id, processed as a new message
    reuses_refused: int = 0  # the same, refused (on_reused_control_id: refuse)
    parse_errors: int = 0
    store_errors: int = 0
    ack_latency: list[float] = field(default_factory=list)  # recent samples, bounded

    def count_ack(self, code: str | None, latency: float) -> None:
        if code:
            self.acks[code] = self.acks.get(code, 0) + 1
        self.ack_latency.append(latency)
        if len(self.ack_latency) > 2048:
            del self.ack_latency[:1024]


_ids = itertools.count(1)


def new_control_id() -> str:
    """MSH-10 for our ACKs: unique per process and ≤ 20 characters (v2.5.1 length)."""
    return f"P{int(time.time() * 1000):011x}{next(_ids) & 0xFFFFFF:06x}"


@dataclass
class Decision:
    arrival: Arrival
    header: Header
    codec: str
    send_ack: bool
    enhanced: bool


def _accepted(value: str, allowed: tuple[str, ...]) -> bool:
    return not allowed or value in allowed


def _type_accepted(header: Header, allowed: tuple[str, ...]) -> tuple[bool, int]:
    if not allowed:
        return True, 0
    type_known = False
    for pattern in allowed:
        mtype, _, trigger = pattern.partition("^")
        if mtype in ("*", header.message_type):
            type_known = True
            if trigger in ("", "*", header.trigger_event):
                return True, 0
    return False, (201 if type_known else 200)


def _should_send(enhanced: bool, accept_ack_type: str, code: str) -> bool:
    """HL7 v2.5.1 §2.9.3 / table 0155: AL always, NE never, ER only errors, SU only success."""
    if not enhanced:
        return True
    mode = accept_ack_type or "AL"  # MSH-16 alone valued: a commit ACK is still expected
    if mode == "NE":
        return False
    if mode == "ER":
        return code != "CA"
    if mode == "SU":
        return code == "CA"
    return True


class Intake:
    def __init__(self, committer: GroupCommitter) -> None:
        self.committer = committer
        self._volumes: dict[str, SenderVolume] = {}
        self.stats: dict[str, IntakeStats] = {}
        self.on_ack: Callable[[str, str | None, float], None] | None = None  # channel, code, s
        # Content checks by MSH-9.1 (issue #14: a REF must carry what its workflow needs):
        # (decoded text, header) → ERR segments; any makes the ACK AE/CE.
        self.content_checks: dict[str, Callable[[str, Header], list[AckError]]] = {}

    def stats_for(self, channel: str) -> IntakeStats:
        s = self.stats.get(channel)
        if s is None:
            s = self.stats[channel] = IntakeStats()
        return s

    # -- the decision (synchronous, no I/O) ----------------------------------------------

    def decide(self, raw: bytes, policy: IntakePolicy, remote: str | None = None) -> Decision:
        stats = self.stats_for(policy.channel)
        stats.received += 1
        stats.bytes += len(raw)
        try:
            header = read_header(raw)
        except HeaderError as exc:
            stats.parse_errors += 1
            return self._refuse(
                raw, policy, remote, exc.partial, "latin-1", "AR", AckError.at(
                    exc.hl7_code, f"MSH could not be read: {exc}", exc.location
                ), status=MessageStatus.REJECTED,
            )
        enhanced = header.enhanced_mode
        reject, error = ("CR", "CE") if enhanced else ("AR", "AE")
        try:
            codec = resolve_charset(header, policy.charset, policy.default_charset)
        except UnsupportedCharset as exc:
            return self._refuse(
                raw, policy, remote, header, "latin-1", reject,
                AckError.at(102, str(exc), "MSH-18"), status=MessageStatus.REJECTED,
            )
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError as exc:
            stats.parse_errors += 1
            seg = _segment_at(raw, exc.start)
            return self._refuse(
                raw, policy, remote, header, codec, reject,
                AckError.at(
                    102,
                    f"bytes at offset {exc.start} ({seg} segment) are not valid {codec}; "
                    "set MSH-18 or the channel charset",
                    seg,
                ),
                status=MessageStatus.REJECTED,
            )
        if header.message_type == "ACK":
            # HL7 v2.5.1 §2.9: acknowledgements are never acknowledged; keep it, answer nothing.
            arrival = self._arrival(raw, policy, remote, header, codec, text)
            arrival.status = MessageStatus.REJECTED
            arrival.error = "unsolicited acknowledgement received on an inbound channel"
            keep_head(arrival, policy.max_stored_bytes)
            return Decision(arrival, header, codec, False, enhanced)

        problems: list[tuple[str, AckError]] = []
        if not _accepted(header.processing_id, policy.processing_ids):
            problems.append((reject, AckError.at(
                202, f"processing id {header.processing_id!r} is not accepted by this channel",
                "MSH-11")))
        if policy.versions and not any(
            header.version == v or header.version.startswith(v + ".") for v in policy.versions
        ):
            problems.append((reject, AckError.at(
                203, f"version {header.version!r} is not accepted by this channel", "MSH-12")))
        elif not header.version.startswith("2."):
            problems.append((reject, AckError.at(
                203, f"version {header.version!r} is not an HL7 v2 version", "MSH-12")))
        if not header.message_type:
            problems.append((error, AckError.at(101, "MSH-9 message type is missing", "MSH-9")))
        else:
            ok, code = _type_accepted(header, policy.message_types)
            if not ok:
                problems.append((reject, AckError.at(
                    code, f"message type {header.message_code} is not accepted by this channel",
                    "MSH-9")))
            trigger_error = trigger_problem(header.message_type, header.trigger_event)
            if trigger_error:
                # An error in the message, not a refusal of a valid one: AE/CE (the sender
                # must correct it; resending it unchanged cannot help), ERR 201 "unsupported
                # event code" (HL7 table 0357) at MSH-9.2. Acknowledging it AA would promise
                # processing that no event transformer can do.
                problems.append((error, AckError.at(201, trigger_error, "MSH-9.2")))
        if not header.control_id:
            problems.append(
                (error, AckError.at(101, "MSH-10 message control id is missing", "MSH-10"))
            )
        if policy.require_segments:
            present = {s[:3] for s in normalise_separators(text).split("\r")}
            for name in policy.require_segments:
                if name not in present:
                    problems.append((error, AckError.at(
                        100, f"required segment {name} is missing", name)))

        check = self.content_checks.get(header.message_type)
        if check is not None and not problems:
            problems += [(error, e) for e in check(text, header)]

        arrival = self._arrival(raw, policy, remote, header, codec, text)
        if problems:
            # A refusal outranks an error: AR/CR if anything is refused, else AE/CE.
            code = reject if any(c == reject for c, _ in problems) else error
            errors = [e for _, e in problems]
            arrival.status = (
                MessageStatus.REJECTED if code == reject else MessageStatus.ERROR
            )
            arrival.error = "; ".join(e.text for e in errors)
        else:
            code = "CA" if enhanced else "AA"
            errors = []
            arrival.status = MessageStatus.ACCEPTED
            if header.control_id:
                arrival.dedup = dedup_key(
                    policy.channel,
                    header.sending_application,
                    header.sending_facility,
                    header.control_id,
                )
                arrival.on_reuse = policy.on_reused_control_id
                if policy.on_reused_control_id == ReusePolicy.REFUSE:
                    arrival.refusal = partial(self._reuse_refusal, header, codec, policy)
        send = _should_send(enhanced, header.accept_ack_type, code)
        ack = build_ack_bytes(
            header, code, charset=codec, control_id=new_control_id(), errors=errors,
            application=policy.application, facility=policy.facility,
        )
        arrival.ack_code = code
        arrival.ack = ack if send else None
        if arrival.status != MessageStatus.ACCEPTED:
            keep_head(arrival, policy.max_stored_bytes)
        return Decision(arrival, header, codec, send, enhanced)

    @staticmethod
    def _reuse_refusal(
        header: Header, codec: str, policy: IntakePolicy, first_id: int
    ) -> tuple[str | None, bytes | None, str]:
        """The answer to new content under a seen MSH-10 on a channel that refuses it, built
        by the store only when it meets one: AR (original mode) or CR (enhanced), with
        ERR-3 205 "duplicate key identifier" (HL7 table 0357) and the reason in ERR-8."""
        code = "CR" if header.enhanced_mode else "AR"
        text = (f"MSH-10 {header.control_id} was already used by this sender for a message "
                f"with different content (message {first_id}); refused: send new content "
                "under a new control id")
        send = _should_send(header.enhanced_mode, header.accept_ack_type, code)
        ack = build_ack_bytes(
            header, code, charset=codec, control_id=new_control_id(),
            errors=[AckError.at(205, text, "MSH-10")], application=policy.application,
            facility=policy.facility,
        )
        return code, ack if send else None, text

    def _arrival(
        self, raw: bytes, policy: IntakePolicy, remote: str | None, header: Header,
        codec: str, text: str | None,
    ) -> Arrival:
        pkey = None
        if text is not None:
            try:
                pkey = patient_key(text, header.encoding, codec)
            except Exception:  # a broken PID must not stop the message from being stored
                pkey = None
        return Arrival(
            channel=policy.channel,
            raw=raw,
            status=MessageStatus.ACCEPTED,
            received_at=datetime.now(UTC),
            remote=remote,
            sending_application=header.sending_application[:255] or None,
            sending_facility=header.sending_facility[:255] or None,
            message_type=header.message_type[:16] or None,
            trigger_event=header.trigger_event[:16] or None,
            structure=header.structure[:16] or None,
            control_id=header.control_id[:199] or None,
            version=header.version[:32] or None,
            processing_id=header.processing_id[:8] or None,
            charset=codec,
            patient_key=pkey[:255] if pkey else None,
            application_ack_type=header.application_ack_type[:2] or None,
        )

    def _refuse(
        self, raw: bytes, policy: IntakePolicy, remote: str | None, header: Header, codec: str,
        code: str, error: AckError, *, status: str,
    ) -> Decision:
        arrival = self._arrival(raw, policy, remote, header, codec, None)
        arrival.status = status
        arrival.error = error.text
        send = _should_send(header.enhanced_mode, header.accept_ack_type, code)
        ack = build_ack_bytes(
            header, code, charset="latin-1" if codec == "latin-1" else codec,
            control_id=new_control_id(), errors=[error], application=policy.application,
            facility=policy.facility,
        )
        arrival.ack_code = code
        arrival.ack = ack if send else None
        keep_head(arrival, policy.max_stored_bytes)
        return Decision(arrival, header, codec, send, header.enhanced_mode)

    # -- the pipeline ---------------------------------------------------------------------

    def receive(
        self, raw: bytes, policy: IntakePolicy, remote: str | None = None
    ) -> asyncio.Future[bytes | None]:
        """Decide and submit now (keeps arrival order); the future resolves to the reply
        once the group commit settled this arrival."""
        started = time.perf_counter()
        decision = self.decide(raw, policy, remote)
        if policy.daily_volume_alarm_bytes is not None:
            self.volume_of(policy).add(sender_of(decision.arrival), len(raw))
        return self.committer.submit(
            decision.arrival, partial(self._answer, decision, policy, started)
        )

    def volume_of(self, policy: IntakePolicy) -> SenderVolume:
        """The channel's daily volume per sender (only for channels with an alarm)."""
        volumes = self._volumes
        vol = volumes.get(policy.channel)
        if vol is None or vol.alarm_bytes != policy.daily_volume_alarm_bytes:
            assert policy.daily_volume_alarm_bytes is not None
            vol = volumes[policy.channel] = SenderVolume(policy.channel,
                                                         policy.daily_volume_alarm_bytes)
        return vol

    def volume_alarms(self, channel: str) -> int:
        vol = self._volumes.get(channel)
        return vol.alarms if vol is not None else 0

    def receive_oversized(
        self, head: bytes, size: int, limit: int, policy: IntakePolicy, remote: str | None,
        reason: str = "oversized",
    ) -> asyncio.Future[bytes | None]:
        """A frame too large to keep, or cut short: store its head, answer AR from its MSH."""
        started = time.perf_counter()
        try:
            header = read_header(head)
        except HeaderError:
            header = Header()
        what = {
            "oversized": f"frame of {size} bytes exceeds the channel limit of {limit} bytes",
            "idle_timeout": f"frame cut short after {size} bytes (the connection fell silent)",
            "frame_timeout": f"frame not complete within the channel's frame_timeout "
                             f"({size} bytes received); the connection is closed",
            "over_budget": f"frame of {size} bytes refused: the engine's budget for "
                           "unfinished frames is spent (resend later)",
        }.get(reason, f"frame cut short after {size} bytes (a new start block or the end of "
                      "the stream arrived before its end)")
        decision = self._refuse(
            head, policy, remote, header, "latin-1",
            "CR" if header.enhanced_mode else "AR", AckError.at(207, what, "MSH"),
            status=MessageStatus.REJECTED,
        )
        decision.arrival.size = size
        decision.arrival.truncated = True
        return self.committer.submit(
            decision.arrival, partial(self._answer, decision, policy, started)
        )

    def _answer(
        self, decision: Decision, policy: IntakePolicy, started: float,
        saved: Saved | Exception,
    ) -> bytes | None:
        """On the event loop, once the arrival's transaction ended: the reply to send."""
        stats = self.stats_for(policy.channel)
        if isinstance(saved, Exception):
            stats.store_errors += 1
            # Not stored, so not acknowledged: AR/CE tells the sender to try again later
            # (HL7 v2.5.1 §2.9.2: reject for reasons unrelated to content).
            code = "CE" if decision.enhanced else "AR"
            ack = build_ack_bytes(
                decision.header, code, charset=decision.codec, control_id=new_control_id(),
                errors=[AckError.at(207, "message could not be stored; resend later", "MSH")],
                application=policy.application, facility=policy.facility,
            )
            self._count(policy.channel, code, started)
            return ack
        if saved.refused:
            stats.reuses_refused += 1
            log.warning(
                "control id reused with different content; refused",
                extra={"message_id": saved.id, "reuse_of": saved.reuse_of,
                       "channel": policy.channel},
            )
            self._count(policy.channel, saved.refusal_code if saved.refusal_ack else None,
                        started)
            return saved.refusal_ack
        if saved.reuse_of is not None:
            stats.reuses += 1
            log.warning(
                "control id reused with different content; processed as a new message",
                extra={"message_id": saved.id, "reuse_of": saved.reuse_of,
                       "channel": policy.channel},
            )
        if saved.duplicate_of is not None:
            stats.duplicates += 1
            log.info(
                "duplicate message",
                extra={"message_id": saved.id, "duplicate_of": saved.duplicate_of,
                       "channel": policy.channel},
            )
            self._count(policy.channel, saved.original_ack_code, started)
            return saved.original_ack
        self._count(
            policy.channel, decision.arrival.ack_code if decision.send_ack else None, started
        )
        return decision.arrival.ack if decision.send_ack else None

    def _count(self, channel: str, code: str | None, started: float) -> None:
        latency = time.perf_counter() - started
        self.stats_for(channel).count_ack(code, latency)
        if self.on_ack:
            self.on_ack(channel, code, latency)


def _segment_at(raw: bytes, offset: int) -> str:
    start = max(raw.rfind(b"\r", 0, offset), raw.rfind(b"\n", 0, offset)) + 1
    name = raw[start : start + 3].decode("latin-1", "replace")
    return name if name.isalnum() else "MSH"


def sender_of(arrival: Arrival) -> str:
    """MSH-3^MSH-4 as the daily volume alarm counts senders (the peer when unreadable)."""
    app, fac = arrival.sending_application or "", arrival.sending_facility or ""
    return f"{app}^{fac}" if app or fac else f"peer {arrival.remote or '?'}"
