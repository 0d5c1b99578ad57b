"""Operator commands on routes and deliveries: routes test, replay, deliveries, retry.

They work on the store directly, so they need no running engine; a running engine picks
their effect up at its next sweep (PARCOURS_SWEEP_INTERVAL, 2 s by default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli.errors import CommandError
from engine.settings import Settings


def _load(settings: Settings, routes: str | None) -> Any:
    from engine.config import ConfigError, load_file

    path = Path(routes or settings.routes_file)
    try:
        return load_file(path, env=settings.interpolation_env())
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        raise SystemExit(1) from None


def cmd_routes_test(args: argparse.Namespace, settings: Settings) -> int:
    """Which routes match a sample message, each transformer's output, each payload.

    No side effects: nothing is stored, nothing is sent.
    """
    from engine.routing.router import Router, exchange_from_bytes
    from engine.routing.transformers import Registry

    config = _load(settings, args.routes)
    registry = Registry(config.transformer_paths, base=Path(config.file).resolve().parent)

    class _NoStore:
        dialect = "none"

    router = Router(_NoStore(), config, registry.resolve, settings.partitions)  # type: ignore[arg-type]
    from transformers.hl7.batch import split_messages

    try:
        data = Path(args.message_file).read_bytes()
    except OSError as exc:
        raise CommandError(f"{args.message_file}: cannot read the sample message: "
                           f"{exc.strerror or exc}", code=2) from None
    samples = [data] if data.lstrip().startswith(b"<") else split_messages(data).messages
    if not samples:
        raise CommandError(f"{args.message_file}: no HL7 message (no MSH segment) and not XML",
                           code=2)
    any_match = False
    for i, raw in enumerate(samples, start=1):
        ex = exchange_from_bytes(raw, channel=args.channel)
        h = ex.headers
        print(f"message {i}: {h['message_code'] or '?'} control id {h['control_id'] or '?'} "
              f"from {h['sending_application']}/{h['sending_facility']} on channel {args.channel}")
        for res in router.evaluate(ex, run_disabled=True):
            if not res.matched:
                print(f"  route {res.route}: no — {res.reason}")
                continue
            any_match = True
            print(f"  route {res.route}: MATCH")
            for name, preview in res.steps:
                print(f"    transformer {name}: {preview}")
            if res.error:
                print(f"    ERROR {res.error} (its deliveries would be dead-lettered)")
                continue
            if res.filtered_by:
                print(f"    filtered out by {res.filtered_by}: nothing delivered")
                continue
            for p in res.payloads:
                print(f"    → destination {p.destination} ({p.content_type}, "
                      f"{len(p.payload)} bytes):")
                body = p.payload.decode("utf-8", "replace")
                shown = body if args.full else body[:2000]
                for line in shown.replace("\r", "\n").splitlines():
                    print(f"      {line}")
                if len(body) > len(shown):
                    print(f"      … {len(body) - len(shown)} more characters (--full)")
    if not any_match:
        print("no route matches: the message would be stored as 'unrouted'")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from engine.routing.router import PrunedMessage, Router
    from engine.routing.transformers import Registry
    from engine.store.database import Store

    config = _load(settings, args.routes)
    store = Store(settings.store_url)
    store.migrate()
    registry = Registry(config.transformer_paths, base=Path(config.file).resolve().parent)
    router = Router(store, config, registry.resolve, settings.partitions)
    code = 0
    for mid in args.message_ids:
        try:
            n, _ = router.replay(mid)
        except PrunedMessage as exc:
            print(exc, file=sys.stderr)
            code = 1
            continue
        except KeyError:
            print(f"message {mid}: not found", file=sys.stderr)
            code = 1
            continue
        print(f"message {mid}: {n} new deliver{'y' if n == 1 else 'ies'}")
    store.close()
    return code


def cmd_deliveries(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from engine.store.database import Store
    from engine.store.models import DeliveryStatus, deliveries

    statuses = {
        "failed": (DeliveryStatus.DEAD, DeliveryStatus.RETRY),
        "dead": (DeliveryStatus.DEAD,),
        "retry": (DeliveryStatus.RETRY,),
        "pending": (DeliveryStatus.PENDING,),
        "delivered": (DeliveryStatus.DELIVERED,),
    }[args.status]
    store = Store(settings.store_url)
    store.migrate()
    q = (select(deliveries.c.id, deliveries.c.message_id, deliveries.c.route,
                deliveries.c.destination, deliveries.c.status, deliveries.c.attempts,
                deliveries.c.updated_at, deliveries.c.last_error, deliveries.c.error_code)
         .where(deliveries.c.status.in_(statuses)).order_by(deliveries.c.id).limit(args.limit))
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    store.close()
    if not rows:
        print(f"no {args.status} deliveries")
        return 0
    import shutil
    import textwrap

    # The whole error, wrapped under its delivery: the end of a message ("… refused: MSA-3
    # says why") is often the part that explains it (issue #16).
    # On a terminal the error is wrapped to its width; into a pipe it stays one line, whole,
    # for grep.
    width = max(60, shutil.get_terminal_size((100, 24)).columns) if sys.stdout.isatty() else 0
    indent = " " * 10
    print(f"{'id':>8} {'message':>8} {'status':<9} {'tries':>5}  destination / route")
    print(f"{indent}[code] error")
    for r in rows:
        print(f"{r.id:>8} {r.message_id:>8} {r.status:<9} {r.attempts:>5}  "
              f"{r.destination} / {r.route}")
        code = f"[{r.error_code}] " if r.error_code else ""
        err = " ".join(f"{code}{r.last_error or ''}".split())
        if not err:
            continue
        if not width:
            print(indent + err)
            continue
        for line in textwrap.wrap(err, width=width, initial_indent=indent,
                                  subsequent_indent=indent, break_on_hyphens=False):
            print(line)
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from engine.delivery.runner import DeliveryRunner
    from engine.store.database import Store
    from engine.store.models import deliveries

    store = Store(settings.store_url)
    store.migrate()
    with store.engine.connect() as conn:
        found = {r for r in conn.execute(select(deliveries.c.id).where(
            deliveries.c.id.in_(args.delivery_ids))).scalars()}
    missing = [d for d in args.delivery_ids if d not in found]
    refused: dict[int, str] = {}
    DeliveryRunner(store).retry(sorted(found), refused)
    store.close()
    for d in sorted(found):
        if d in refused:
            print(f"delivery {d}: not retried — {refused[d]}", file=sys.stderr)
        else:
            print(f"delivery {d}: queued for a new attempt")
    for d in missing:
        print(f"delivery {d}: not found", file=sys.stderr)
    return 1 if missing or refused else 0


def add_parsers(sub: argparse._SubParsersAction, routes_sub: argparse._SubParsersAction  # type: ignore[type-arg]
                ) -> None:
    t = routes_sub.add_parser("test", help="dry-run a sample message through the routes",
                              description="Show which routes match MESSAGE_FILE, what each "
                                          "transformer produced and what each destination "
                                          "would receive. Stores nothing, sends nothing.")
    t.add_argument("message_file")
    t.add_argument("--routes", help="routes file [PARCOURS_ROUTES, ./routes.yaml]")
    t.add_argument("--channel", default="main", help="channel the message is taken to come from")
    t.add_argument("--full", action="store_true", help="print whole payloads")

    r = sub.add_parser("replay", help="route stored messages again through the current routes")
    r.add_argument("message_ids", nargs="+", type=int, metavar="MESSAGE_ID")
    r.add_argument("--routes")

    d = sub.add_parser("deliveries", help="list deliveries by status")
    d.add_argument("--status", default="failed",
                   choices=["failed", "dead", "retry", "pending", "delivered"],
                   help="failed = dead-lettered or waiting to be retried")
    d.add_argument("--limit", type=int, default=100)

    y = sub.add_parser("retry", help="put dead-lettered deliveries back in line",
                       description="Put dead-lettered or waiting deliveries back in line "
                                   "now. Exits 1 if any DELIVERY_ID is not found or cannot be "
                                   "helped by a retry (delivered, pending, or its route's "
                                   "transformer failed: use `parcours replay`).")
    y.add_argument("delivery_ids", nargs="+", type=int, metavar="DELIVERY_ID")
