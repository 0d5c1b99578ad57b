"""`parcours import PATH...`: load history from files and folders, resumably."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.settings import Settings


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "import", help="load HL7 v2 / CDA history from files and folders (resumable)",
        description="Import files (one message, several, FHS/BHS batches; CDA *.xml) and "
                    "folders (searched recursively for *.hl7, *.er7, *.txt, *.xml) through "
                    "intake's rules. Each file is recorded with its messages in one "
                    "transaction: run the same command again after Ctrl-C or a crash and "
                    "the files already imported are skipped. The running engine routes "
                    "the imported messages (docs/operations.md).")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--channel", default="import",
                   help="channel the messages are stored under; a channel of routes.yaml "
                        "lends its charset, accept and reuse settings [import]")
    p.add_argument("--routes-as", choices=("history", "live"), default="history",
                   help="history: only routes with `history: true` take the messages "
                        "(e.g. the timeline, not the DMP nor MLLP forwarding); live: every "
                        "route, as for new arrivals [history]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--routes", help="routes file [PARCOURS_ROUTES, ./routes.yaml]")
    p.add_argument("--store-url", help="SQLAlchemy URL of the store [PARCOURS_STORE_URL]")
    p.add_argument("--home", help="data folder [PARCOURS_HOME, ./var]")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from engine.config import Config, ConfigError, load_file
    from engine.intake.history_import import (
        HistoryImport,
        ImportReport,
        files_under,
        policy_for_import,
    )
    from engine.store.database import Store

    try:
        paths = files_under([Path(p) for p in args.paths])
    except FileNotFoundError as exc:
        print(f"parcours import: {exc}: no such file or folder", file=sys.stderr)
        return 2
    if not paths:
        print("parcours import: no file to import (folders are searched for *.hl7, *.er7, "
              "*.txt, *.xml)", file=sys.stderr)
        return 2
    routes = Path(args.routes) if args.routes else settings.routes_file
    config: Config | None = None
    if routes.exists():
        try:
            config = load_file(routes, env=settings.interpolation_env())
        except ConfigError as exc:
            print(f"parcours import: {routes} is not valid:\n{exc}", file=sys.stderr)
            return 2
    history = args.routes_as == "history"
    if history and config is not None and not any(r.history for r in config.routes):
        print(f"note: no route of {routes} has `history: true`: the imported messages will "
              "be stored and searchable, and routed nowhere", file=sys.stderr)
    store = Store(settings.store_url)
    report = ImportReport()
    total = sum(p.stat().st_size for p in paths)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=args.quiet,
               desc="import", file=sys.stderr, dynamic_ncols=True)

    def step(_path: Path, size: int, _n: int) -> None:
        bar.update(size)
        bar.set_postfix(files=report.files + report.skipped, messages=report.messages,
                        refresh=False)

    # The per-message warnings (reused ids) would break the bar; the summary counts them.
    logging.getLogger("parcours").setLevel(logging.ERROR)
    try:
        store.migrate()
        importer = HistoryImport(store, policy_for_import(config, args.channel),
                                 history=history)
        importer.run(paths, report, on_file=step)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: {report.files} file(s) imported in this run, "
              f"{report.skipped} skipped; run the same command again to resume",
              file=sys.stderr)
        return 130
    finally:
        bar.close()
        store.close()
    stats = importer.files.intake.stats_for(args.channel)
    print(f"imported {report.files} file(s), {report.messages} message(s) on channel "
          f"{args.channel!r} as {args.routes_as}; {report.skipped} file(s) already imported "
          f"were skipped; {stats.duplicates} identical resend(s), {stats.reuses} reused "
          "control id(s)")
    for name, reason in report.failed:
        print(f"  {name}: {reason}")
    return 1 if report.failed else 0
