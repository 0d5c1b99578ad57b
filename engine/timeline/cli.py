"""`parcours users`, `parcours care-circle` and `parcours audit` (issue #5).

They work on the store directly (no running engine needed). Tokens are printed once, on
creation, and never stored in clear.
"""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

COMMANDS = ("users", "care-circle", "audit")


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


def run(args: argparse.Namespace, settings: Any) -> int:
    from ..store import Store

    store = Store(settings.store_url)
    store.migrate()
    try:
        if args.command == "users":
            return _users(args, store.engine)
        if args.command == "care-circle":
            return _care(args, store.engine)
        return _audit(args, store.engine)
    finally:
        store.close()


def _users(args: argparse.Namespace, db: Any) -> int:
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from . import auth
    from .models import users

    cmd = args.users_command
    if cmd == "add":
        try:
            _, token = auth.add_user(db, args.username, args.role, args.professional_id)
        except IntegrityError:
            print(f"parcours: user {args.username!r} already exists")
            return 1
        print(token)
        return 0
    if cmd == "token":
        with db.connect() as conn:
            uid = conn.execute(select(users.c.id).where(users.c.username == args.username)
                               ).scalar()
        if uid is None:
            print(f"parcours: no user {args.username!r}")
            return 1
        print(auth.new_token(db, int(uid)))
        return 0
    if cmd == "revoke":
        print(f"{auth.revoke_tokens(db, args.username)} token(s) revoked")
        return 0
    if cmd == "disable":
        return 0 if auth.set_active(db, args.username, False) else 1
    with db.connect() as conn:
        for r in conn.execute(select(users).order_by(users.c.id)).mappings():
            print(f"{r['id']}\t{r['username']}\t{r['role']}\t{r['professional_id'] or '-'}\t"
                  f"{'active' if r['active'] else 'disabled'}")
    return 0


def _care(args: argparse.Namespace, db: Any) -> int:
    from sqlalchemy import select

    from . import care_circle as cc
    from .models import care_circle

    if args.care_command == "grant":
        try:
            gid = cc.grant(db, args.patient, args.user, args.by or getpass.getuser(), args.days)
        except ValueError as exc:
            print(f"parcours: {exc}")
            return 1
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
    from .audit import entries

    for e in entries(db, args.patient, args.limit):
        if args.json:
            print(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v)
                              for k, v in e.items()}, ensure_ascii=False))
        else:
            print(f"{e['at']:%Y-%m-%d %H:%M:%S}\t{e['actor']}\t{e['role'] or '-'}\t"
                  f"patient {e['patient_id'] or '-'}\t{e['action']}\t{e['outcome']}\t"
                  f"{e['remote'] or '-'}\t{e['detail']}")
    return 0
