"""`parcours messages`: list stored messages (with the reused-control-id flag), and turn
the reuses older versions kept as duplicates into processed messages."""

from __future__ import annotations

import argparse
from typing import Any

from engine.settings import Settings


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("messages", help="list stored messages; reprocess reused control ids")
    msub = p.add_subparsers(dest="messages_command", required=True)
    ls = msub.add_parser("list", help="stored messages, oldest first (no payloads)")
    ls.add_argument("--channel")
    ls.add_argument("--status", help="accepted, routed, done, failed, duplicate, rejected…")
    ls.add_argument("--reused", action="store_true",
                    help="only messages that reused a control id with different content")
    ls.add_argument("--limit", type=int, default=100)
    rp = msub.add_parser(
        "reprocess-reuses",
        help="turn the reuses stored as 'duplicate' by older versions into new messages",
        description="Messages whose MSH-10 (or CDA id) had been seen with different content "
                    "were stored by versions before issue #15 as 'duplicate' and never "
                    "processed. Each becomes an accepted message flagged as a reused id, "
                    "which the router then routes; identical resends are left alone. "
                    "Running it again does nothing.")
    for sp in (ls, rp):
        sp.add_argument("--store-url", help="SQLAlchemy URL of the store [PARCOURS_STORE_URL]")
        sp.add_argument("--home", help="data folder [PARCOURS_HOME, ./var]")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from engine.store.database import Store

    store = Store(settings.store_url)
    try:
        store.migrate()
        if args.messages_command == "list":
            return _list(store, args)
        return _reprocess(store)
    finally:
        store.close()


def _list(store: Any, args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from engine.store.models import messages

    cols = [messages.c[n] for n in ("id", "channel", "message_type", "trigger_event",
                                    "control_id", "status", "ack_code", "duplicate_of",
                                    "reuse_of")]
    q = select(*cols).order_by(messages.c.id).limit(args.limit)
    if args.channel:
        q = q.where(messages.c.channel == args.channel)
    if args.status:
        q = q.where(messages.c.status == args.status)
    if args.reused:
        q = q.where(messages.c.reuse_of.is_not(None))
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    print(f"{'id':>8}  {'channel':<12} {'type':<9} {'control id':<22} {'status':<10} ack  flag")
    for r in rows:
        mtype = f"{r.message_type or '?'}^{r.trigger_event or ''}".rstrip("^")
        flag = (f"reused id of {r.reuse_of}" if r.reuse_of is not None
                else f"resend of {r.duplicate_of}" if r.duplicate_of is not None else "")
        print(f"{r.id:>8}  {r.channel:<12} {mtype:<9} {(r.control_id or ''):<22} "
              f"{r.status:<10} {(r.ack_code or '—'):<4} {flag}".rstrip())
    print(f"{len(rows)} message(s)")
    return 0


def _reprocess(store: Any) -> int:
    from engine.intake.reuse import reprocess_reuses

    done = reprocess_reuses(store)
    for o in done:
        if o.action == "reprocessed":
            print(f"message {o.message_id} ({o.channel}, control id {o.control_id}): reused "
                  f"the id of message {o.first_id} with different content; now accepted, "
                  "the router will route it")
        else:
            print(f"message {o.message_id} ({o.channel}, control id {o.control_id}): a resend "
                  f"of message {o.resend_of}; stays a duplicate of it")
    n = sum(1 for o in done if o.action == "reprocessed")
    print(f"{n} reuse(s) reprocessed, {len(done) - n} resend(s) of them re-pointed"
          if done else "nothing to reprocess: no stored duplicate differs from its original")
    return 0
