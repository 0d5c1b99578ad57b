"""`parcours` command line: serve, send, routes check."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from engine.cli.errors import USAGE, CommandError, Parser, guarded
from engine.settings import Settings


def _serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="run the engine",
        description=(
            "Run the engine: MLLP and folder channels from routes.yaml, the store, and the "
            "HTTP API. Every option falls back on its environment variable, then on the "
            "embedded default (SQLite store under PARCOURS_HOME, in-process bus)."
        ),
    )
    p.add_argument("--home", help="data folder: database, inbox folders [PARCOURS_HOME, ./var]")
    p.add_argument("--host", help="address to listen on [PARCOURS_HOST, 0.0.0.0]")
    p.add_argument("--mllp-port", type=int,
                   help="port of the default MLLP channel [PARCOURS_MLLP_PORT, 2575]")
    p.add_argument("--http-port", type=int, help="HTTP API port [PARCOURS_HTTP_PORT, 8080]")
    p.add_argument("--store-url",
                   help="SQLAlchemy URL of the store, e.g. postgresql+psycopg://u@h/db "
                        "[PARCOURS_STORE_URL, sqlite:///<home>/parcours.db]")
    p.add_argument("--broker-url",
                   help="bus URL, amqp://guest:guest@127.0.0.1:5672// for RabbitMQ "
                        "[PARCOURS_BROKER_URL, memory://]")
    p.add_argument("--routes", help="routes file [PARCOURS_ROUTES, ./routes.yaml]")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING [PARCOURS_LOG_LEVEL, INFO]")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(_env(args))


def _env(args: argparse.Namespace) -> dict[str, str]:
    """The environment with the command line's options written into it (they win)."""
    import os

    env = dict(os.environ)
    for opt, var in (("home", "PARCOURS_HOME"), ("mllp_port", "PARCOURS_MLLP_PORT"),
                     ("http_port", "PARCOURS_HTTP_PORT"), ("store_url", "PARCOURS_STORE_URL"),
                     ("broker_url", "PARCOURS_BROKER_URL"), ("routes", "PARCOURS_ROUTES"),
                     ("host", "PARCOURS_HOST"), ("log_level", "PARCOURS_LOG_LEVEL")):
        value = getattr(args, opt, None)
        if value is not None:
            env[var] = str(value)
    return env


def _workers(settings: Settings, env: dict[str, str]) -> int:
    """PARCOURS_WORKERS: 1 (routing and delivery in a worker process,
    engine/delivery/worker.py) on the embedded default, 0 (all in this process) in the scaled
    mode, where several engine processes already share the work."""
    embedded = settings.broker_url.startswith("memory") and settings.store_url.startswith(
        "sqlite")
    value = env.get("PARCOURS_WORKERS", "1" if embedded else "0")
    return 1 if value.strip() not in ("", "0") else 0


def cmd_serve(args: argparse.Namespace, *, worker: bool = False) -> int:
    from engine import log_format
    from engine.app import Engine
    from engine.config import ConfigError, load_file

    env = _env(args)
    settings = Settings.from_env(env)
    log_format.configure(settings.log_level)
    settings.home.mkdir(parents=True, exist_ok=True)
    try:
        config = load_file(settings.routes_file, env=settings.interpolation_env())
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise CommandError(f"{settings.routes_file}: {len(exc.problems)} problem(s); the engine "
                           "did not start", code=2) from None
    worker_argv = None
    if not worker and _workers(settings, env):
        worker_argv = [sys.executable, "-c", "from engine.cli.main import main; main()", "work"]
    engine = Engine(settings, config, worker_argv=worker_argv, worker_env=env,
                    is_worker=worker)
    try:
        asyncio.run(engine.run_forever())
    except OSError as exc:
        print(f"parcours: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from engine.cli.send import send_files

    return asyncio.run(send_files(args))


def cmd_routes_check(args: argparse.Namespace) -> int:
    from engine.config import ConfigError, load_file

    settings = _settings(args)
    path = Path(args.file or settings.routes_file)
    try:
        cfg = load_file(path, env=settings.interpolation_env())
    except ConfigError as exc:
        for p in exc.problems:
            print(p)
        print(f"{len(exc.problems)} problem(s) in {path}", file=sys.stderr)
        return 1
    print(f"{path}: OK — {len(cfg.channels)} channel(s), {len(cfg.destinations)} "
          f"destination(s), {len(cfg.routes)} route(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="parcours", description="HL7 v2 / CDA integration engine")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    sub.add_parser("work", help="(started by `parcours serve`) route and deliver: the worker "
                   "process, reading its orders on stdin")

    s = sub.add_parser("send", help="send HL7 files over MLLP and report the ACKs",
                       description="Send the messages of FILEs (one message, several, or "
                                   "FHS/BHS batches) over MLLP, waiting for each ACK. Exits 1 "
                                   "if any message was not acknowledged AA or CA.")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=2575)
    s.add_argument("--tls-ca", help="CA bundle to verify the server (enables TLS)")
    s.add_argument("--tls-cert", help="client certificate (mutual TLS)")
    s.add_argument("--tls-key", help="client key (mutual TLS)")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each ACK")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser("routes", help="check and test routes.yaml")
    rsub = r.add_subparsers(dest="routes_command", required=True)
    rc = rsub.add_parser("check", help="validate a routes file; errors as file:line:column")
    rc.add_argument("file", nargs="?")
    rc.add_argument("--routes", help=argparse.SUPPRESS)
    from engine.cli.routes import add_parsers

    add_parsers(sub, rsub)
    from engine.cli import mappings as cli_mappings

    cli_mappings.add_parsers(sub)
    from engine.cli import messages as cli_messages

    cli_messages.add_parsers(sub)
    from connectors.dmp import cli as dmp_cli

    dmp_cli.add_parsers(sub)
    from engine.timeline import cli as timeline_cli  # users, care-circle, audit (issue #5)

    timeline_cli.add_parsers(sub)
    from engine.referrals import cli as referrals_cli  # support structures, requests (issue #14)

    referrals_cli.add_parsers(sub)
    from engine.cli import import_history as cli_import
    from engine.cli import prune as cli_prune  # retention and history import (issue #16)

    cli_prune.add_parsers(sub)
    cli_import.add_parsers(sub)
    return parser


PORT_OPTIONS = ("port", "http_port", "mllp_port")
FILE_OPTIONS = ("tls_cert", "tls_key", "tls_ca", "vihf_cert")


def _check_args(args: argparse.Namespace) -> None:
    """What every subcommand's options share, refused before anything starts: a port out of
    range would otherwise surface as a bind() traceback, a missing PEM file as a bare
    "No such file or directory" without its name."""
    for opt in PORT_OPTIONS:
        value = getattr(args, opt, None)
        if value is not None and not 0 <= value <= 65535:
            raise CommandError(f"--{opt.replace('_', '-')} {value}: a TCP port is 0 to 65535",
                               code=USAGE)
    for opt in FILE_OPTIONS:
        value = getattr(args, opt, None)
        if value and not Path(value).is_file():
            raise CommandError(f"--{opt.replace('_', '-')} {value}: no such file", code=USAGE)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "work"):
        from engine.allocator import bound_allocator  # long-running processes (docs/fuzzing.md)

        bound_allocator()

    def command() -> int:
        _check_args(args)
        return _dispatch(args)

    raise SystemExit(guarded(command))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        code = cmd_serve(args)
    elif args.command == "work":
        code = cmd_serve(args, worker=True)
    elif args.command == "send":
        code = cmd_send(args)
    elif args.command == "routes" and args.routes_command == "check":
        code = cmd_routes_check(args)
    elif args.command == "dmp-sim":
        from connectors.dmp import cli as dmp_cli

        code = dmp_cli.run(args)
    elif args.command == "mappings":
        from engine.cli import mappings as cli_mappings

        code = cli_mappings.run(args, _settings(args))
    elif args.command == "messages":
        from engine.cli import messages as cli_messages

        code = cli_messages.run(args, _settings(args))
    elif args.command in ("prune", "import"):
        from engine.cli import import_history as cli_import
        from engine.cli import prune as cli_prune

        code = {"prune": cli_prune, "import": cli_import}[args.command].run(args, _settings(args))
    elif args.command in ("users", "care-circle", "audit", "conflicts"):
        from engine.timeline import cli as timeline_cli

        code = timeline_cli.run(args, _settings(args))
    elif args.command == "referrals":
        from engine.referrals import cli as referrals_cli

        code = referrals_cli.run(args, _settings(args))
    elif args.command in ("replay", "deliveries", "retry") or args.command == "routes":
        from engine.cli import routes as cli_routes

        settings = _settings(args)
        handler = {
            "replay": cli_routes.cmd_replay,
            "deliveries": cli_routes.cmd_deliveries,
            "retry": cli_routes.cmd_retry,
            "routes": cli_routes.cmd_routes_test,
        }[args.command]
        code = handler(args, settings)
    else:  # pragma: no cover - argparse enforces the choices
        raise CommandError(f"unknown command {args.command!r}", code=2)
    return code
