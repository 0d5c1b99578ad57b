"""`parcours referrals`: the support structures Parcours serves, their coordinators, and the
requests (issue #14). On the store directly, like `parcours users`; a running engine knows a
new structure within seconds (intake's cache)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.referrals import workflow as wf


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser("referrals", help="support structures (DAC), coordinators, requests")
    rs = r.add_subparsers(dest="referrals_command", required=True)
    a = rs.add_parser("structure-add", help="declare (or rename) a support structure; REF "
                                            "messages addressed to others are answered AE")
    a.add_argument("structure_id", help="FINESS as sent in PRD-7 (type FINESS) of role RT")
    a.add_argument("name")
    rs.add_parser("structures", help="list the support structures")
    m = rs.add_parser("member-add", help="make USER a coordinator of STRUCTURE: they see its "
                                         "worklist and join the care circle on acceptance")
    m.add_argument("structure_id")
    m.add_argument("username")
    ls = rs.add_parser("list", help="requests, oldest and most urgent first (no patient data)")
    ls.add_argument("--status", choices=wf.STATUSES)
    ls.add_argument("--all", action="store_true", help="closed requests too")


def run(args: argparse.Namespace, settings: Any) -> int:
    from engine.referrals.service import Referrals
    from engine.store.database import Store
    from engine.timeline.auth import Principal

    store = Store(settings.store_url)
    store.migrate()
    svc = Referrals(store.engine)
    try:
        cmd = args.referrals_command
        if cmd == "structure-add":
            svc.add_structure(args.structure_id, args.name)
            print(f"support structure {args.structure_id} ({args.name}) declared")
        elif cmd == "structures":
            for s in svc.structures():
                print(f"{s['id']}\t{s['name']}")
        elif cmd == "member-add":
            try:
                svc.add_member(args.structure_id, args.username)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"{args.username} coordinates {args.structure_id}")
        else:
            who = Principal(None, "cli", "admin", None, "cli")
            for r in svc.worklist(who, status=args.status, include_closed=args.all):
                print(f"{r['id']}\t{r['identifier']}\t{r['status']}\t{r['priority'] or ''}\t"
                      f"{r['structure_id'] or ''}\t{r['authored_at'] or ''}")
        return 0
    finally:
        store.close()
