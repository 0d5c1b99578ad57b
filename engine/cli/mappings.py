"""`parcours mappings backlog | suggest | accept`: working the LOINC mapping backlog."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from engine.cli.errors import CommandError
from engine.settings import Settings


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    m = sub.add_parser("mappings", help="work the LOINC mapping backlog")
    msub = m.add_subparsers(dest="mappings_command", required=True)
    b = msub.add_parser("backlog", help="unmapped local codes, most frequent first")
    b.add_argument("--sender", help="only this sender (MSH-4)")
    s = msub.add_parser("suggest", help="ranked LOINC candidates for backlog codes")
    s.add_argument("code", nargs="?", help="a local code (default: every open backlog code)")
    s.add_argument("--sender")
    s.add_argument("--text", help="label to search when the code is not in the backlog")
    s.add_argument("--unit")
    s.add_argument("--limit", type=int, default=5)
    a = msub.add_parser("accept", help="map a local code to LOINC and reprocess its results")
    a.add_argument("sender")
    a.add_argument("code")
    a.add_argument("loinc")
    a.add_argument("--system", help="coding system of the local code (OBX-3.3)")
    a.add_argument("--unit", help="unit override when the lab's unit field is wrong")
    a.add_argument("--routes", help="routes file used to reprocess [PARCOURS_ROUTES]")
    a.add_argument("--no-reprocess", action="store_true")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from engine.store.database import Store

    store = Store(settings.store_url)
    store.migrate()
    try:
        return {"backlog": _backlog, "suggest": _suggest, "accept": _accept}[
            args.mappings_command](args, settings, store)
    finally:
        store.close()


def _backlog(args: argparse.Namespace, settings: Settings, store: Any) -> int:
    from engine.routing.backlog import open_entries

    rows = open_entries(store, args.sender)
    if not rows:
        print("the mapping backlog is empty")
        return 0
    print(f"{'count':>5}  {'sender':<28} {'code':<12} {'system':<6} {'unit':<10} "
          f"{'last seen':<19}  label (example)")
    for r in rows:
        print(f"{r['count']:>5}  {r['sender'][:28]:<28} {r['code'][:12]:<12} "
              f"{r['coding_system'][:6]:<6} {(r['unit'] or '')[:10]:<10} "
              f"{r['last_seen'].strftime('%Y-%m-%d %H:%M:%S'):<19}  {r['text']} "
              f"({r['example_value']}) [{r['reason']}]")
    print(f"{len(rows)} code(s); see `parcours mappings suggest CODE`")
    return 0


def _suggest(args: argparse.Namespace, settings: Settings, store: Any) -> int:
    from engine.routing.backlog import open_entries
    from loinc.catalogue import load_catalogue
    from loinc.suggest import suggest

    catalogue = load_catalogue()
    if args.text and not args.code:
        # A label alone is a search, not a filter on the backlog (issue #16).
        entries = [{"sender": args.sender or "", "code": "", "text": args.text,
                    "unit": args.unit, "coding_system": ""}]
    else:
        entries = open_entries(store, args.sender)
    if args.code:
        entries = [e for e in entries if e["code"] == args.code]
        if not entries:
            if not args.text:
                print(f"{args.code}: not in the backlog; give --text (and --unit) to search",
                      file=sys.stderr)
                return 1
            entries = [{"sender": args.sender or "", "code": args.code, "text": args.text,
                        "unit": args.unit, "coding_system": ""}]
    for e in entries:
        print(" ".join(filter(None, (e["sender"] or "(no sender)", e["code"],
                                     f"“{e['text']}”", e["unit"]))))
        found = suggest(e["text"] or e["code"], catalogue=catalogue, unit=e["unit"] or None,
                        code=e["code"] or None, limit=args.limit)
        if not found:
            print("    no candidate")
        for i, s in enumerate(found, start=1):
            low = "" if s.confident else "  (low score: check before accepting)"
            print(f"    {i}. {s.loinc:<8} {s.score:6.2f}  {s.display}{low}")
        best = found[0].loinc if found and found[0].confident else "LOINC"
        # A command the operator can paste as it is (shell-quoted); without a sender (a
        # search with --text) the sender is a placeholder to fill in, never a literal "?".
        sender = shlex.quote(e["sender"]) if e["sender"] else "SENDER"
        code = shlex.quote(e["code"]) if e["code"] else "CODE"
        print(f"    accept: parcours mappings accept {sender} {code} {best}")
        if not e["sender"]:
            print("    (SENDER: the laboratory's MSH-4.1, as in `parcours mappings backlog`)")
        if not e["code"]:
            print("    (CODE: the laboratory's local code, OBX-3.1)")
    if not entries:
        print("the mapping backlog is empty; give --text (and --unit) to search the catalogue")
    return 0


def _accept(args: argparse.Namespace, settings: Settings, store: Any) -> int:
    from engine.routing.backlog import accept
    from mappings.loader import MappingError

    try:
        path, message_ids = accept(store, settings.mappings_dir, args.sender, args.code,
                                   args.loinc, coding_system=args.system, unit=args.unit)
    except (MappingError, ValueError) as exc:
        raise CommandError(f"refused: {exc}") from None
    print(f"{args.sender} {args.code} → {args.loinc} written to {path}")
    if args.no_reprocess or not message_ids:
        print(f"{len(message_ids)} message(s) carried this code" +
              ("" if not message_ids else "; not reprocessed (--no-reprocess)"))
        return 0
    from pathlib import Path

    from engine.config import ConfigError, load_file
    from engine.routing.router import Router
    from engine.routing.transformers import Registry
    from transformers.lab.transformer import configure

    configure(settings.mappings_dir)
    routes = Path(args.routes or settings.routes_file)
    try:
        config = load_file(routes, env=settings.interpolation_env())
    except ConfigError as exc:
        raise CommandError(f"mapping written, but {routes} has {len(exc.problems)} problem(s) "
                           f"(`parcours routes check {routes}`); not reprocessed") from None
    registry = Registry(config.transformer_paths, base=Path(config.file).resolve().parent)
    router = Router(store, config, registry.resolve, settings.partitions)
    total = 0
    for mid in message_ids:
        n, _ = router.replay(mid)
        total += n
    print(f"reprocessed {len(message_ids)} message(s): {total} new deliveries")
    return 0
