"""`parcours users`, `parcours care-circle`, `parcours audit` (issue #5) and `parcours
conflicts` (identity vigilance and document provenance, issue #15).

They work on the store directly (no running engine needed). Tokens are printed once, on
creation, and never stored in clear.
"""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from engine.cli.errors import CommandError

COMMANDS = ("users", "care-circle", "audit", "conflicts")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    u = sub.add_parser("users", help="timeline API users and their bearer tokens")
    us = u.add_subparsers(dest="users_command", required=True)
    a = us.add_parser("add", help="create a user and print its first token (shown once)")
    a.add_argument("username")
    a.add_argument("--role", required=True, choices=["admin", "operator", "clinician"])
    a.add_argument("--professional-id", help="RPPS/ADELI as sent in PV1-7/8/9/17 (XCN-1): "
                                             "links a clinician to the ADT care circle")
    t = us.add_parser("token", help="print a new token for an existing user")
    t.add_argument("username")
    r = us.add_parser("revoke", help="revoke every token of a user")
    r.add_argument("username")
    d = us.add_parser("disable", help="disable a user (tokens and OIDC refused)")
    d.add_argument("username")
    us.add_parser("list", help="list users")

    c = sub.add_parser("care-circle", help="explicit access grants to a patient's timeline")
    cs = c.add_subparsers(dest="care_command", required=True)
    g = cs.add_parser("grant", help="let USER read PATIENT's timeline")
    g.add_argument("--patient", type=int, required=True, help="timeline patient id")
    g.add_argument("--user", required=True)
    g.add_argument("--days", type=float, help="expiry in days (default: until revoked)")
    g.add_argument("--by", default=None, help="who grants (default: the OS user)")
    v = cs.add_parser("revoke", help="revoke USER's grants on PATIENT")
    v.add_argument("--patient", type=int, required=True)
    v.add_argument("--user", required=True)
    ls = cs.add_parser("list", help="the care circle of PATIENT")
    ls.add_argument("--patient", type=int, required=True)

    au = sub.add_parser("audit", help="who read which patient's data, when, from where")
    au.add_argument("--patient", type=int, help="only reads of this patient")
    au.add_argument("--limit", type=int, default=200)
    au.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_conflicts(sub)


def _add_conflicts(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("conflicts", help="identity and document conflicts held for an operator")
    cs = c.add_subparsers(dest="conflicts_command")
    ls = cs.add_parser("list", help="conflicts with their evidence (default: open ones)")
    ls.add_argument("--status", choices=["open", "resolved", "all"], default="open")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    r = cs.add_parser("resolve", help="apply a held conflict's events, or dismiss it")
    r.add_argument("id", type=int)
    how = r.add_mutually_exclusive_group(required=True)
    how.add_argument("--apply", action="store_true",
                     help="apply the held events (identity untouched) to --patient, default "
                          "the record the local id names")
    how.add_argument("--dismiss", action="store_true",
                     help="resolved; held events stay kept, applied to nobody")
    r.add_argument("--patient", type=int, help="timeline patient id to apply the events to")
    r.add_argument("--note", help="why (kept with the resolution)")
    r.add_argument("--by", default=None, help="who resolves (default: the OS user)")


def run(args: argparse.Namespace, settings: Any) -> int:
    from engine.store.database import Store

    store = Store(settings.store_url)
    store.migrate()
    try:
        if args.command == "users":
            return _users(args, store.engine)
        if args.command == "care-circle":
            return _care(args, store.engine)
        if args.command == "conflicts":
            return _conflicts(args, store.engine)
        return _audit(args, store.engine)
    finally:
        store.close()


def _users(args: argparse.Namespace, db: Any) -> int:
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from engine.timeline import auth
    from engine.timeline.models import users

    cmd = args.users_command
    if cmd == "add":
        try:
            _, token = auth.add_user(db, args.username, args.role, args.professional_id)
        except IntegrityError:
            raise CommandError(f"user {args.username!r} already exists") from None
        print(token)
        return 0
    if cmd == "token":
        with db.connect() as conn:
            uid = conn.execute(select(users.c.id).where(users.c.username == args.username)
                               ).scalar()
        if uid is None:
            raise CommandError(f"no user {args.username!r}")
        print(auth.new_token(db, int(uid)))
        return 0
    if cmd == "revoke":
        print(f"{auth.revoke_tokens(db, args.username)} token(s) revoked")
        return 0
    if cmd == "disable":
        if not auth.set_active(db, args.username, False):
            raise CommandError(f"no user {args.username!r}")
        print(f"user {args.username!r} disabled")
        return 0
    with db.connect() as conn:
        for r in conn.execute(select(users).order_by(users.c.id)).mappings():
            print(f"{r['id']}\t{r['username']}\t{r['role']}\t{r['professional_id'] or '-'}\t"
                  f"{'active' if r['active'] else 'disabled'}")
    return 0


def _care(args: argparse.Namespace, db: Any) -> int:
    from sqlalchemy import select

    from engine.timeline import care_circle as cc
    from engine.timeline.models import care_circle

    if args.care_command == "grant":
        try:
            gid = cc.grant(db, args.patient, args.user, args.by or getpass.getuser(), args.days)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        print(f"grant {gid}: {args.user} may read patient {args.patient}")
        return 0
    if args.care_command == "revoke":
        print(f"{cc.revoke(db, args.patient, args.user)} grant(s) revoked")
        return 0
    with db.connect() as conn:
        for r in conn.execute(select(care_circle).where(
                care_circle.c.patient_id == args.patient).order_by(care_circle.c.id)).mappings():
            print(f"{r['source']}\t{r['professional_id'] or '-'}\t{r['role'] or '-'}\t"
                  f"last {r['last_at']}\tuntil {r['until'] or '-'}\t"
                  f"{'revoked' if r['revoked_at'] else 'active'}")
    return 0


def _audit(args: argparse.Namespace, db: Any) -> int:
    from engine.timeline.audit import entries

    for e in entries(db, args.patient, args.limit):
        if args.json:
            print(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v)
                              for k, v in e.items()}, ensure_ascii=False))
        else:
            print(f"{e['at']:%Y-%m-%d %H:%M:%S}\t{e['actor']}\t{e['role'] or '-'}\t"
                  f"patient {e['patient_id'] or '-'}\t{e['action']}\t{e['outcome']}\t"
                  f"{e['remote'] or '-'}\t{e['detail']}")
    return 0


def _conflicts(args: argparse.Namespace, db: Any) -> int:
    from engine.timeline.service import Timeline

    timeline = Timeline(db)
    if getattr(args, "conflicts_command", None) == "resolve":
        try:
            out = timeline.resolve_conflict(args.id, args.by or getpass.getuser(),
                                            "apply" if args.apply else "dismiss",
                                            args.patient, args.note)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        print(f"conflict {out['id']}: {out['resolution']}")
        return 0
    status = getattr(args, "status", "open")
    rows = timeline.list_conflicts(None, None, None if status == "all" else status)
    for r in rows:
        if getattr(args, "json", False):
            print(json.dumps(r, ensure_ascii=False, sort_keys=True))
            continue
        ev = r["evidence"]
        held = f"held {','.join(r['held_events'])}" if r["held"] else "not held"
        print(f"#{r['id']}\t{r['status']}\t{r['kind']}\tpatient {r['patient_id'] or '-'}\t"
              f"message {r['message_id']} (vs {r['other_message_id'] or '-'})\t{held}\t"
              f"x{r['occurrences']}")
        if "held_ins" in ev or "arriving_ins" in ev:
            print(f"\tINS held {ev.get('held_ins') or '-'}  arriving "
                  f"{ev.get('arriving_ins') or '-'}")
        for side in ("held", "arriving"):
            d = ev.get(side)
            if d:
                print(f"\t{side}: {d.get('family') or '-'} {d.get('given') or ''} "
                      f"born {d.get('birth_date') or '-'} sex {d.get('sex') or '-'} "
                      f"status {d.get('identity_status') or '-'}")
        if "document_id" in ev:
            print(f"\tdocument {ev['document_id']} source {ev.get('source') or '-'}")
        if r["resolution"]:
            print(f"\tresolved by {r['resolved_by']}: {r['resolution']}")
    if not rows:
        print(f"no conflict ({status})")
    return 0
