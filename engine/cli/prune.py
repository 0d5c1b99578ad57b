"""`parcours prune`: apply routes.yaml's `retention:` now, or drop old payloads once."""

from __future__ import annotations

import argparse
import sys

from engine.settings import Settings


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "prune", help="apply the retention policy now; print what was removed",
        description="Apply routes.yaml's retention policy now and print what it removed and "
                    "the bytes freed. Undelivered deliveries, rows the dedup window needs, "
                    "timeline and audit rows are never removed (docs/operations.md).")
    p.add_argument("--dry-run", action="store_true",
                   help="count what would be removed; change nothing")
    p.add_argument("--settled-before", metavar="DATE",
                   help="whatever the policy: drop the raw bytes and delivery payloads of "
                        "every message whose deliveries all settled before DATE (ISO date "
                        "or timestamp, UTC); the metadata stays searchable")
    p.add_argument("--vacuum", action="store_true",
                   help="SQLite: rewrite the file once (VACUUM) so that later prunes shrink "
                        "it; stop the engine first")
    p.add_argument("--routes", help="routes file [PARCOURS_ROUTES, ./routes.yaml]")
    p.add_argument("--store-url", help="SQLAlchemy URL of the store [PARCOURS_STORE_URL]")
    p.add_argument("--home", help="data folder [PARCOURS_HOME, ./var]")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from engine.config import ConfigError, load_file
    from engine.store.database import Store
    from engine.store.prune import Pruner, parse_date, sqlite_full_vacuum
    from engine.store.retention import from_config, payloads_only

    now = None
    if args.settled_before:
        try:
            now = parse_date(args.settled_before)
        except ValueError:
            print(f"parcours prune: --settled-before {args.settled_before!r} is not an ISO "
                  "date (e.g. 2025-01-31 or 2025-01-31T12:00:00Z)", file=sys.stderr)
            return 2
        policy = payloads_only()
    else:
        routes = settings.routes_file if args.routes is None else args.routes
        try:
            config = load_file(routes, env=settings.interpolation_env())
        except ConfigError as exc:
            print(f"parcours prune: {routes} is not valid:\n{exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"parcours prune: cannot read {routes}: {exc.strerror}", file=sys.stderr)
            return 2
        policy = from_config(config.retention)
        if not policy.enabled and not args.vacuum:
            print(f"{routes}: no retention rule is set; nothing is removed (add `retention:`, "
                  "or use --settled-before DATE)")
            return 0
    store = Store(settings.store_url)
    try:
        store.migrate()
        pruner = Pruner(store, policy)
        if args.vacuum:
            if store.dialect != "sqlite":
                print("parcours prune: --vacuum is for SQLite; PostgreSQL reuses freed space "
                      "after VACUUM (run by every prune)", file=sys.stderr)
                return 2
            before = pruner.store_bytes() or 0
            sqlite_full_vacuum(store)
            after = pruner.store_bytes() or 0
            print(f"store: rewritten with auto_vacuum=INCREMENTAL: {before} -> {after} bytes")
            if not policy.enabled:
                return 0
        report = pruner.run(dry_run=args.dry_run, now=now)
    finally:
        store.close()
    if args.dry_run:
        print("dry run: nothing was changed")
    for line in report.lines():
        print(line)
    return 0
